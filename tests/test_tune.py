"""`cnnlab tune`: a study's trials are ordinary run folders; worker processes share one storage and run exactly
n_trials; pruning stops hopeless trials through fit's on_epoch; an interrupted or killed study continues; the best
trial's config.toml reproduces its value; bad input is one line before any trial."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from data_fixtures import write_mnist_idx

optuna = pytest.importorskip("optuna", reason="cnnlab tune needs Optuna: pip install 'cnnlab[tune]'")

from cnnlab import tune as tuning  # noqa: E402
from cnnlab.cli import main  # noqa: E402
from cnnlab.engine import fit  # noqa: E402
from cnnlab.hardware import usable_cores  # noqa: E402
from cnnlab.monitor import Monitor  # noqa: E402
from cnnlab.report.records import load_run  # noqa: E402
from cnnlab.runfolder import RunFolder  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
FINISHED = ("COMPLETE", "PRUNED")
# Linear regression on synthetic data: a trial takes well under a second. lr 1e-6 is hopeless against 0.03.
LINEAR = """
[tune]
out = "{out}"
n_trials = {n}
objective = "val_loss"
pruner = "{pruner}"
pruner_startup_trials = 1
random_trials = 10
[base]
model = "linreg"
dataset = "synthetic-linear"
epochs = 3
batch_size = 32
[space]
{space}
"""


def write_space(tmp_path, n=4, space="lr = {log_uniform = [0.001, 0.1]}", pruner="median", name="space.toml"):
    path = tmp_path / name
    path.write_text(LINEAR.format(out=tmp_path / "study", n=n, space=space, pruner=pruner), encoding="utf-8")
    return path


def run_cli(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def trials_of(plan):
    return tuning.load_study(plan, create=False).get_trials(deepcopy=False)


def trial_folders(plan) -> list[str]:
    return sorted(p.name for p in plan.out.glob("trial-*"))


MNIST = """
model = "softmax"
dataset = "mnist"
batch_size = 32
"""
SYNTHETIC = """
model = "linreg"
dataset = "synthetic-linear"
"""


@pytest.mark.parametrize("base,objective,storage", [
    (SYNTHETIC, "val_loss", "shared.journal"),
    # The MNIST softmax, on SQLite: its data cache and SQLAlchemy's start-up take a while on 2 cores.
    pytest.param(MNIST, "val_acc", "sqlite:///{}/shared.db", marks=pytest.mark.slow),
])
def test_two_worker_processes_on_one_storage_run_exactly_n_trials(tmp_path, empty_data_home, capsys, base,
                                                                  objective, storage):
    write_mnist_idx(empty_data_home / "mnist", n_train=100, n_test=10)
    space = tmp_path / "study.toml"
    space.write_text(f"""
[tune]
out = "{tmp_path / 'study'}"
n_trials = 4
objective = "{objective}"
pruner = "none"
[base]
{base}
epochs = 2
cache_dir = "{tmp_path / 'cache'}"
[space]
lr = {{log_uniform = [0.001, 0.1]}}
batch_size = {{choice = [16, 32, 64]}}
""", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    storage = storage.format(tmp_path) if "://" in storage else str(tmp_path / storage)
    done = subprocess.run([sys.executable, "-m", "cnnlab", "tune", str(space), "--workers", "2", "--storage", storage,
                           "--no-report"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("study so far: 4 complete") >= 1
    plan = tuning.plan(space, storage)
    trials = trials_of(plan)
    assert [t.number for t in trials] == list(range(4)) and {t.state.name for t in trials} == {"COMPLETE"}
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4  # distinct settings: one seed per trial
    assert len({t.user_attrs["pid"] for t in trials}) <= 2  # the two workers (one may start late and find none)
    assert trial_folders(plan) == [f"trial-{k:03d}" for k in range(4)]
    for trial in trials:
        run = load_run(trial.user_attrs["run"])  # an ordinary, finished run folder: `cnnlab report` reads it
        assert run.summary["threads"] == max(1, usable_cores() // 2)  # each worker its share of the cores
        assert run.config["lr"] == pytest.approx(trial.params["lr"])
        assert trial.value == pytest.approx(Monitor(objective).best([r[objective] for r in run.metrics]), rel=1e-5)
    if objective == "val_acc":  # `cnnlab eval` on a trial, as on any run (its confusion matrix needs classes)
        code, _, err = run_cli(capsys, "eval", trials[0].user_attrs["run"])
        assert code == 0, err


@pytest.mark.parametrize("pruner", ["median", "successive_halving"])
def test_pruning_fires_on_a_hopeless_part_of_the_space(tmp_path, pruner):
    # Below lr 1e-3 three epochs barely move the weights: most of this range is hopeless.
    plan = tuning.plan(write_space(tmp_path, n=6, space="lr = {log_uniform = [1e-7, 0.03]}", pruner=pruner))
    counts = tuning.run_worker(plan, log=lambda line: None)
    trials = trials_of(plan)
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert sum(counts.values()) == 6 and pruned, counts
    best = min((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert all(t.params["lr"] < best.params["lr"] for t in pruned)
    page = tuning.report(plan).parent / "study.md"  # pruned trials are marked in the study's report
    assert "| pruned |" in page.read_text() and (page.parent / "objective.png").is_file()
    for trial in pruned:
        summary = json.loads((Path(trial.user_attrs["run"]) / "summary.json").read_text())
        assert summary["stop_reason"].startswith(f"pruned after epoch {summary['epochs_run']} by the {pruner}")
        assert summary["epochs_run"] < 3 and summary.get("test_loss") is not None  # still a finished run


@pytest.mark.parametrize("pruner", ["median", "successive_halving"])
def test_no_trial_is_pruned_before_prune_from_epoch(pruner):
    # Trials report their epochs 1, 2, 3 as Optuna's steps: "from epoch 2" must spare every trial's epoch 1.
    import dataclasses

    import optuna

    fields = {f.name: None for f in dataclasses.fields(tuning.Tune)}
    tune = tuning.Tune(**{**fields, "pruner": pruner, "prune_from_epoch": 2, "pruner_startup_trials": 1,
                          "notes": []})
    study = optuna.create_study(direction="maximize", pruner=tuning.make_pruner(tune))
    for value in (0.9, 0.8, 0.85):  # finished trials, far better than the next one at every epoch
        trial = study.ask()
        for epoch in (1, 2, 3):
            trial.report(value, epoch)
            trial.should_prune()  # successive halving records its rungs here; the answer is not used
        study.tell(trial, value)
    hopeless = study.ask()
    hopeless.report(0.1, 1)
    assert not hopeless.should_prune()  # epoch 1: too early, whatever it scored
    hopeless.report(0.1, 2)
    assert hopeless.should_prune()  # epoch 2: the first the study may judge


def test_an_interrupted_and_a_killed_study_continue_to_n_trials_without_duplicate_folders(tmp_path):
    plan = tuning.plan(write_space(tmp_path, n=4))
    with pytest.raises(SystemExit) as stopped:  # Ctrl-C inside trial 1's second epoch
        tuning.run_worker(plan, log=lambda line: None, should_stop=lambda n, epoch, step: n == 1 and epoch == 2)
    assert stopped.value.code == 130
    study = tuning.load_study(plan)
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE", "FAIL"]
    # A process killed with SIGKILL leaves its trial RUNNING: the next start on this machine fails it.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    killed = study.ask()
    killed.set_user_attr("host", socket.gethostname())
    killed.set_user_attr("pid", dead.pid)
    counts = tuning.run_worker(plan, log=lambda line: None)
    trials = trials_of(plan)
    assert counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) == 4 and counts["FAIL"] == 2
    assert [t.state.name for t in trials][:3] == ["COMPLETE", "FAIL", "FAIL"]
    folders = [Path(t.user_attrs["run"]).name for t in trials if "run" in t.user_attrs]
    assert trial_folders(plan) == sorted(folders) and len(set(folders)) == len(folders)  # one folder per trial
    assert all((plan.out / f"trial-{t.number:03d}" / "summary.json").is_file() for t in trials
               if t.state.name in FINISHED)
    assert tuning.run_worker(plan, log=lambda line: None) == counts  # a third start finds nothing to do


def test_the_best_trials_config_reproduces_its_value_and_a_study_repeats(tmp_path):
    plan = tuning.plan(write_space(tmp_path, n=3, pruner="none"))
    tuning.run_worker(plan, log=lambda line: None)
    best = tuning.load_study(plan).best_trial
    config = RunFolder(Path(best.user_attrs["run"])).config()
    config.out = str(tmp_path / "again")
    rows = fit(config).metrics()
    assert Monitor("val_loss").best([float(r["val_loss"]) for r in rows]) == pytest.approx(best.value, rel=1e-5)
    original = RunFolder(Path(best.user_attrs["run"])).metrics()
    assert [r["val_loss"] for r in rows] == [r["val_loss"] for r in original]  # metrics.csv's digits, all equal
    (tmp_path / "second").mkdir()
    again = tuning.plan(write_space(tmp_path / "second", n=3, pruner="none"))
    tuning.run_worker(again, log=lambda line: None)
    assert [t.params for t in trials_of(again)] == [t.params for t in trials_of(plan)]  # seeded TPE


def test_a_searched_epochs_rescales_the_bases_warm_up_as_set_epochs_does(tmp_path):
    path = write_space(tmp_path, space="epochs = {choice = [2, 8]}")
    path.write_text(path.read_text().replace("epochs = 3\n", "epochs = 4\nwarmup_epochs = 2.0\n"))
    plan = tuning.plan(path, overrides={"batch_size": 64})
    assert [plan.trial_config(0, {"epochs": e}).warmup_epochs for e in (2, 8)] == [1.0, 4.0]
    assert plan.trial_config(0, {"epochs": 8}).batch_size == 64


def test_timeout_starts_no_new_trial_once_it_has_passed(tmp_path):
    plan = tuning.plan(write_space(tmp_path, n=4))
    clock = iter([0.0, 0.0, 61.0]).__next__  # the start, before trial 0, before trial 1
    counts = tuning.run_worker(plan, log=lambda line: None, timeout=60, clock=clock)
    assert counts == {"COMPLETE": 1} and trial_folders(plan) == ["trial-000"]


@pytest.mark.parametrize("space,argv,needle", [
    ("foo = {uniform = [0, 1]}", [], "[space] foo: cannot be searched: not a setting"),
    ("seed = {int = [0, 9]}", [], "[space] seed: cannot be searched"),
    ("lr = {log_uniform = [0.5, 0.1]}", [], "the range [0.5, 0.1] is empty"),
    ("weight_decay = {log_uniform = [0.0, 0.1]}", [], "a log range must stay above 0"),
    ("lr = {uniform = 0.1}", [], "uniform needs [low, high]"),
    ("batch_size = {choice = [16, 0]}", [], "[space] batch_size = 0 makes an invalid trial"),
    ("lr = {log_uniform = [0.001, 0.1]}", ["--set", "out=elsewhere"], "out is not a [base] setting here"),
    ("lr = {log_uniform = [0.001, 0.1]}", ["--set", "lr=0.1"], "--set lr: "),
    ("lr = {log_uniform = [0.001, 0.1]}", ["--storage", "sqlite:////nonexistent/folder/study.db"],
     "cannot open the storage sqlite:////nonexistent/folder/study.db"),
    ("lr = {log_uniform = [0.001, 0.1]}", ["--storage", "postgresql://tune@127.0.0.1:1/study"],
     "cannot open the storage postgresql://tune@127.0.0.1:1/study"),
    ("lr = {log_uniform = [0.001, 0.1]}", ["--storage", "/nonexistent/folder/study.journal"],
     "cannot open the storage /nonexistent/folder/study.journal"),
])
def test_bad_input_is_one_line_before_any_trial(tmp_path, capsys, space, argv, needle):
    code, out, err = run_cli(capsys, "tune", write_space(tmp_path, space=space), *argv)
    assert code == 2 and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "study").exists()


def test_the_objective_is_never_a_test_metric(tmp_path, capsys):
    path = write_space(tmp_path)
    path.write_text(path.read_text().replace('"val_loss"', '"test_loss"'))
    code, _, err = run_cli(capsys, "tune", path)
    assert code == 2 and "a study never looks at the test split" in err


def test_dry_run_prints_the_space_and_the_budget_and_creates_nothing(tmp_path, capsys):
    path = write_space(tmp_path, n=2, space="lr = {log_uniform = [0.001, 0.1]}\nbatch_size = {choice = [16, 32]}")
    code, out, _ = run_cli(capsys, "tune", path, "--dry-run")
    assert code == 0 and not (tmp_path / "study").exists()
    assert "    lr: log-uniform in [0.001, 0.1]" in out and "    batch_size: one of 16, 32" in out
    assert "budget: 2 trials, none run yet" in out
    code, out, _ = run_cli(capsys, "tune", path)
    assert code == 0 and "best: trial " in out
    report = tmp_path / "study" / "report"
    assert {"index.html", "study.md", "objective.png", "curves.png", "params.png"} <= {p.name for p in report.iterdir()}
    assert "## Best trial: " in (report / "study.md").read_text()
    code, out, _ = run_cli(capsys, "tune", path, "--dry-run", "--n-trials", "5")
    assert "budget: 5 trials; the study holds 2 finished" in out and "; 3 to run" in out


def test_tune_help_prints_without_importing_optuna():
    # (test_cli checks that --help imports neither torch nor matplotlib; this one checks the optional extra)
    code = ("import sys\nfrom cnnlab.cli import main\ntry:\n    main(['tune', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('optuna', 'cnnlab.tune', 'torch') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "usage: cnnlab tune" in done.stdout and done.stdout.strip().endswith("[]"), done.stdout + done.stderr


@pytest.mark.slow
def test_a_trial_killed_with_sigkill_is_failed_and_the_study_goes_on(tmp_path):
    import signal
    import time

    path = write_space(tmp_path, n=3, pruner="none")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-m", "cnnlab", "tune", str(path), "--set", "epochs=100000"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "study" / "trial-000" / "metrics.csv"
    deadline = time.monotonic() + 120
    while not metrics.is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert metrics.is_file()
    plan = tuning.plan(path)
    counts = tuning.run_worker(plan, log=lambda line: None)
    assert counts == {"FAIL": 1, "COMPLETE": 3}
    assert trial_folders(plan) == ["trial-000", "trial-001", "trial-002", "trial-003"]
    assert not (tmp_path / "study" / "trial-000" / "summary.json").exists()
