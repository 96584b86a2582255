"""Default training recipes applied: what a setting the user left open becomes. The recipes themselves are registered
with the models (`ModelSpec.recipe`, models/registry.py).

Each learning rate was measured (`cnnlab sweep lr-grid`; RESULTS.md, "Default recipes"), not taken from folklore. A
recipe fills only what neither a config file nor a flag set, so the seed's plain methods stay one flag away:
`--schedule constant --weight-decay 0 --label-smoothing 0` trains with a constant lr and no penalty.

The lr is SGD's at batch 128 and scales linearly with the batch size (Goyal et al. 2017) up to batch 1024; larger
batches, and full-batch gradient descent, get the batch-1024 value. The batch is an optimizer step's: --batch-size
times --accumulate. Softmax regression's lr also falls with the input size (Recipe.lr_reference_inputs). AdamW takes
its usual 1e-3 at any batch size (OptimizerSpec.default_lr).
"""

from dataclasses import asdict, replace

from cnnlab.errors import CnnlabError
from cnnlab.models import model_info
from cnnlab.models.registry import Recipe
from cnnlab.optimizers import OPTIMIZERS

REFERENCE_BATCH = 128
LARGEST_SCALED_BATCH = 1024
FIELDS = ("lr", "weight_decay", "schedule", "label_smoothing")  # the TrainConfig settings a recipe may fill


def recipe_of(model: str) -> Recipe:
    """The model's default recipe, registered on its ModelSpec; a model registered without one names the fix."""
    spec = model_info(model)
    if spec.recipe is None:
        flags = ", ".join("--" + name.replace("_", "-") for name in FIELDS)
        raise CnnlabError(f"model {spec.name!r} has no default recipe; give {flags} (or add a recipe to its "
                          "ModelSpec in models/registry.py)")
    return spec.recipe


def recipe_key(model: str) -> str:
    """The recipe's name, as the run log says it: the family's, "vgg_bn" for VGGs with batch norm."""
    return recipe_of(model).name


def batch_scaled_lr(base: float, batch_size: int | str) -> float:
    batch = LARGEST_SCALED_BATCH if batch_size == "all" else min(int(batch_size), LARGEST_SCALED_BATCH)
    return base * batch / REFERENCE_BATCH


def apply_recipe(config, input_features: int | None = None) -> tuple:
    """(a copy of the TrainConfig with the settings left at None filled from the model's recipe, {setting: value}
    filled); `config` itself is left as asked. `input_features`: the size of one input (C·H·W), for the recipes
    whose lr depends on it."""
    open_settings = [name for name in FIELDS if getattr(config, name) is None]
    if not open_settings:
        return config, {}
    recipe = recipe_of(config.model)
    values = asdict(recipe)
    fixed_lr = OPTIMIZERS[config.optimizer].default_lr
    if fixed_lr is not None:
        values["lr"] = fixed_lr
    else:
        # The batch an optimizer step averages: --accumulate K is a K× batch, and gets its lr.
        lr = batch_scaled_lr(recipe.lr, config.step_batch)
        if recipe.lr_reference_inputs and input_features:
            lr *= recipe.lr_reference_inputs / input_features
        values["lr"] = float(f"{lr:.3g}")
    filled = {name: values[name] for name in open_settings}
    return replace(config, **filled), filled


def describe(model: str, filled: dict) -> str:
    """The run log's line: which settings came from the recipe."""
    if not filled:
        return ""
    values = ", ".join(f"{name.replace('_', ' ')} {value}" for name, value in filled.items())
    return f"default recipe for {recipe_key(model)} (every setting you did not give): {values}"
