"""A config file's schedule positions in epochs (warm-up, milestones, Lookahead's start) follow --epochs and
`--set epochs=` when the user shortens or lengthens its run: fit_to_epochs, and the two places that use it."""

import json
import tomllib

import pytest
from data_fixtures import write_cifar10_python, write_shared_datasets

import cnnlab.engine as engine
from cnnlab.cli import build_parser, main
from cnnlab.cli import config_from_args
from cnnlab.config import TrainConfig, fit_to_epochs
from cnnlab.presets import preset_path
from cnnlab.sweep import describe, parse_settings, plan, run_sweep

SPEEDRUN = {"epochs": 10, "warmup_epochs": 2.3, "lookahead_epoch": 4}


def test_a_shorter_run_scales_the_warm_up_and_the_lookahead_start():
    assert fit_to_epochs(SPEEDRUN, {"epochs": 1}) == (
        {"warmup_epochs": 0.23, "lookahead_epoch": 1},
        ["warmup_epochs 2.3 → 0.23 (the config's 10 epochs shortened to 1)",
         "lookahead_epoch 4 → 1 (the config's 10 epochs shortened to 1)"])
    # Flags arrive as text; the warm-up keeps 4 significant digits, not 0.22999999999999998.
    assert fit_to_epochs(SPEEDRUN, {"epochs": "3"})[0] == {"warmup_epochs": 0.69, "lookahead_epoch": 2}


@pytest.mark.parametrize("epochs,start", [(1, 1), (2, 2), (3, 2), (5, 3), (10, 4), (20, 7), (40, 13)])
def test_lookahead_keeps_the_share_of_the_run_before_it(epochs, start):
    """lookahead_epoch is 1-based (build.py starts it after (L - 1) epochs): 3 of 10 epochs before it, so 0.3 of
    the new run, rounded half up."""
    changes, _ = fit_to_epochs(SPEEDRUN, {"epochs": epochs})
    assert changes.get("lookahead_epoch", 4) == start
    assert 1 <= start <= epochs  # Lookahead still starts inside the run


def test_lookahead_is_switched_off_when_no_epoch_is_left_for_it():
    changes, notes = fit_to_epochs({"epochs": 10, "lookahead_epoch": 10}, {"epochs": 1})
    assert changes == {"lookahead_epoch": 0}
    assert notes == ["lookahead_epoch 10 → 0 (off: the config's 10 epochs shortened to 1)"]
    assert fit_to_epochs({"epochs": 10, "lookahead_epoch": 0}, {"epochs": 1}) == ({}, [])  # off stays off


def test_milestones_scale_merge_and_drop_those_past_the_run():
    assert fit_to_epochs({"epochs": 90, "milestones": [30, 60]}, {"epochs": 30}) == (
        {"milestones": [10, 20]}, ["milestones [30, 60] → [10, 20] (the config's 90 epochs shortened to 30)"])
    # 30, 60 → 0.67, 1.33 → 1 (merged); 89 → 1.98 → 2, which is ≥ 2 epochs and would never apply: dropped.
    assert fit_to_epochs({"epochs": 90, "milestones": [30, 60, 89]}, {"epochs": 2})[0] == {"milestones": [1]}
    # A milestone after some training stays after some training (not 0); 1 ≥ 1 epoch leaves none.
    assert fit_to_epochs({"epochs": 10, "milestones": [3, 6]}, {"epochs": 1})[0] == {"milestones": []}
    assert fit_to_epochs({"epochs": 10, "milestones": [0, 5]}, {"epochs": 4})[0] == {"milestones": [0, 2]}


def test_a_longer_run_scales_too_keeping_the_schedules_shape():
    changes, notes = fit_to_epochs({**SPEEDRUN, "milestones": [3, 6]}, {"epochs": 20})
    assert changes == {"warmup_epochs": 4.6, "milestones": [6, 12], "lookahead_epoch": 7}
    assert notes[0] == "warmup_epochs 2.3 → 4.6 (the config's 10 epochs lengthened to 20)"


def test_what_the_user_gives_and_what_the_file_leaves_open_are_never_rewritten():
    given = {"epochs": 1, "warmup_epochs": 2.3, "lookahead_epoch": 4}
    assert fit_to_epochs(SPEEDRUN, given) == ({}, [])  # validate() will say the warm-up is too long
    assert fit_to_epochs(SPEEDRUN, {"epochs": 1, "warmup_epochs": "0.5"})[0] == {"lookahead_epoch": 1}
    # A file without its own epochs wrote its positions for no run length in particular.
    assert fit_to_epochs({"warmup_epochs": 2.0}, {"epochs": 1}) == ({}, [])
    assert fit_to_epochs(SPEEDRUN, {"lr": 0.1}) == ({}, [])
    assert fit_to_epochs(SPEEDRUN, {"epochs": 10}) == ({}, [])
    assert fit_to_epochs(SPEEDRUN, {"epochs": "two"}) == ({}, [])  # the flag's own error comes from validate()


def train_config(*argv, notes=None) -> TrainConfig:
    return config_from_args(build_parser().parse_args(["train", *map(str, argv)]), notes)


def test_train_config_with_fewer_epochs_validates_and_says_what_changed():
    notes = []
    config = train_config("--config", "speedrun-cifar10", "--epochs", "1", notes=notes)
    assert (config.epochs, config.warmup_epochs, config.lookahead_epoch) == (1, 0.23, 1)
    assert notes == ["warmup_epochs 2.3 → 0.23 (the config's 10 epochs shortened to 1)",
                     "lookahead_epoch 4 → 1 (the config's 10 epochs shortened to 1)"]
    # Everything else is the preset's.
    preset = tomllib.loads(preset_path("speedrun-cifar10").read_text(encoding="utf-8"))
    assert config == TrainConfig(**{**preset, "epochs": 1, "warmup_epochs": 0.23, "lookahead_epoch": 1})
    assert train_config("--config", "speedrun-cifar10", "--epochs", "1", "--warmup-epochs", "0.5").warmup_epochs == 0.5


def test_an_inconsistent_value_the_user_typed_is_still_refused_in_one_line(capsys):
    code = main(["train", "--config", "speedrun-cifar10", "--epochs", "1", "--warmup-epochs", "2.3"])
    err = capsys.readouterr().err
    assert code == 2 and err == "cnnlab: error: --warmup-epochs 2.3 is not allowed; use at most --epochs\n"


SWEEP = """
[sweep]
out = "{out}"
data_root = "{root}"
[base]
model = "speednet"
dataset = "cifar10"
data = "cifar10-jpeg.tar.gz"
epochs = 10
warmup_epochs = 2.3
lookahead_epoch = 4
[[variant]]
name = "preset"
[[variant]]
name = "own-warmup"
warmup_epochs = 1.0
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_shared_datasets(tmp_path_factory.mktemp("shared") / "datasets")


def test_sweep_set_epochs_rescales_the_sweep_files_positions_and_the_dry_run_says_so(tmp_path, root, capsys,
                                                                                         monkeypatch):
    path = tmp_path / "s.toml"
    path.write_text(SWEEP.format(out=tmp_path / "out", root=root), encoding="utf-8")
    sweep = plan(path, overrides=parse_settings(["epochs=1"]))
    assert [(c.epochs, c.warmup_epochs, c.lookahead_epoch) for _, c in sweep.runs] == [(1, 0.23, 1), (1, 0.1, 1)]
    assert sweep.epoch_notes["own-warmup-seed0"][0] == ("warmup_epochs 1.0 → 0.1 (the sweep file's 10 epochs "
                                                        "shortened to 1)")
    assert main(["sweep", str(path), "--set", "epochs=1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("    rescaled: ") == 4
    assert "    rescaled: warmup_epochs 2.3 → 0.23 (the sweep file's 10 epochs shortened to 1)\n" in out
    assert describe(plan(path)) == describe(plan(path, overrides={"epochs": 10}))  # same epochs: nothing said
    logged = []  # and each run's log gets its notes, as `cnnlab train`'s does
    monkeypatch.setattr(engine, "fit", lambda config, resume=None, should_stop=None, notes=(): logged.append(notes))
    run_sweep(sweep, report=False, log=lambda line: None)
    assert logged == [sweep.epoch_notes["preset-seed0"], sweep.epoch_notes["own-warmup-seed0"]] and logged[0]


def test_a_variants_own_epochs_rescale_the_base_positions_but_not_its_own(tmp_path, root):
    path = tmp_path / "s.toml"
    text = SWEEP.format(out=tmp_path / "out", root=root) + "epochs = 5\n"  # own-warmup: 5 epochs, warm-up 1
    path.write_text(text, encoding="utf-8")
    sweep = plan(path)
    assert [(c.epochs, c.warmup_epochs, c.lookahead_epoch) for _, c in sweep.runs] == [(10, 2.3, 4), (5, 1.0, 3)]
    assert sweep.epoch_notes["own-warmup-seed0"] == ["lookahead_epoch 4 → 3 ([base]'s 10 epochs shortened to 5)"]


def test_train_a_preset_briefly_from_the_command_line(tmp_path, capsys):
    """The issue's command, on a small CIFAR-10 fixture: it trains, the log says what changed, config.toml keeps it."""
    data, _ = write_cifar10_python(tmp_path / "cifar", per_batch=40)
    out = tmp_path / "run"
    assert main(["train", "--config", "speedrun-cifar10", "--epochs", "1", "--subset", "2000", "--data", str(data),
                 "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for line in ("warmup_epochs 2.3 → 0.23 (the config's 10 epochs shortened to 1)",
                 "lookahead_epoch 4 → 1 (the config's 10 epochs shortened to 1)"):
        assert line + "\n" in printed and line + "\n" in (out / "log.txt").read_text(encoding="utf-8")
    config = tomllib.loads((out / "config.toml").read_text(encoding="utf-8"))
    assert (config["epochs"], config["warmup_epochs"], config["lookahead_epoch"]) == (1, 0.23, 1)
    assert json.loads((out / "summary.json").read_text())["epochs_run"] == 1
