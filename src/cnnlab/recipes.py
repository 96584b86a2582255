"""Default training recipes, one per model family: what a setting the user left open becomes.

Each learning rate was measured (`cnnlab sweep lr-grid`; RESULTS.md, "Default recipes"), not taken from folklore. A
recipe fills only what neither a config file nor a flag set, so the seed's plain methods stay one flag away:
`--schedule constant --weight-decay 0 --label-smoothing 0` trains with a constant lr and no penalty.

The lr is SGD's at batch 128 and scales linearly with the batch size (Goyal et al. 2017) up to batch 1024; larger
batches, and full-batch gradient descent, get the batch-1024 value. The batch is an optimizer step's: --batch-size
times --accumulate. Softmax regression's lr also falls with the input size (Recipe.lr_reference_inputs). AdamW takes
its usual 1e-3 at any batch size.
"""

from dataclasses import asdict, dataclass

from cnnlab.models import model_info


@dataclass(frozen=True)
class Recipe:
    lr: float  # SGD at REFERENCE_BATCH
    weight_decay: float
    schedule: str  # triangular: linear warm-up over 30 % of the run (unless --warmup-epochs), then linear decay
    label_smoothing: float
    # A linear model's largest stable step falls as 1/E‖x‖², which is the input size d for standardised inputs:
    # its lr is for inputs of this size and scales by reference/d (softmax: 0.02 on CIFAR's 3072 features diverged
    # on Tiny ImageNet's 12,288, where 0.005 was best).
    lr_reference_inputs: int | None = None


REFERENCE_BATCH = 128
LARGEST_SCALED_BATCH = 1024
ADAMW_LR = 1e-3

# Keyed by model name, else by family ("vgg_bn" for VGGs with batch norm). Each classifier's lr is the best of seven
# (0.005…0.4) in the lr-grid preset, whose other settings are these: SGD with momentum 0.9, weight decay 5e-4 on
# weights, the triangular schedule, no label smoothing (not measured yet). linreg: the best of 0.01…0.3 on
# synthetic-linear, constant and cosine. speednet: 0.4, the largest the grid tried — it still rose there.
RECIPES: dict[str, Recipe] = {
    "linreg": Recipe(lr=0.03, weight_decay=0.0, schedule="constant", label_smoothing=0.0),
    "linear": Recipe(lr=0.02, weight_decay=5e-4, schedule="triangular", label_smoothing=0.0,
                     lr_reference_inputs=3072),
    "mlp": Recipe(lr=0.02, weight_decay=5e-4, schedule="triangular", label_smoothing=0.0),
    "vgg": Recipe(lr=0.02, weight_decay=5e-4, schedule="triangular", label_smoothing=0.0),
    "vgg_bn": Recipe(lr=0.02, weight_decay=5e-4, schedule="triangular", label_smoothing=0.0),
    "resnet": Recipe(lr=0.02, weight_decay=5e-4, schedule="triangular", label_smoothing=0.0),
    "speednet": Recipe(lr=0.4, weight_decay=5e-4, schedule="triangular", label_smoothing=0.0),
}
FIELDS = ("lr", "weight_decay", "schedule", "label_smoothing")  # the TrainConfig settings a recipe may fill


def recipe_key(model: str) -> str:
    spec = model_info(model)
    if spec.name in RECIPES:
        return spec.name
    return spec.family + ("_bn" if spec.family == "vgg" and spec.name.endswith("_bn") else "")


def batch_scaled_lr(base: float, batch_size: int | str) -> float:
    batch = LARGEST_SCALED_BATCH if batch_size == "all" else min(int(batch_size), LARGEST_SCALED_BATCH)
    return base * batch / REFERENCE_BATCH


def apply_recipe(config, input_features: int | None = None) -> dict:
    """Fill the TrainConfig settings left at None from the model's recipe; return {setting: value} filled.
    `input_features`: the size of one input (C·H·W), for the recipes whose lr depends on it."""
    open_settings = [name for name in FIELDS if getattr(config, name) is None]
    if not open_settings:
        return {}
    recipe = RECIPES[recipe_key(config.model)]
    values = asdict(recipe)
    if config.optimizer == "adamw":
        values["lr"] = ADAMW_LR
    else:
        # The batch an optimizer step averages: --accumulate K is a K× batch, and gets its lr.
        lr = batch_scaled_lr(recipe.lr, config.step_batch)
        if recipe.lr_reference_inputs and input_features:
            lr *= recipe.lr_reference_inputs / input_features
        values["lr"] = float(f"{lr:.3g}")
    filled = {name: values[name] for name in open_settings}
    for name, value in filled.items():
        setattr(config, name, value)
    return filled


def describe(model: str, filled: dict) -> str:
    """The run log's line: which settings came from the recipe."""
    if not filled:
        return ""
    values = ", ".join(f"{name.replace('_', ' ')} {value}" for name, value in filled.items())
    return f"default recipe for {recipe_key(model)} (every setting you did not give): {values}"
