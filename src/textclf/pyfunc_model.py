"""The shipped model's entry point (MLflow models-from-code): MLflow runs this file to make the
model, after putting the model's code/ directory (this package) on sys.path; see serving.py."""

import mlflow

from textclf.serving import TextclfModel

mlflow.models.set_model(TextclfModel())
