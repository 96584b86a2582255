"""Default recipes: every model has one, they fill only what the user left open, and the run says so."""

import argparse
import math
from dataclasses import replace

import pytest

from cnnlab.cli import add_arguments, config_from_args
from cnnlab.config import TrainConfig
from cnnlab.engine import fit
from cnnlab.models import list_models
from cnnlab.optimizers import OPTIMIZERS
from cnnlab import recipes
from cnnlab.models.registry import REGISTRY, Recipe
from cnnlab.recipes import FIELDS, LONG_BUDGET, SHORT_BUDGET, apply_recipe, budget_lr, recipe_key, recipe_of
from cnnlab.runfolder import RunFolder


def args(*argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_arguments(parser)
    return config_from_args(parser.parse_args(list(argv)))


@pytest.mark.parametrize("name", list_models())
def test_every_model_has_a_recipe_that_fills_every_open_setting(name):
    config = TrainConfig(model=name)
    filled_config, filled = apply_recipe(config)
    assert config.lr is None  # what was asked stays as asked
    config = filled_config
    assert set(filled) == set(FIELDS) and all(getattr(config, f) is not None for f in FIELDS)
    config.validate()


def test_the_family_decides_and_batch_norm_counts_for_vgg():
    assert [recipe_key(m) for m in ("vgg11", "A", "vgg16_bn", "resnet50", "softmax", "linreg", "mlp")] == \
        ["vgg", "vgg", "vgg_bn", "resnet", "linear", "linreg", "mlp"]


def test_a_model_registered_without_a_recipe_names_the_flags_to_give(monkeypatch):
    from dataclasses import replace
    from cnnlab.errors import CnnlabError
    from cnnlab.models import REGISTRY
    monkeypatch.setitem(REGISTRY, "resnet18", replace(REGISTRY["resnet18"], recipe=None))
    with pytest.raises(CnnlabError, match="no default recipe; give --lr, --weight-decay, --schedule, "
                                          "--label-smoothing, --nesterov"):
        apply_recipe(TrainConfig(model="resnet18"))
    config = TrainConfig(model="resnet18", lr=0.1, weight_decay=0.0, schedule="constant", label_smoothing=0.0,
                         nesterov=False)
    assert apply_recipe(config) == (config, {})  # everything given: no recipe needed


@pytest.mark.parametrize("batch, factor", [(128, 1), (64, 0.5), (256, 2), (1, 1 / 128), (1024, 8), (4096, 8),
                                           ("all", 8)])
def test_sgd_lr_scales_linearly_with_the_batch_up_to_1024(batch, factor):
    config, _ = apply_recipe(TrainConfig(model="resnet18", batch_size=batch))
    assert config.lr == pytest.approx(recipe_of("resnet18").lr * factor, rel=2e-3)  # 3 significant digits


@pytest.mark.parametrize("features, lr", [(3072, 0.02), (784, 0.0784), (12288, 0.005), (None, 0.02)])
def test_softmax_lr_falls_with_the_input_size(features, lr):
    config, _ = apply_recipe(TrainConfig(model="softmax", lr=None), input_features=features)
    assert config.lr == pytest.approx(lr * recipe_of("softmax").lr / 0.02, rel=2e-3)


def test_adamw_gets_its_own_lr_at_any_batch():
    config, _ = apply_recipe(TrainConfig(model="resnet18", optimizer="adamw", batch_size=512))
    assert config.lr == OPTIMIZERS["adamw"].default_lr == 1e-3


def test_what_the_user_set_is_never_replaced(tmp_path):
    (tmp_path / "c.toml").write_text('model = "resnet18"\nweight_decay = 0.0\n')
    config = args("--config", str(tmp_path / "c.toml"), "--lr", "0.3", "--schedule", "constant")
    config, filled = apply_recipe(config)
    assert set(filled) == {"label_smoothing", "nesterov"}
    assert (config.lr, config.weight_decay, config.schedule) == (0.3, 0.0, "constant")


def test_the_seeds_plain_method_is_one_set_of_flags_away():
    config = args("--model", "vgg11", "--lr", "0.01", "--schedule", "constant", "--weight-decay", "0",
                  "--label-smoothing", "0", "--nesterov", "false")
    assert apply_recipe(config) == (config, {})


def test_the_run_log_and_config_toml_say_what_the_recipe_chose(tmp_path, capsys):
    out = tmp_path / "run"
    fit(TrainConfig(model="linreg", dataset="synthetic-linear", epochs=1, batch_size=64, out=str(out)))
    log = capsys.readouterr().out
    recipe = recipe_of("linreg")
    assert f"default recipe for linreg (every setting you did not give): lr {recipe.lr * 0.5}" in log
    saved = RunFolder(out).config()
    assert (saved.lr, saved.weight_decay, saved.schedule, saved.label_smoothing) == \
        (recipe.lr * 0.5, recipe.weight_decay, recipe.schedule, recipe.label_smoothing)


@pytest.mark.parametrize("images, lr", [(None, 0.02), (1_000, 0.02), (SHORT_BUDGET, 0.02),
                                        (math.isqrt(SHORT_BUDGET * LONG_BUDGET), math.sqrt(0.02 * 0.08)),
                                        (LONG_BUDGET, 0.08), (10 * LONG_BUDGET, 0.08)])
def test_a_long_budget_recipe_moves_its_lr_geometrically_between_the_two_measured_budgets(images, lr):
    recipe = Recipe("test", 0.02, 5e-4, "triangular", 0.0, lr_long=0.08)
    assert budget_lr(recipe, images) == pytest.approx(lr, rel=1e-4)
    assert budget_lr(replace(recipe, lr_long=None), images) == 0.02  # measured at one budget: one lr


def test_the_budget_is_the_runs_epochs_times_its_training_split_and_the_batch_still_scales(monkeypatch):
    monkeypatch.setitem(REGISTRY, "resnet18", replace(REGISTRY["resnet18"], recipe=Recipe(
        "resnet", 0.02, 5e-4, "triangular", 0.0, lr_long=0.08)))
    long, _ = apply_recipe(TrainConfig(model="resnet18", epochs=4), train_images=LONG_BUDGET // 4)
    short, _ = apply_recipe(TrainConfig(model="resnet18", epochs=2), train_images=SHORT_BUDGET // 2)
    big_batch, _ = apply_recipe(TrainConfig(model="resnet18", epochs=4, batch_size=512), train_images=LONG_BUDGET // 4)
    assert (long.lr, short.lr, big_batch.lr) == (0.08, 0.02, 0.32)


def test_the_run_log_names_the_budget_its_lr_is_for(tmp_path, capsys, monkeypatch):
    """A budget-dependent lr reaches a real run (its epochs × its training split), and the log says so."""
    recipe = replace(recipe_of("linreg"), lr=0.01, lr_long=0.04)
    monkeypatch.setitem(REGISTRY, "linreg", replace(REGISTRY["linreg"], recipe=recipe))
    monkeypatch.setattr(recipes, "SHORT_BUDGET", 1_000)  # budgets around this small run's, so it lies between
    monkeypatch.setattr(recipes, "LONG_BUDGET", 4_000)
    out = tmp_path / "run"
    fit(TrainConfig(model="linreg", dataset="synthetic-linear", epochs=2, batch_size=128, out=str(out)))
    log = capsys.readouterr().out
    n_train = int(log.split(": ", 1)[1].split(" train", 1)[0])
    seen = 2 * n_train
    assert f"(the lr for {seen:,} training images seen: 0.01 at batch 128 for 1,000 or fewer, " \
           "0.04 for 4,000 or more, geometric between)" in log
    lr = 0.01 * 4 ** (math.log(seen / 1_000) / math.log(4))
    assert 0.01 < lr < 0.04 and RunFolder(out).config().lr == pytest.approx(lr, rel=2e-3)


def test_the_budget_is_not_named_for_an_optimizer_with_its_own_lr():
    filled = {"lr": 0.001, "weight_decay": 5e-4}
    assert "images seen" in recipes.describe("vgg11", filled, 72_000)
    line = recipes.describe("vgg11", filled, 72_000, optimizer="adamw")  # AdamW's 1e-3, not the budget rule's
    assert "lr 0.001" in line and "images seen" not in line


@pytest.mark.parametrize("model, given, nesterov", [
    ("resnet18", {}, True), ("resnet50", {}, True), ("vgg11", {}, False), ("mlp", {}, False),
    ("resnet18", {"momentum": 0.0}, False),  # plain SGD has no momentum to look ahead with
    ("resnet18", {"optimizer": "adamw"}, False), ("resnet18", {"nesterov": False}, False),
    ("vgg11", {"nesterov": True}, True)])
def test_resnets_recipe_takes_nesterov_momentum_where_the_run_has_momentum(model, given, nesterov):
    config, filled = apply_recipe(TrainConfig(model=model, **given))
    assert config.nesterov is nesterov and ("nesterov" in filled) == ("nesterov" not in given)
    config.validate()


def test_the_run_log_says_whether_the_recipe_chose_nesterov():
    from cnnlab.recipes import describe
    config, filled = apply_recipe(TrainConfig(model="resnet18"))
    assert describe("resnet18", filled).endswith("label smoothing 0.0, nesterov true")
