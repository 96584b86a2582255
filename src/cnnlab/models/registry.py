"""The model registry: every name cnnlab knows, its builder, the options it takes, its default recipe and where
Grad-CAM looks. Adding a model is one `ModelSpec` here, beside the family's others.

The CLI, the reports and the tests all go through `create_model` / `list_models` / `model_info`.
"""

from dataclasses import dataclass, field
from functools import partial
from typing import Callable

from torch import nn

from cnnlab.errors import CnnlabError, check_choice, check_positive_int, check_probability
from cnnlab.models import linear, resnet, speednet, vgg

# A check takes the value asked for and returns it as the builder wants it, or raises CnnlabError naming the fix.
Check = Callable[[object], object]


def _choice(what: str, choices) -> Check:
    def check(value):
        check_choice(what, value, choices)
        return value
    return check


def _batch_norm(value) -> bool:
    if not isinstance(value, bool):
        raise CnnlabError(f"batch_norm must be true or false, got {value!r}")
    return value


def _in_features(value) -> int | None:
    return None if value is None else check_positive_int("in_features", value)


def _hidden_layers(value) -> tuple[int, ...]:
    sizes = (value,) if isinstance(value, int) else tuple(value)
    for size in sizes:
        check_positive_int("hidden layer size", size)
    return sizes


def _group_widths(value):
    if not value:
        return value  # the builder's own widths
    widths = (value,) if isinstance(value, int) else tuple(value)
    if len(widths) != 3 or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths):
        raise CnnlabError(f"speednet takes three positive group widths (e.g. --hidden 64,256,256), got {list(widths)}")
    return widths


# What every builder takes; `cnnlab models` checks its table's arguments with the same rules.
ARGUMENT_CHECKS: dict[str, Check] = {name: partial(check_positive_int, name)
                                     for name in ("num_classes", "in_channels", "image_size")}

_DROPOUT = {"dropout": partial(check_probability, "dropout")}
_FLAT = {"in_features": _in_features}
_MLP = {**_FLAT, "hidden": _hidden_layers, "activation": _choice("activation", sorted(linear.ACTIVATIONS)), **_DROPOUT,
        "batch_norm": _batch_norm}
_VGG = {"head": _choice("head", vgg.HEADS)} | _DROPOUT
_RESNET = {"stem": _choice("stem", resnet.STEMS), "zero_init_residual": bool}
_SPEEDNET = {"hidden": _group_widths}


@dataclass(frozen=True)
class Recipe:
    """A family's default training settings: what a setting the user left open becomes (recipes.py applies it)."""
    name: str  # what the run log calls it: "default recipe for vgg_bn"
    lr: float  # SGD's at recipes.REFERENCE_BATCH
    weight_decay: float
    schedule: str  # triangular: linear warm-up over 30 % of the run (unless --warmup-epochs), then linear decay
    label_smoothing: float
    # A linear model's largest stable step falls as 1/E‖x‖², which is the input size d for standardised inputs:
    # its lr is for inputs of this size and scales by reference/d (softmax: 0.02 on CIFAR's 3072 features diverged
    # on Tiny ImageNet's 12,288, where 0.005 was best).
    lr_reference_inputs: int | None = None
    # The lr at batch 128 for a run that sees recipes.LONG_BUDGET training images (the seed's 4 epochs of CIFAR-10),
    # where `lr` is the one for recipes.SHORT_BUDGET; between the two the lr moves geometrically with the images a
    # run sees, outside them it stays at the nearer one. None: one lr at every budget (not measured at the long one).
    lr_long: float | None = None
    # SGD's Nesterov momentum (when the run has momentum). ResNet's: at the seed's budget it gained 1.2-1.9 test
    # points on each of three seeds (RESULTS.md, "Nesterov momentum for ResNet"); the other families were not measured.
    nesterov: bool = False


# Each classifier's lr is the best of seven (0.005…0.4) in the lr-grid preset (RESULTS.md, "Default recipes"), whose
# other settings are these: SGD with momentum 0.9, weight decay 5e-4 on weights, the triangular schedule, no label
# smoothing (issue 16's ablation, RESULTS.md "Training extras", found 0.1 inside the noise on a short budget and ten
# times the calibration error, so the recipes keep 0). linreg: the best of 0.01…0.3 on synthetic-linear, constant
# and cosine. speednet: 0.4, the largest the grid tried — it still rose there. That grid's budget is short (2 epochs
# of 9,000 images); at the seed's 4 epochs of CIFAR-10 (LONG_BUDGET) a grid of 0.02/0.05/0.1 chose lr_long by
# validation accuracy: VGG 0.05, ResNet 0.1, while VGG with batch norm kept 0.02 (RESULTS.md, "Default recipes").
def _recipe(name: str, lr: float, **changes) -> Recipe:
    return Recipe(**({"name": name, "lr": lr, "weight_decay": 5e-4, "schedule": "triangular", "label_smoothing": 0.0}
                     | changes))


# The module whose output maps are Grad-CAM's A_k, the last convolutional block: deepest, so the most semantic, and
# still spatial (the next layer pools it away).
LastConvBlock = Callable[[nn.Module], nn.Module]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    builder: Callable[..., nn.Module]
    # The options the builder takes beyond ARGUMENT_CHECKS, each with its check (left out of the hash: a dict).
    options: dict[str, Check] = field(hash=False)
    description: str
    takes_images: bool  # needs (C, H, W) images; False: it flattens its input, so feature vectors do too
    channels_last: bool  # on CUDA, move it to channels_last memory: cuDNN's convolutions are faster in NHWC
    tasks: tuple[str, ...] = ("classification",)  # what its output can be trained for
    paper_name: str = ""
    min_image_size: int = 1
    # None: every one of recipes.FIELDS must be given (recipes.apply_recipe says so in one line).
    recipe: Recipe | None = None
    # None: `cnnlab explain` shows the input gradient (saliency) instead of Grad-CAM.
    last_conv_block: LastConvBlock | None = None


_IMAGES = {"takes_images": True, "channels_last": True}
_VECTORS = {"takes_images": False, "channels_last": False}
_SPECS = [
    ModelSpec("linreg", "linear", linear.linreg, _FLAT, "linear regression, d → 1", **_VECTORS,
              tasks=("regression",), recipe=_recipe("linreg", 0.03, weight_decay=0.0, schedule="constant")),
    ModelSpec("softmax", "linear", linear.softmax, _FLAT, "softmax regression, d → classes", **_VECTORS,
              recipe=_recipe("linear", 0.02, lr_reference_inputs=3072)),
    ModelSpec("mlp", "mlp", linear.mlp, _MLP, "multilayer perceptron (default one hidden layer of 256, ReLU)",
              **_VECTORS, tasks=("classification", "regression"), recipe=_recipe("mlp", 0.02)),
]

# name → (paper configuration, LRN); each also registered with `_bn`.
_VGGS = {"vgg11": ("A", False), "vgg11_lrn": ("A", True), "vgg13": ("B", False),
         "vgg16c": ("C", False), "vgg16": ("D", False), "vgg19": ("E", False)}
_VGG_RECIPES = {False: _recipe("vgg", 0.02, lr_long=0.05), True: _recipe("vgg_bn", 0.02)}  # by batch norm


def _vgg_last_conv_block(model):
    return model.features[-2]  # the last conv's ReLU: `features` ends with a max-pool


for _name, (_cfg, _lrn) in _VGGS.items():
    _letter = _cfg + ("-LRN" if _lrn else "")
    for _bn in (False, True):
        _SPECS.append(ModelSpec(
            _name + ("_bn" if _bn else ""), "vgg", partial(vgg.vgg, _cfg, _bn, _lrn), _VGG,
            f"VGG configuration {_letter}" + (" with batch norm" if _bn else ""), **_IMAGES,
            paper_name=_letter if not _bn else "", min_image_size=32,  # five 2×2 max-pools
            recipe=_VGG_RECIPES[_bn], last_conv_block=_vgg_last_conv_block))

_RESNET_RECIPE = _recipe("resnet", 0.02, lr_long=0.1, nesterov=True)


def _resnet_last_conv_block(model):
    return model.layer4


for _depth, (_block, _layers) in resnet.DEPTHS.items():
    _SPECS.append(ModelSpec(
        f"resnet{_depth}", "resnet", partial(resnet.resnet, _depth), _RESNET,
        f"ResNet-{_depth}, {_block.__name__} × {sum(_layers)}", **_IMAGES,
        recipe=_RESNET_RECIPE, last_conv_block=_resnet_last_conv_block))


def _speednet_last_conv_block(model):
    return model.layers[-1]  # the third conv group, before the global max-pool


_SPECS.append(ModelSpec("speednet", "speednet", speednet.speednet, _SPEEDNET,
                        "CIFAR speedrun net: patch-whitening conv + 3 conv groups (64, 256, 256)", **_IMAGES,
                        min_image_size=16, recipe=_recipe("speednet", 0.4),
                        last_conv_block=_speednet_last_conv_block))

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


def check_arguments(**arguments) -> dict:
    """num_classes, in_channels and image_size checked by ARGUMENT_CHECKS; one line naming the first bad one."""
    return {name: ARGUMENT_CHECKS[name](value) for name, value in arguments.items()}


def _checked_options(spec: ModelSpec, options: dict) -> dict:
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        allowed = ", ".join(spec.options) or "none"
        raise CnnlabError(f"model {spec.name!r} takes no option {', '.join(unknown)}; its options are: {allowed}")
    return {name: spec.options[name](value) for name, value in options.items()}


def create_model(name: str, num_classes: int = 10, *, in_channels: int = 3, image_size: int = 32,
                 **options) -> nn.Module:
    """Build a registered model as a CPU module (the caller moves it).

    Every argument is checked here, once, so the builders assume valid input. image_size matters only to the flat
    models (linreg, softmax, mlp), whose input width is in_channels·size².
    """
    spec = model_info(name)
    options = _checked_options(spec, options)
    arguments = check_arguments(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    if arguments["image_size"] < spec.min_image_size:
        raise CnnlabError(f"model {spec.name!r} needs images of at least {spec.min_image_size}×{spec.min_image_size} "
                          f"pixels, got {image_size}; resize the images or pick a resnet, mlp or softmax model")
    return spec.builder(**arguments, **options)
