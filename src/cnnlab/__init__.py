"""cnnlab: train, evaluate and compare the classic image classifiers."""

from cnnlab.errors import CnnlabError
from cnnlab.models import create_model, list_models, model_info

__version__ = "0.1.0"

__all__ = ["CnnlabError", "create_model", "list_models", "model_info", "__version__"]
