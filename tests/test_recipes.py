"""Default recipes: every model has one, they fill only what the user left open, and the run says so."""

import argparse

import pytest

from cnnlab.cli import add_arguments, config_from_args
from cnnlab.config import TrainConfig
from cnnlab.engine import fit
from cnnlab.models import list_models
from cnnlab.recipes import ADAMW_LR, FIELDS, RECIPES, apply_recipe, recipe_key
from cnnlab.runs import RunFolder


def args(*argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_arguments(parser)
    return config_from_args(parser.parse_args(list(argv)))


@pytest.mark.parametrize("name", list_models())
def test_every_model_has_a_recipe_that_fills_every_open_setting(name):
    config = TrainConfig(model=name)
    filled = apply_recipe(config)
    assert set(filled) == set(FIELDS) and all(getattr(config, f) is not None for f in FIELDS)
    config.validate()


def test_the_family_decides_and_batch_norm_counts_for_vgg():
    assert [recipe_key(m) for m in ("vgg11", "A", "vgg16_bn", "resnet50", "softmax", "linreg", "mlp")] == \
        ["vgg", "vgg", "vgg_bn", "resnet", "linear", "linreg", "mlp"]


@pytest.mark.parametrize("batch, factor", [(128, 1), (64, 0.5), (256, 2), (1, 1 / 128), (1024, 8), (4096, 8),
                                           ("all", 8)])
def test_sgd_lr_scales_linearly_with_the_batch_up_to_1024(batch, factor):
    config = TrainConfig(model="resnet18", batch_size=batch)
    apply_recipe(config)
    assert config.lr == pytest.approx(RECIPES["resnet"].lr * factor, rel=2e-3)  # 3 significant digits


@pytest.mark.parametrize("features, lr", [(3072, 0.02), (784, 0.0784), (12288, 0.005), (None, 0.02)])
def test_softmax_lr_falls_with_the_input_size(features, lr):
    config = TrainConfig(model="softmax", lr=None)
    apply_recipe(config, input_features=features)
    assert config.lr == pytest.approx(lr * RECIPES["linear"].lr / 0.02, rel=2e-3)


def test_adamw_gets_its_own_lr_at_any_batch():
    config = TrainConfig(model="resnet18", optimizer="adamw", batch_size=512)
    apply_recipe(config)
    assert config.lr == ADAMW_LR


def test_what_the_user_set_is_never_replaced(tmp_path):
    (tmp_path / "c.toml").write_text('model = "resnet18"\nweight_decay = 0.0\n')
    config = args("--config", str(tmp_path / "c.toml"), "--lr", "0.3", "--schedule", "constant")
    filled = apply_recipe(config)
    assert set(filled) == {"label_smoothing"}
    assert (config.lr, config.weight_decay, config.schedule) == (0.3, 0.0, "constant")


def test_the_seeds_plain_method_is_one_set_of_flags_away():
    config = args("--model", "vgg11", "--lr", "0.01", "--schedule", "constant", "--weight-decay", "0",
                  "--label-smoothing", "0")
    assert apply_recipe(config) == {}


def test_the_run_log_and_config_toml_say_what_the_recipe_chose(tmp_path, capsys):
    out = tmp_path / "run"
    fit(TrainConfig(model="linreg", dataset="synthetic-linear", epochs=1, batch_size=64, out=str(out)))
    log = capsys.readouterr().out
    recipe = RECIPES["linreg"]
    assert f"default recipe for linreg (every setting you did not give): lr {recipe.lr * 0.5}" in log
    saved = RunFolder(out).config()
    assert (saved.lr, saved.weight_decay, saved.schedule, saved.label_smoothing) == \
        (recipe.lr * 0.5, recipe.weight_decay, recipe.schedule, recipe.label_smoothing)
