"""The model zoo: linear and softmax regression, MLP, VGG (A–E, ±BN), ResNet-18…152."""

from cnnlab.models.profile import count_macs, count_params
from cnnlab.models.registry import ALIASES, REGISTRY, ModelSpec, create_model, list_models, model_info

__all__ = ["ALIASES", "REGISTRY", "ModelSpec", "count_macs", "count_params", "create_model", "list_models",
           "model_info"]
