"""The presets shipped in the package: named by their stem wherever a TOML path is taken, listed by `cnnlab presets`,
every one valid, and naming datasets (found in the data home), never files."""

import math
import re
import tomllib
from pathlib import Path

import pytest
from data_fixtures import write_shared_datasets

from cnnlab import presets
from cnnlab.run_data import resolve_data
from cnnlab.build import validate_config
from cnnlab.cli import build_parser, config_from_args, main, preset_listing, preset_summary
from cnnlab.config import TrainConfig
from cnnlab.sweep import plan, read_sweep, run_settings

REPO = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def train_config(*argv) -> TrainConfig:
    return config_from_args(build_parser().parse_args(["train", *map(str, argv)]))


def test_the_presets_live_in_the_package_and_nowhere_else():
    assert presets.FOLDER == REPO / "src" / "cnnlab" / "presets"
    assert {"demo-mnist-mlp", "speedrun-cifar10", "seed-report"} <= set(presets.names())
    assert not (REPO / "configs").exists()  # one home: a second copy would drift


def test_a_training_preset_by_name_equals_its_file_and_flags_still_override_it():
    reference = tomllib.loads((presets.FOLDER / "speedrun-cifar10.toml").read_text(encoding="utf-8"))
    config = train_config("--config", "speedrun-cifar10", "--epochs", "3")
    # The preset's warm-up and Lookahead start scale with its epochs (tests/test_fit_to_epochs.py).
    assert config == TrainConfig(**{**reference, "epochs": 3, "warmup_epochs": 0.69, "lookahead_epoch": 2})
    assert train_config("--config", "speedrun-cifar10.toml") == TrainConfig(**reference)


def test_an_existing_file_wins_over_the_preset_of_its_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("speedrun-cifar10.toml").write_text('model = "softmax"\n', encoding="utf-8")
    assert train_config("--config", "speedrun-cifar10.toml").model == "softmax"  # the user's own file
    assert train_config("--config", "speedrun-cifar10").model == "speednet"  # no file of that name: the preset
    assert train_config("--config", tmp_path / "speedrun-cifar10.toml").model == "softmax"


@pytest.mark.parametrize("argv,needle", [
    (["train", "--config", "seed-report"], "seed-report is a sweep preset, not a train preset; run it with "
                                            "`cnnlab sweep seed-report`"),
    (["sweep", "speedrun-cifar10"], "speedrun-cifar10 is a train preset, not a sweep preset; run it with "
                                    "`cnnlab train --config speedrun-cifar10`"),
    (["train", "--config", "speedrun"], "speedrun is neither a file nor a train preset; pass a TOML file's path "
                                        "or one of: demo-mnist-mlp, speedrun-cifar10"),
    (["sweep", "configs/seed-report.toml"], "sweep file configs/seed-report.toml does not exist (the preset "
                                            "seed-report has its name: `cnnlab sweep seed-report`); pass an "),
    (["train", "--config", "mine.toml"], "config file mine.toml does not exist; pass an existing file or one of the "
                                         "train presets: demo-mnist-mlp, speedrun-cifar10"),
    (["presets", "nope"], "there is no preset 'nope'; the presets are: ablation-recipes, ablation-regularization, "),
    (["presets", "../presets/seed-report"], "there is no preset '../presets/seed-report'"),
])
def test_a_wrong_name_is_one_line_naming_what_to_run(capsys, argv, needle):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == "" and err.count("\n") == 1 and needle in err, err


def test_every_shipped_preset_is_valid_with_the_runs_its_tables_promise():
    for name in presets.names():
        path = presets.preset_path(name)
        spec = tomllib.loads(path.read_text(encoding="utf-8"))
        kind, what = preset_summary(path)
        if kind == "train":
            config = validate_config(TrainConfig.from_toml(path))
            assert what == f"{config.model} on {config.dataset}, {config.epochs} epochs"
            continue
        if kind == "tune":  # its space and [base] checked as `cnnlab tune` checks them, short of the data
            from cnnlab.tune import parse_param, read_space

            spec = read_space(path)
            space = [parse_param(k, v, name) for k, v in spec["space"].items()]
            for param in space:
                for value in param.corners():
                    TrainConfig.from_dict({**spec["base"], param.name: value}, name).validate()
            assert what.startswith(f"{spec['tune']['n_trials']} trials of {spec['base']['model']} on ")
            continue
        # The count from the tables themselves: variants × grid points × seeds.
        count = (len(spec.get("variant", [{}])) * math.prod(len(v) for v in spec.get("grid", {}).values())
                 * len(spec["sweep"].get("seeds", [0])))
        runs = run_settings(path, read_sweep(path))
        assert len(runs) == count and what.startswith(f"{count} runs of "), (name, what)
        for run, settings, _ in runs:
            validate_config(TrainConfig.from_dict(settings, f"{name} {run}"))


def test_the_listing_names_each_preset_its_kind_and_what_it_trains(tmp_path, capsys):
    (tmp_path / "small.toml").write_text('model = "softmax"\ndataset = "mnist"\nepochs = 3\n', encoding="utf-8")
    (tmp_path / "grid.toml").write_text(
        '[sweep]\nseeds = [0, 1, 2]\n[base]\ndataset = "cifar10"\n[[variant]]\nname = "a"\nmodel = "vgg11"\n'
        '[[variant]]\nname = "b"\n[grid]\nlr = [0.1, 0.2]\n', encoding="utf-8")
    lines = preset_listing(tmp_path)
    assert lines[:3] == ["NAME   KIND   WHAT",
                         "grid   sweep  12 runs of vgg11, mlp on cifar10",  # variant b keeps the default model
                         "small  train  softmax on mnist, 3 epochs"]
    code, out, _ = run_cli(capsys, "presets")
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:len(presets.names()) + 1]}
    assert code == 0 and rows == {n: preset_summary(presets.preset_path(n))[0] for n in presets.names()}
    assert rows["speedrun-cifar10"] == "train" and rows["seed-report"] == "sweep"


def test_presets_name_prints_the_file_to_copy_and_edit(tmp_path, capsys, monkeypatch):
    code, out, _ = run_cli(capsys, "presets", "seed-report")
    assert code == 0 and out == (presets.FOLDER / "seed-report.toml").read_text(encoding="utf-8")
    root = write_shared_datasets(tmp_path / "shared" / "datasets")
    monkeypatch.chdir(tmp_path)
    Path("mine.toml").write_text(out.replace("epochs = 4", "epochs = 1"), encoding="utf-8")
    mine, preset = plan("mine.toml", data_root=root), plan("seed-report", data_root=root)
    assert [(n, c.data, c.epochs) for n, c in mine.runs] == [(n, c.data, 1) for n, c in preset.runs]


def test_presets_name_datasets_not_files_and_nothing_in_the_package_names_the_shared_folder(tmp_path, monkeypatch):
    for name in presets.names():
        text = presets.preset_path(name).read_text(encoding="utf-8")
        assert not re.search(r"^\s*(data|data_root)\s*=", text, re.M), name
    sources = [p for p in presets.FOLDER.parent.rglob("*") if p.suffix in (".py", ".toml")]
    assert [p for p in sources if "../shared" in p.read_text(encoding="utf-8")] == []
    home = write_shared_datasets(tmp_path / "home")
    monkeypatch.setenv("CNNLAB_DATA", str(home))
    monkeypatch.chdir(tmp_path)  # any folder: the data home is not relative to it
    config = resolve_data(train_config("--config", "demo-mnist-mlp"))
    assert config.data == str(home / "mnist-png.tar.gz") and config.dataset == "mnist"
    sweep = plan("seed-report")
    assert sweep.out == Path("runs/seed-report") and sweep.data_root is None
    assert {c.data for _, c in sweep.runs} == {str(home / "cifar10-jpeg.tar.gz"), str(home / "tiny-imagenet-200.zip")}
