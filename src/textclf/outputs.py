"""What the train stage hands to evaluate, by file name (train writes them, evaluate reads them):

<paths.models>/model.ckpt            the best checkpoint (CHECKPOINT_NAME)
<paths.models>/config.yaml           the resolved config that trained it, secrets masked
<paths.models>/vocab.txt             the vocabulary it was trained with
<paths.models>/mlflow_run.json       RUN_FILE: its MLflow run, its sha256, the store (textclf.tracking)
<paths.reports>/training_curves.csv  CURVES_FILE: losses and validation metrics per epoch
"""

CHECKPOINT_NAME = "model"  # -> model.ckpt
RUN_FILE = "mlflow_run.json"
CURVES_FILE = "training_curves.csv"
