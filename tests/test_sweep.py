"""`cnnlab sweep`: planning (every run checked first), --dry-run, --data-root, --set, data candidates, progress,
and a sweep interrupted for real and started again."""

import csv
import json
from pathlib import Path

import pytest
from data_fixtures import tar_folder, write_image_folder, write_tinyimagenet

import cnnlab.engine as engine
from cnnlab import CnnlabError
from cnnlab.cli import main
from cnnlab.sweep import SweepProgress, parse_settings, plan, run_sweep

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
TIMING = {"epoch_seconds", "images_per_second", "elapsed_seconds"}

SWEEP = """
[sweep]
out = "{out}"
seeds = [0, 1]
[base]
model = "linreg"
dataset = "synthetic-linear"
batch_size = 50
epochs = 3
momentum = 0.0
[[variant]]
name = "slow"
lr = 0.01
[[variant]]
name = "fast"
lr = 0.1
[grid]
weight_decay = [0.0, 0.001]
"""

# Two runs on image folders: the first one's data is fine, the second one's is set by each test.
TWO_RUNS = """
[sweep]
out = "{out}"
[base]
model = "mlp"
hidden = [8]
epochs = 1
batch_size = 8
val_split = 0.0
device = "cpu"
cache_dir = "{out}-cache"
[[variant]]
name = "a"
data = "cifar"
[[variant]]
name = "b"
"""


def write(tmp_path, text=SWEEP, extra="", out="out"):
    path = tmp_path / f"{out}.toml"
    path.write_text(text.format(out=tmp_path / out) + extra)
    return path


def files_under(folder: Path) -> set:
    return {p.relative_to(folder) for p in folder.rglob("*")}


def run_cli(capsys, *argv):
    try:
        code = main(["sweep", *map(str, argv)])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code, out, err, needle):
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("cnnlab: error: ") and needle in err, err


@pytest.fixture
def data_root(tmp_path):
    """tmp/root/cifar: a CIFAR-10-like image folder (10 classes × 2 images per split)."""
    write_image_folder(tmp_path / "root" / "cifar")
    return tmp_path / "root"


def test_plan_is_variants_times_grid_times_seeds(tmp_path):
    sweep = plan(write(tmp_path))
    names = [n for n, _ in sweep.runs]
    assert len(sweep.runs) == 2 * 2 * 2 and sweep.out == tmp_path / "out"
    assert names[:2] == ["slow-weight_decay=0.0-seed0", "slow-weight_decay=0.0-seed1"]
    config = dict(sweep.runs)["fast-weight_decay=0.001-seed1"]
    assert (config.lr, config.weight_decay, config.seed, config.model) == (0.1, 0.001, 1, "linreg")


@pytest.mark.parametrize("text,needle", [
    ("[sweep]\nseeds = []\n", "non-empty list of integers"),
    ("[grid]\nlr = 0.1\n", "must be a non-empty list"),
    ("[base]\nlrr = 0.1\n", "unknown setting 'lrr'"),
    ("[base]\nmomentum = 2.0\n", "--momentum"),
    ("[sweeps]\n", "unknown table [sweeps]"),
    ("[sweep]\ndata-root = 'x'\n", "unknown [sweep] key 'data-root'"),
    ("[base]\nseed = 3\n", "[base] sets seed, which the sweep sets for each run from [sweep] seeds"),
    ("[base]\ndata = []\n", "non-empty list of paths"),
    ("[[variant]]\nlr = 0.1\n[[variant]]\nlr = 0.2\n", "share a folder name"),
])
def test_bad_sweep_files(tmp_path, text, needle):
    with pytest.raises(CnnlabError) as info:
        plan(write(tmp_path, text))
    assert needle in str(info.value)


@pytest.mark.parametrize("second,needle", [
    ('data = "missing.tar.gz"', "does not exist"),
    ('data = "cifar"\ndataset = "mnist"', "holds cifar10, not mnist"),
    ('data = ["gone.zip", "also-gone"]', "none of the data candidates exists"),
])
def test_bad_data_in_the_second_run_fails_before_the_first_trains(tmp_path, data_root, monkeypatch, capsys,
                                                                   second, needle):
    trained = []
    monkeypatch.setattr(engine, "fit", lambda config, *a, **k: trained.append(config))
    path = write(tmp_path, TWO_RUNS, second + "\n")
    before = files_under(tmp_path)
    code, out, err = run_cli(capsys, path, "--data-root", data_root)
    assert_one_error_line(code, out, err, needle)
    assert "out.toml (b-seed0): " in err
    assert trained == [] and files_under(tmp_path) == before


def test_dry_run_prints_every_run_and_creates_nothing(tmp_path, capsys):
    path = write(tmp_path)
    before = files_under(tmp_path)
    code, out, err = run_cli(capsys, path, "--dry-run")
    assert code == 0 and err == ""
    assert files_under(tmp_path) == before
    for name, config in plan(path).runs:
        assert f"] {name} (to train)" in out and f"out:      {config.out}" in out
    settings = [line for line in out.splitlines() if "settings:" in line]
    assert len(settings) == 8 and settings[-1].split("settings: ")[1] == "lr=0.1 weight_decay=0.001 seed=1"
    assert out.count("data:     none (synthetic-linear is generated)") == 8


def test_data_root_from_the_flag_the_file_or_the_current_folder(tmp_path, data_root, monkeypatch):
    path = write(tmp_path, TWO_RUNS, 'data = "cifar"\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CnnlabError, match=r"out.toml \(a-seed0\): --data .*cifar does not exist"):
        plan(path)  # no root given: relative to the current folder, which has no cifar/
    for sweep in (plan(path, data_root=data_root), plan(path, data_root="root"),
                  plan(write(tmp_path, TWO_RUNS.replace("[base]", 'data_root = "root"\n[base]'), 'data = "cifar"\n'))):
        assert [c.data for _, c in sweep.runs] == [str(data_root / "cifar")] * 2
        assert {c.dataset for _, c in sweep.runs} == {"cifar10"}  # detected from the class folders
    with pytest.raises(CnnlabError, match="data root elsewhere is not a folder; pass --data-root DIR"):
        plan(path, data_root="elsewhere")


def test_set_replaces_a_base_setting_for_every_run(tmp_path, capsys):
    assert parse_settings(["epochs=1", "batch-size=all", "device=cpu", "milestones=[1, 2]"]) == {
        "epochs": 1, "batch_size": "all", "device": "cpu", "milestones": [1, 2]}
    sweep = plan(write(tmp_path), overrides=parse_settings(["epochs=1", "device=cpu", "momentum=0.5"]))
    assert {(c.epochs, c.device, c.momentum) for _, c in sweep.runs} == {(1, "cpu", 0.5)}
    one_run = write(tmp_path, SWEEP.replace("seeds = [0, 1]", "seeds = [0]").split("[[variant]]")[0])
    code, out, _ = run_cli(capsys, one_run, "--set", "epochs=1", "--set", "lr=0.05", "--no-report")
    summary = json.loads((tmp_path / "out" / "seed0" / "summary.json").read_text())
    config = (tmp_path / "out" / "seed0" / "config.toml").read_text()
    assert code == 0 and summary["epochs_run"] == 1 and "lr = 0.05\n" in config
    assert "[1/1] seed0" in out and "sweep finished: 1 runs (1 trained" in out


@pytest.mark.parametrize("argv,needle", [
    (["--set", "lrr=1"], "--set lrr=1: unknown setting 'lrr'"),
    (["--set", "lr"], "--set 'lr' is not KEY=VALUE"),
    (["--set", "=1"], "is not KEY=VALUE"),
    (["--set", "epochs=two"], "--set epochs=two: epochs = 'two' is not a valid integer"),
    (["--set", "momentum=2"], "(slow-weight_decay=0.0-seed0): --momentum 2.0 is not allowed"),
    (["--set", "weight_decay=0.1"], "[grid] sets weight_decay itself"),
    (["--set", "lr=0.5"], "[[variant]] 'slow' sets lr itself"),
    (["--set", "seed=3"], "--set sets seed, which the sweep sets for each run"),
    (["--set", "out=x"], "--set sets out"),
    (["--set", 'data=["a", "b"]', "--set", "dataset=cifar10"], "none of the data candidates exists"),
    (["--dry-run", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_every_command_line_error_is_one_line(tmp_path, capsys, argv, needle):
    before = files_under(tmp_path)
    path = write(tmp_path)
    code, out, err = run_cli(capsys, path, *argv)
    assert_one_error_line(code, out, err, needle)
    assert files_under(tmp_path) == before | {Path("out.toml")}


@pytest.mark.parametrize("text,needle", [(None, "sweep file"), ("[base\n", "is not valid TOML"),
                                         ("[sweep]\ndata_root = 3\n", "data_root must be a folder path")])
def test_bad_sweep_files_on_the_command_line_are_one_line(tmp_path, capsys, text, needle):
    path = tmp_path / "sweep.toml"
    if text is not None:
        path.write_text(text)
    code, out, err = run_cli(capsys, path, "--dry-run")
    assert_one_error_line(code, out, err, needle)


def test_a_candidate_list_takes_the_first_that_exists(tmp_path, data_root, capsys):
    write_image_folder(data_root / "second")
    path = write(tmp_path, TWO_RUNS, 'data = ["first.zip", "second", "cifar"]\n')
    sweep = plan(path, data_root=data_root)
    assert dict(sweep.runs)["b-seed0"].data == str(data_root / "second")
    assert sweep.data_notes["b-seed0"] == "candidate 2 of 3; not found: first.zip"
    code, out, _ = run_cli(capsys, path, "--data-root", data_root, "--dry-run")
    assert code == 0 and f"data:     {data_root / 'second'} (candidate 2 of 3; not found: first.zip)" in out
    write_image_folder(data_root / "first.zip")  # a folder named like an archive: existing is what counts
    assert dict(plan(path, data_root=data_root).runs)["b-seed0"].data == str(data_root / "first.zip")


def test_seed_report_takes_the_full_tiny_imagenet_when_the_data_root_has_it(tmp_path):
    tar_folder(write_image_folder(tmp_path / "cifar")[0], tmp_path / "cifar10-jpeg.tar.gz")
    write_tinyimagenet(tmp_path)
    sweep = plan("seed-report", data_root=tmp_path)
    data = {name: (c.dataset, c.data) for name, c in sweep.runs}
    assert data["vgg11-tinyimagenet-seed0"] == ("tinyimagenet", str(tmp_path / "tiny-imagenet-200.zip"))
    assert data["resnet18-cifar10-seed0"] == ("cifar10", str(tmp_path / "cifar10-jpeg.tar.gz"))


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs the shared datasets at ../shared/datasets")
def test_seed_report_runs_train100_on_the_shared_data(monkeypatch, capsys):
    monkeypatch.setenv("CNNLAB_DATA", str(SHARED))  # what the Makefile does where the shared folder exists
    code, out, _ = run_cli(capsys, "seed-report", "--dry-run")
    assert code == 0
    train100 = str(SHARED.resolve() / "tiny-imagenet-200-train100.tar.gz")
    assert out.count(f"data:     {train100} (tinyimagenet from $CNNLAB_DATA, a subset: train100: ") == 2
    assert out.count("results are train100 results, not Tiny ImageNet results") == 2
    assert out.count(f"{SHARED.resolve() / 'cifar10-jpeg.tar.gz'} (cifar10 from $CNNLAB_DATA, a re-encoded copy") == 2
    sweep = plan("seed-report")
    assert [(c.model, c.dataset, c.epochs) for _, c in sweep.runs] == [
        ("vgg11", "cifar10", 4), ("resnet18", "cifar10", 4), ("vgg11", "tinyimagenet", 4),
        ("resnet18", "tinyimagenet", 4)]
    assert [Path(c.data).name for _, c in sweep.runs][2:] == ["tiny-imagenet-200-train100.tar.gz"] * 2


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs the shared datasets at ../shared/datasets")
@pytest.mark.parametrize("name,count", [("ablation-regularization", 30), ("optimizers", 8), ("lr-grid", 42),
                                        ("defaults-cifar10", 4), ("precision-cpu", 6)])
def test_the_other_presets_plan_and_validate(name, count, monkeypatch, tmp_path):
    monkeypatch.setenv("CNNLAB_DATA", str(SHARED))
    monkeypatch.chdir(tmp_path)  # from any folder: presets name datasets, not paths
    sweep = plan(name)
    assert len(sweep.runs) == count and all(config.out.startswith(str(sweep.out)) for _, config in sweep.runs)
    assert all(Path(c.data).parent == SHARED.resolve() for _, c in sweep.runs if c.dataset != "synthetic-linear")


def test_progress_elapsed_and_estimate_across_runs(tmp_path, monkeypatch):
    now = [0.0]

    def fake_fit(config, resume=None, should_stop=None, notes=()):  # each run takes one minute of the fake clock
        now[0] += 60
        Path(config.out).mkdir(parents=True)
        (Path(config.out) / "summary.json").write_text("{}")

    monkeypatch.setattr(engine, "fit", fake_fit)
    path = write(tmp_path, SWEEP.replace("seeds = [0, 1]", "seeds = [0, 1, 2, 3]").split("[[variant]]")[0])
    (tmp_path / "out" / "seed1").mkdir(parents=True)
    (tmp_path / "out" / "seed1" / "summary.json").write_text("{}")
    lines = []
    run_sweep(path, report=False, log=lines.append, clock=lambda: now[0])
    assert lines == ["[1/4] seed0 — 0:00:00 elapsed, estimate after the first run",
                     "[2/4] seed1: finished earlier, skipped",
                     "[3/4] seed2 — 0:01:00 elapsed, about 0:02:00 left",
                     "[4/4] seed3 — 0:02:00 elapsed, about 0:01:00 left",
                     "sweep finished: 4 runs (3 trained, 0 resumed, 1 finished earlier) in 0:03:00"]


def test_progress_estimate_ignores_resumed_runs():
    progress = SweepProgress(pending=3, clock=lambda: 7265.0)
    progress.finished("resume", 10.0)
    assert progress.status().endswith("estimate after the first run")
    progress.finished("new", 100.0)
    assert progress.status() == "0:00:00 elapsed, about 0:01:40 left"


def metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def test_a_sweep_interrupted_inside_its_second_run_resumes_it_exactly(tmp_path):
    text = SWEEP.replace("seeds = [0, 1]", "seeds = [0]").replace("[grid]\nweight_decay = [0.0, 0.001]\n", "")
    path = write(tmp_path, text)
    first, second = tmp_path / "out" / "slow-seed0", tmp_path / "out" / "fast-seed0"
    lines = []
    with pytest.raises(SystemExit) as stopped:  # as Ctrl-C would, at step 3 of the second run's second epoch
        run_sweep(path, report=False, log=lines.append,
                  should_stop=lambda name, epoch, step: name == "fast-seed0" and (epoch, step) == (2, 3))
    assert stopped.value.code == 130 and "sweep stopped in run 2/2" in lines[-1]
    assert (first / "summary.json").is_file() and (second / "last.pt").is_file()
    assert not (second / "summary.json").exists() and len(metrics(second)) == 1
    done_before = (first / "summary.json").read_bytes()

    lines.clear()
    run_sweep(path, report=False, log=lines.append)
    assert lines[0] == "[1/2] slow-seed0: finished earlier, skipped"
    assert lines[1].startswith("[2/2] fast-seed0 (resuming) — ")
    assert "resuming" in (second / "log.txt").read_text() and "inside epoch 2 at step 3" in (
        second / "log.txt").read_text()
    assert (first / "summary.json").read_bytes() == done_before
    assert json.loads((second / "summary.json").read_text())["epochs_run"] == 3

    whole = write(tmp_path, text, out="whole")
    run_sweep(whole, report=False, log=lambda _: None)
    assert metrics(second) == metrics(tmp_path / "whole" / "fast-seed0") and len(metrics(second)) == 3


def test_a_run_killed_before_its_first_checkpoint_starts_over(tmp_path):
    text = SWEEP.replace("seeds = [0, 1]", "seeds = [0]").split("[[variant]]")[0]
    run = tmp_path / "out" / "seed0"
    run.mkdir(parents=True)
    (run / "config.toml").write_text("half written")
    run_sweep(write(tmp_path, text), report=False, log=lambda _: None)
    assert json.loads((run / "summary.json").read_text())["epochs_run"] == 3 and len(metrics(run)) == 3
