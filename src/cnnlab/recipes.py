"""Default training recipes applied: what a setting the user left open becomes. The recipes themselves are registered
with the models (`ModelSpec.recipe`, models/registry.py).

Each learning rate was measured (`cnnlab sweep lr-grid`; RESULTS.md, "Default recipes"), not taken from folklore. A
recipe fills only what neither a config file nor a flag set, so the seed's plain methods stay one flag away:
`--schedule constant --weight-decay 0 --label-smoothing 0 --nesterov false` trains with a constant lr, no penalty
and the plain momentum v = βv + g (ResNet's recipe takes Nesterov's where the run has momentum).

The lr is SGD's at batch 128 and scales linearly with the batch size (Goyal et al. 2017) up to batch 1024; larger
batches, and full-batch gradient descent, get the batch-1024 value. The batch is an optimizer step's: --batch-size
times --accumulate. Softmax regression's lr also falls with the input size (Recipe.lr_reference_inputs). AdamW takes
its usual 1e-3 at any batch size (OptimizerSpec.default_lr). Where a family was measured at two budgets and a longer
run wanted a larger step (Recipe.lr_long), the lr also grows with the images a run trains on (`budget_lr`).
"""

import math
from dataclasses import asdict, replace

from cnnlab.errors import CnnlabError
from cnnlab.models import model_info
from cnnlab.models.registry import Recipe
from cnnlab.optimizers import OPTIMIZERS

REFERENCE_BATCH = 128
# The two budgets the recipes' learning rates were measured at, in training images seen (epochs × training split):
# the lr-grid preset's 2 epochs of 9,000 images, and the seed's 4 epochs of CIFAR-10's 45,000 (RESULTS.md).
SHORT_BUDGET, LONG_BUDGET = 18_000, 180_000
LARGEST_SCALED_BATCH = 1024
FIELDS = ("lr", "weight_decay", "schedule", "label_smoothing", "nesterov")  # the TrainConfig settings a recipe fills


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


def budget_lr(recipe: Recipe, images_seen: int | None) -> float:
    """The recipe's lr at batch 128 for a run that trains on `images_seen` images in all (None: the short budget's).

    Longer runs take larger steps: between SHORT_BUDGET and LONG_BUDGET the lr goes geometrically from `lr` to
    `lr_long` with the images seen; below and above it stays at the measured end."""
    if recipe.lr_long is None or not images_seen:
        return recipe.lr
    position = math.log(images_seen / SHORT_BUDGET) / math.log(LONG_BUDGET / SHORT_BUDGET)
    return recipe.lr * (recipe.lr_long / recipe.lr) ** min(max(position, 0.0), 1.0)


def apply_recipe(config, input_features: int | None = None, train_images: int | None = None) -> tuple:
    """(a copy of the TrainConfig with the settings left at None filled from the model's recipe, {setting: value}
    filled); `config` itself is left as asked. `input_features`: the size of one input (C·H·W), for the recipes
    whose lr depends on it; `train_images`: the training split's size, for those whose lr grows with the budget
    (epochs × train_images)."""
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
        images_seen = config.epochs * train_images if train_images else None
        lr = batch_scaled_lr(budget_lr(recipe, images_seen), config.step_batch)
        if recipe.lr_reference_inputs and input_features:
            lr *= recipe.lr_reference_inputs / input_features
        values["lr"] = float(f"{lr:.3g}")
    # Nesterov's look-ahead is a form of momentum: without SGD's momentum there is none to look ahead with.
    values["nesterov"] = recipe.nesterov and config.optimizer == "sgd" and config.momentum > 0
    filled = {name: values[name] for name in open_settings}
    return replace(config, **filled), filled


def describe(model: str, filled: dict, images_seen: int | None = None, optimizer: str = "sgd") -> str:
    """The run log's line: which settings came from the recipe (and, for a budget-dependent lr, the budget: not
    for an optimizer whose lr is its own, such as AdamW's)."""
    if not filled:
        return ""
    values = ", ".join(f"{name.replace('_', ' ')} {str(value).lower() if isinstance(value, bool) else value}"
                       for name, value in filled.items())
    line = f"default recipe for {recipe_key(model)} (every setting you did not give): {values}"
    recipe = recipe_of(model)
    budget_rule = OPTIMIZERS[optimizer].default_lr is None
    if "lr" in filled and recipe.lr_long is not None and images_seen and budget_rule:
        line += (f" (the lr for {images_seen:,} training images seen: {recipe.lr} at batch 128 for "
                 f"{SHORT_BUDGET:,} or fewer, {recipe.lr_long} for {LONG_BUDGET:,} or more, geometric between)")
    return line
