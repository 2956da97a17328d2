"""MLflow "model from code" of a trained CellViT (see :mod:`stx_platform.mlflow_model`): MLflow
copies this file into every logged model and runs it to get the model; the weights come from the
model's ``checkpoint`` artifact, loaded with ``torch.load(weights_only=True)``."""

import mlflow

from stx_platform.mlflow_model import NucleiModel

mlflow.models.set_model(NucleiModel())
