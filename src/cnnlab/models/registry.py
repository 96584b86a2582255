"""The model registry: every name cnnlab knows, its builder, and the options it takes.

The CLI, the reports and the tests all go through `create_model` / `list_models`.
"""

from dataclasses import dataclass
from functools import partial
from typing import Callable

from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models import linear, resnet, speednet, vgg


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    builder: Callable[..., nn.Module]
    options: tuple[str, ...]
    description: str
    paper_name: str = ""
    min_image_size: int = 1


_FLAT = ("in_features",)
_SPECS = [
    ModelSpec("linreg", "linear", linear.linreg, _FLAT, "linear regression, d → 1"),
    ModelSpec("softmax", "linear", linear.softmax, _FLAT, "softmax regression, d → classes"),
    ModelSpec("mlp", "mlp", linear.mlp, _FLAT + ("hidden", "activation", "dropout", "batch_norm"),
              "multilayer perceptron (default one hidden layer of 256, ReLU)"),
]

# name → (paper configuration, LRN); each also registered with `_bn`.
_VGGS = {"vgg11": ("A", False), "vgg11_lrn": ("A", True), "vgg13": ("B", False),
         "vgg16c": ("C", False), "vgg16": ("D", False), "vgg19": ("E", False)}
for _name, (_cfg, _lrn) in _VGGS.items():
    _letter = _cfg + ("-LRN" if _lrn else "")
    for _bn in (False, True):
        _SPECS.append(ModelSpec(
            _name + ("_bn" if _bn else ""), "vgg", partial(vgg.vgg, _cfg, _bn, _lrn), ("head", "dropout"),
            f"VGG configuration {_letter}" + (" with batch norm" if _bn else ""), paper_name=_letter if not _bn else "",
            min_image_size=32))  # five 2×2 max-pools

for _depth, (_block, _layers) in resnet.DEPTHS.items():
    _SPECS.append(ModelSpec(
        f"resnet{_depth}", "resnet", partial(resnet.resnet, _depth), ("stem", "zero_init_residual"),
        f"ResNet-{_depth}, {_block.__name__} × {sum(_layers)}"))

_SPECS.append(ModelSpec("speednet", "speednet", speednet.speednet, ("hidden",),
                        "CIFAR speedrun net: patch-whitening conv + 3 conv groups (64, 256, 256)", min_image_size=16))

REGISTRY: dict[str, ModelSpec] = {s.name: s for s in _SPECS}
ALIASES: dict[str, str] = {s.paper_name: s.name for s in _SPECS if s.paper_name}


def list_models(family: str | None = None) -> list[str]:
    """Registered model names (no aliases), in registry order; optionally one family."""
    return [s.name for s in _SPECS if family is None or s.family == family]


def model_info(name: str) -> ModelSpec:
    """The registry entry for a name or paper alias (`vgg11`, `A`, `A-LRN`…); unknown names list the valid ones."""
    name = str(name)
    key = ALIASES.get(name) or ALIASES.get(name.upper()) or name.lower()
    if key not in REGISTRY:
        valid = ", ".join(list_models() + list(ALIASES))
        raise CnnlabError(f"unknown model {name!r}; choose one of: {valid}")
    return REGISTRY[key]


def create_model(name: str, num_classes: int = 10, *, in_channels: int = 3, image_size: int = 32,
                 **options) -> nn.Module:
    """Build a registered model as a CPU module (the caller moves it).

    image_size matters only to the flat models (linreg, softmax, mlp), whose input width is in_channels·size².
    """
    spec = model_info(name)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        allowed = ", ".join(spec.options) or "none"
        raise CnnlabError(f"model {spec.name!r} takes no option {', '.join(unknown)}; its options are: {allowed}")
    if isinstance(image_size, int) and image_size < spec.min_image_size:
        raise CnnlabError(f"model {spec.name!r} needs images of at least {spec.min_image_size}×{spec.min_image_size} "
                          f"pixels, got {image_size}; resize the images or pick a resnet, mlp or softmax model")
    return spec.builder(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **options)
