"""The code MLflow runs to load a dnafm pyfunc model ("models from code", ``trainer.mlflow_model``): it names
the model object, so nothing is unpickled."""

import mlflow

from trainer.mlflow_model import DnafmPyfunc

mlflow.models.set_model(DnafmPyfunc())
