"""The shipped ensemble's entry point (MLflow models-from-code): MLflow runs this file to make the
model, after putting the model's code/ directory (this package) on sys.path; see ensemble.py."""

import mlflow

from textclf.ensemble import EnsembleModel

mlflow.models.set_model(EnsembleModel())
