"""`cnnlab tune SPACE.toml`: a hyperparameter search on Optuna (the optional extra `cnnlab[tune]`).

    [tune]
    out = "runs/tune-mlp"          # trials go to OUT/trial-NNN/, the study file and report beside them
    n_trials = 20                  # the study's total: a second start continues up to it
    objective = "val_acc"          # or "val_loss"; never a test metric
    seed = 0                       # TPE's seed: trial k samples with seed + k, so a study repeats
    pruner = "median"              # or "successive_halving", or "none"
    prune_from_epoch = 1           # the first epoch at which a trial may be pruned
    pruner_startup_trials = 5      # median: finished trials before it prunes anything
    random_trials = 10             # TPE: trials sampled at random before it models the results
    # study = "tune-mlp"           # the study's name in the storage (default: the file's stem)
    [base]                         # any TrainConfig fields, as in a sweep file
    model = "mlp"
    dataset = "mnist"
    epochs = 5
    [space]                        # TrainConfig fields, each with one distribution
    lr = {log_uniform = [0.005, 0.5]}
    weight_decay = {uniform = [0.0, 0.001]}
    label_smoothing = {uniform = [0.0, 0.2], step = 0.05}
    batch_size = {choice = [64, 128, 256]}
    warmup_epochs = {int = [0, 2]}         # also {log_int = [8, 512]}; int and uniform take an optional step

Every trial is an ordinary run folder. The loop reports each epoch's validation metric through `fit`'s `on_epoch`
callback; a pruned trial's summary.json says so in stop_reason. Several `cnnlab tune` processes on one storage
(the default study file, or --storage) share one study: a trial is claimed before it starts, so together they run
exactly n_trials trials (pruned ones count, failed ones do not).
"""

import math
import os
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from cnnlab.config import TrainConfig, fit_to_epochs, read_toml
from cnnlab.engine import fit
from cnnlab.errors import CnnlabError
from cnnlab.filelock import try_lock, unlock
from cnnlab.hardware import usable_cores
from cnnlab.monitor import Monitor
from cnnlab.presets import find as find_preset
from cnnlab.report.study import write_study_report
from cnnlab.run_data import resolve_data

TUNE_KEYS = {"out": str, "study": str, "n_trials": int, "objective": str, "seed": int, "pruner": str,
             "prune_from_epoch": int, "pruner_startup_trials": int, "random_trials": int}
OBJECTIVES = ("val_acc", "val_loss")
PRUNERS = ("median", "successive_halving", "none")
KINDS = ("uniform", "log_uniform", "int", "log_int", "choice")
# The tuner sets these for each trial; searching them would not mean anything.
NOT_SEARCHED = {"out": "each trial's folder is OUT/trial-NNN ([tune] out)",
                "seed": "the seed is fixed in [base], so trials differ only in what is searched"}
STUDY_FILE = "study.journal"
TRIAL_FOLDER = "trial-{:03d}"
MAX_FAILURES_IN_A_ROW = 3
HEARTBEAT_SECONDS = 60  # RDB storages: a trial silent for 3 beats is failed by the next process that looks


def _optuna():
    """Optuna, imported only by the commands that need it: it is an optional extra."""
    try:
        import optuna
    except ImportError:
        raise CnnlabError("cnnlab tune needs Optuna: pip install 'cnnlab[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # cnnlab says what happens, once
    return optuna


# -- the search space -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """One searched setting: a TrainConfig field and its distribution."""
    name: str
    kind: str
    values: tuple  # (low, high), or the choices
    step: float | int | None = None

    def suggest(self, trial):
        low, high = (self.values + (None, None))[:2]
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.values))
        if self.kind in ("int", "log_int"):
            return trial.suggest_int(self.name, low, high, step=self.step or 1, log=self.kind == "log_int")
        return trial.suggest_float(self.name, low, high, step=self.step, log=self.kind == "log_uniform")

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.name}: one of {', '.join(map(str, self.values))}"
        scale = "log-uniform" if self.kind.startswith("log") else "uniform"
        kind = "integer " if "int" in self.kind else ""
        step = f", step {self.step}" if self.step else ""
        return f"{self.name}: {kind}{scale} in [{self.values[0]}, {self.values[1]}]{step}"

    def corners(self) -> list:
        """The values a trial can take at the edges (every choice): each must make a valid config."""
        return list(self.values)


def parse_param(name: str, spec, origin: str) -> Param:
    """A [space] entry, checked: a known field, one distribution, a non-empty range, a log range above 0."""
    where = f"{origin}: [space] {name}"
    known = {f.name for f in fields(TrainConfig)}
    if name in NOT_SEARCHED or name not in known:
        why = NOT_SEARCHED.get(name) or "not a setting; [space] takes TrainConfig fields (cnnlab train --help)"
        raise CnnlabError(f"{where}: cannot be searched: {why}")
    if not isinstance(spec, dict) or len(set(spec) & set(KINDS)) != 1 or set(spec) - set(KINDS) - {"step"}:
        raise CnnlabError(f"{where} must be one distribution, e.g. {{log_uniform = [0.005, 0.5]}}; "
                          f"the kinds are {', '.join(KINDS)} (int and uniform also take step)")
    kind = next(k for k in spec if k in KINDS)
    values, step = spec[kind], spec.get("step")
    if kind == "choice":
        if not isinstance(values, list) or not values or len(set(map(repr, values))) != len(values):
            raise CnnlabError(f"{where}: choice needs a non-empty list of distinct values")
        if step is not None:
            raise CnnlabError(f"{where}: choice takes no step")
        return Param(name, kind, tuple(values))
    integer = kind in ("int", "log_int")
    number = (lambda v: isinstance(v, int) and not isinstance(v, bool)) if integer else (
        lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
    if not isinstance(values, list) or len(values) != 2 or not all(map(number, values)):
        raise CnnlabError(f"{where}: {kind} needs [low, high], two {'integers' if integer else 'finite numbers'}")
    low, high = values
    if not low < high:
        raise CnnlabError(f"{where}: the range [{low}, {high}] is empty; low must be below high")
    if kind.startswith("log") and low <= 0:
        raise CnnlabError(f"{where}: a log range must stay above 0, got [{low}, {high}]; start it at a small "
                          "positive value (e.g. 1e-5), or use uniform")
    if step is not None:
        if kind.startswith("log"):
            raise CnnlabError(f"{where}: {kind} takes no step (a log scale has no even steps)")
        if not number(step) or step <= 0 or step > high - low:
            raise CnnlabError(f"{where}: step must be a positive {'integer' if integer else 'number'} no larger "
                              f"than the range ({high - low})")
    return Param(name, kind, (low, high) if integer else (float(low), float(high)), step)


@dataclass
class Tune:
    """A planned study: where, what it searches, how trials are judged and pruned."""
    file: Path
    out: Path
    study_name: str
    n_trials: int
    objective: str
    seed: int
    pruner: str
    prune_from_epoch: int
    pruner_startup_trials: int
    random_trials: int
    base: dict
    space: list[Param]
    storage: str  # an RDB URL, or the path of a journal file
    notes: list[str] = field(default_factory=list)  # base settings rescaled to --set epochs

    @property
    def goal(self) -> str:
        return "minimised" if Monitor(self.objective).lower_is_better else "maximised"

    @property
    def direction(self) -> str:
        return "minimize" if Monitor(self.objective).lower_is_better else "maximize"

    def trial_config(self, number: int, params: dict) -> TrainConfig:
        """Trial `number`'s settings: [base] (with --set) under the sampled values, into OUT/trial-NNN. A searched
        epochs rescales [base]'s positions in epochs (warm-up, milestones, Lookahead), as --set epochs does."""
        rescaled, _ = fit_to_epochs(self.base, params, "[base]'s")
        config = TrainConfig.from_dict({**self.base, **params, **rescaled}, f"{self.file} (trial {number})")
        config.out = str(self.out / TRIAL_FOLDER.format(number))
        return config.validate()


def read_space(path: Path) -> dict:
    """A tune file's tables, refusing tables and [tune] keys it does not have."""
    spec = read_toml(path, "tune file")
    unknown = sorted(set(spec) - {"tune", "base", "space"})
    if unknown:
        raise CnnlabError(f"{path}: unknown table [{unknown[0]}]; a tune file has [tune], [base] and [space]")
    for key, value in spec.get("tune", {}).items():
        if key not in TUNE_KEYS:
            raise CnnlabError(f"{path}: unknown [tune] key {key!r}; it takes {', '.join(TUNE_KEYS)}")
        if not isinstance(value, TUNE_KEYS[key]) or isinstance(value, bool):
            raise CnnlabError(f"{path}: [tune] {key} must be a{'n integer' if TUNE_KEYS[key] is int else ' string'}"
                              f", got {value!r}")
    if not spec.get("space"):
        raise CnnlabError(f"{path}: [space] is missing or empty; add e.g. lr = {{log_uniform = [0.005, 0.5]}}")
    return spec


def plan(path, storage: str | None = None, overrides: dict | None = None, n_trials: int | None = None) -> Tune:
    """A tune file read and checked, every bad input one line, before a study is opened or a trial starts:
    the space, [tune]'s settings, a config at every edge of the space, and the data."""
    path = find_preset(path, "tune")
    spec = read_space(Path(path))
    settings = spec.get("tune", {})
    overrides = dict(overrides or {})
    space = [parse_param(name, value, str(path)) for name, value in spec["space"].items()]
    for key in overrides:
        if key in spec["space"]:
            raise CnnlabError(f"--set {key}: {path} searches {key} in [space]; --set changes [base] settings only")
    if "out" in spec.get("base", {}) or "out" in overrides:
        raise CnnlabError(f"{path}: out is not a [base] setting here: {NOT_SEARCHED['out']}")
    base, notes = fit_to_epochs(spec.get("base", {}), overrides, "the tune file's")
    base = {**spec.get("base", {}), **overrides, **base}
    out = Path(settings.get("out", f"runs/{Path(path).stem}"))
    tune = Tune(Path(path), out, settings.get("study", Path(path).stem), settings.get("n_trials", 20),
                settings.get("objective", "val_acc"), settings.get("seed", 0), settings.get("pruner", "median"),
                settings.get("prune_from_epoch", 1), settings.get("pruner_startup_trials", 5),
                settings.get("random_trials", 10), base, space,
                storage or str(out / STUDY_FILE), notes)
    if n_trials is not None:
        tune.n_trials = n_trials
    _check_settings(tune)
    _check_configs(tune)
    return tune


def _check_settings(tune: Tune) -> None:
    where = f"{tune.file}: [tune]"
    if tune.n_trials < 1:
        raise CnnlabError(f"{where} n_trials must be at least 1, got {tune.n_trials}")
    if tune.objective not in OBJECTIVES:
        raise CnnlabError(f"{where} objective {tune.objective!r}: choose val_acc (maximised) or val_loss "
                          "(minimised); a study never looks at the test split")
    if tune.pruner not in PRUNERS:
        raise CnnlabError(f"{where} pruner {tune.pruner!r}: choose one of {', '.join(PRUNERS)}")
    for key in ("prune_from_epoch", "random_trials"):
        if getattr(tune, key) < 1:
            raise CnnlabError(f"{where} {key} must be at least 1")
    if tune.pruner_startup_trials < 0 or tune.seed < 0:
        raise CnnlabError(f"{where} pruner_startup_trials and seed must be ≥ 0")


def _check_configs(tune: Tune) -> None:
    """Every edge of the space makes a valid config, the objective exists for the data, and the data is there."""
    first = {p.name: p.values[0] for p in tune.space}
    config = tune.trial_config(0, first)
    for param in tune.space:
        for value in param.corners():
            try:
                tune.trial_config(0, {**first, param.name: value})
            except CnnlabError as e:
                raise CnnlabError(f"{tune.file}: [space] {param.name} = {value!r} makes an invalid trial: "
                                  f"{str(e).split(': ', 1)[-1]}") from None
    if config.val_split == 0:
        raise CnnlabError(f"{tune.file}: the objective {tune.objective} needs a validation split; set val_split "
                          "above 0 in [base] (trials are never judged on the test split)")
    if tune.objective == "val_acc" and config.dataset == "synthetic-linear":
        raise CnnlabError(f"{tune.file}: synthetic-linear is a regression, it has no val_acc; use "
                          "objective = \"val_loss\"")
    resolve_data(config, say=lambda line: None)


def describe(tune: Tune, done: dict | None) -> list[str]:
    """The dry run: the space, the objective and pruner, the budget and what the storage already holds."""
    lines = [f"{tune.file}: study {tune.study_name!r}, {tune.n_trials} trials into {tune.out}/trial-NNN",
             f"objective: {tune.objective} ({tune.goal} on the validation split); TPE sampler, seed "
             f"{tune.seed}, the first {tune.random_trials} trials at random",
             f"pruner: {tune.pruner}" + ("" if tune.pruner == "none" else f", from epoch {tune.prune_from_epoch}")
             + (f", after {tune.pruner_startup_trials} finished trials" if tune.pruner == "median" else ""),
             f"storage: {tune.storage}", "space:", *(f"    {p.describe()}" for p in tune.space),
             "base: " + " ".join(f"{k}={v}" for k, v in tune.base.items()),
             *(f"rescaled: {line}" for line in tune.notes)]
    if done is None:
        lines.append(f"budget: {tune.n_trials} trials, none run yet (the storage holds no study)")
    else:
        finished = done.get("COMPLETE", 0) + done.get("PRUNED", 0)
        lines.append(f"budget: {tune.n_trials} trials; the study holds {finished} finished "
                     f"({done.get('PRUNED', 0)} pruned), {done.get('RUNNING', 0)} running, "
                     f"{done.get('FAIL', 0)} failed; {max(0, tune.n_trials - finished - done.get('RUNNING', 0))} "
                     "to run")
    return lines + ["dry run: nothing trained, nothing created"]


# -- the storage --------------------------------------------------------------------------------------------------
def is_url(storage: str) -> bool:
    return "://" in storage


def open_storage(storage: str, create: bool = True):
    """Optuna's storage for `storage`: an RDB URL (sqlite:///, postgresql://, mysql://…), with a heartbeat so a
    killed trial is failed by the next process that looks, or else a journal file (Optuna's JournalStorage),
    locked for processes on one machine or a shared file system. None when it does not exist and `create` is off.
    Unreachable, or not a storage: one line."""
    optuna = _optuna()
    if is_url(storage):
        if not create and storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///"):]).is_file():
            return None
        try:
            with warnings.catch_warnings():  # the heartbeat is "experimental" in Optuna 4 and 5
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(storage, heartbeat_interval=HEARTBEAT_SECONDS,
                                                  grace_period=3 * HEARTBEAT_SECONDS)
        except Exception as e:  # sqlalchemy and its drivers raise their own types
            why = ("its database's Python driver is not installed (e.g. pip install psycopg2-binary for "
                   "postgresql://, PyMySQL for mysql+pymysql://)" if "DB access module" in str(e) else _first_line(e))
            raise CnnlabError(f"cannot open the storage {storage}: {why}") from None
    path = Path(storage).expanduser()
    if not create and not path.is_file():
        return None
    if not path.parent.is_dir():
        raise CnnlabError(f"cannot open the storage {storage}: {path.parent} is not a folder")
    try:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(path)))
    except Exception as e:
        raise CnnlabError(f"cannot open the storage {storage}: {_first_line(e)}") from None


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def lock_path(storage: str) -> Path | None:
    """A file beside a local storage whose lock makes claiming a trial atomic among this machine's processes."""
    if storage.startswith("sqlite:///"):
        return Path(storage[len("sqlite:///"):] + ".claim")
    return None if is_url(storage) else Path(storage).expanduser().with_suffix(".claim")


def load_study(tune: Tune, create: bool = True):
    """The study in its storage (created on first use); the direction must match the file's objective."""
    optuna = _optuna()
    if create and tune.storage == str(tune.out / STUDY_FILE):
        tune.out.mkdir(parents=True, exist_ok=True)  # the default study file lives in the output folder
    storage = open_storage(tune.storage, create)
    if storage is None:
        return None
    if create:
        study = optuna.create_study(storage=storage, study_name=tune.study_name, direction=tune.direction,
                                    load_if_exists=True)
    else:
        try:
            study = optuna.load_study(study_name=tune.study_name, storage=storage)
        except KeyError:
            return None
    if study.direction.name.lower() != tune.direction:
        raise CnnlabError(f"the study {tune.study_name!r} in {tune.storage} goes the other way "
                          f"({study.direction.name.lower()}); {tune.file}'s objective {tune.objective} is {tune.goal}"
                          " — name another study ([tune] study) or another out")
    study.set_user_attr("objective", tune.objective)
    study.pruner = make_pruner(tune)
    study.sampler = make_sampler(tune, 0)
    return study


def make_sampler(tune: Tune, number: int):
    """TPE seeded for trial `number`: processes sharing a study then draw different settings, and one process
    repeats a study exactly. constant_liar keeps concurrent trials from sampling the same spot."""
    return _optuna().samplers.TPESampler(seed=tune.seed + number, constant_liar=True,
                                         n_startup_trials=tune.random_trials)


def make_pruner(tune: Tune):
    optuna = _optuna()
    if tune.pruner == "median":
        # Trials report epoch e as step e, and the earliest step Optuna prunes at is n_warmup_steps.
        return optuna.pruners.MedianPruner(n_startup_trials=tune.pruner_startup_trials,
                                           n_warmup_steps=tune.prune_from_epoch)
    if tune.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=tune.prune_from_epoch)
    return optuna.pruners.NopPruner()


def trial_counts(study) -> dict:
    """How many trials are in each state, by state name."""
    counts = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


# -- the trials ----------------------------------------------------------------------------------------------------
class Claim:
    """Counting the trials and claiming the next one, as one step among this machine's processes (a file lock
    beside a local storage); on a server's storage without the lock, a trial claimed past the budget notices it
    (`surplus`) and is failed without running."""

    def __init__(self, path: Path | None):
        self.path, self.handle = path, None

    def acquire(self):
        if self.path is None:
            return
        self.handle = open(self.path, "a")
        while not try_lock(self.handle):
            time.sleep(0.05)

    def release(self):
        if self.handle is not None:
            unlock(self.handle)
            self.handle.close()
            self.handle = None


class Interrupted(KeyboardInterrupt):
    """A trial stopped by Ctrl-C or SIGTERM: Optuna marks it failed, then this leaves the study with exit 130."""


class Pruning:
    """The loop's per-epoch callback: reports the objective to the trial and, when the pruner says so, returns the
    reason that ends the run (fit's `on_epoch`)."""

    def __init__(self, trial, tune: Tune):
        self.trial, self.tune, self.values, self.reason = trial, tune, [], None

    def __call__(self, epoch: int, row: dict) -> str | None:
        value = row.get(self.tune.objective)
        if value is None or math.isnan(value):
            return None
        self.values.append(value)
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            self.reason = (f"pruned after epoch {epoch} by the {self.tune.pruner} pruner: "
                           f"{self.tune.objective} {value:.4g} trails the study's other trials at this epoch")
        return self.reason


def _dead_here(trial) -> bool:
    """A running trial started on this machine by a process that is gone (killed): it will never finish."""
    attrs = trial.user_attrs
    if attrs.get("host") != socket.gethostname() or not isinstance(attrs.get("pid"), int):
        return False
    try:
        os.kill(attrs["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def fail_dead_trials(study, log=print) -> None:
    """Mark the running trials of killed processes failed, so the study goes on without them (a storage with a
    heartbeat also does this itself, across machines)."""
    optuna = _optuna()
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        fail_stale_trials(study)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _dead_here(trial):
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            log(f"trial {trial.number}: its process ({trial.user_attrs['pid']}) is gone; marked failed")


def counted(study, below: int | None = None) -> int:
    """Trials that use up the budget: finished (complete or pruned), running or waiting; failed ones do not."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    trials = study.get_trials(deepcopy=False, states=states)
    return sum(1 for t in trials if below is None or t.number < below)


class Objective:
    """One trial: claim it, sample its settings, train its run folder with the pruning callback, return the
    best validation value over its epochs."""

    def __init__(self, tune: Tune, claim: Claim, log=print, should_stop=None):
        self.tune, self.claim, self.log, self.should_stop = tune, claim, log, should_stop
        self.outcome = None

    def __call__(self, trial):
        optuna = _optuna()
        self.outcome = "surplus"
        surplus = counted(trial.study, below=trial.number) >= self.tune.n_trials
        self.claim.release()
        if surplus:
            trial.set_user_attr("surplus", True)
            raise CnnlabError(f"trial {trial.number} was claimed past the budget of {self.tune.n_trials}; not run")
        trial.study.sampler = make_sampler(self.tune, trial.number)  # before the first suggest: it samples
        for key, value in (("host", socket.gethostname()), ("pid", os.getpid())):
            trial.set_user_attr(key, value)
        params = {p.name: p.suggest(trial) for p in self.tune.space}
        self.outcome = "failed"
        config = self.tune.trial_config(trial.number, params)
        trial.set_user_attr("run", config.out)
        self.log(f"trial {trial.number}: " + " ".join(f"{k}={_short(v)}" for k, v in params.items())
                 + f" → {config.out}")
        pruning = Pruning(trial, self.tune)
        should_stop = (lambda epoch, step: self.should_stop(trial.number, epoch, step)) if self.should_stop else None
        try:
            fit(config, should_stop=should_stop, notes=self.tune.notes, on_epoch=pruning)
        except SystemExit as e:
            self.outcome = "interrupted"
            raise Interrupted(e.code) from None
        value = Monitor(self.tune.objective).best(pruning.values)
        if pruning.reason or value is None:  # pruned, or diverged before a single finite value: a bad trial
            self.outcome = "pruned"
            raise optuna.TrialPruned(pruning.reason or "no finite validation value (the loss diverged)")
        self.outcome = "complete"
        return value


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_worker(tune: Tune, log=print, timeout: float | None = None, should_stop=None, clock=None) -> dict:
    """Run trials of the study until it holds n_trials (or `timeout` seconds have passed); several processes
    may run this at once against one storage. Returns the study's trial counts."""
    optuna = _optuna()
    clock = clock or time.monotonic
    study = load_study(tune)
    check_folders(tune, study)
    claim, start, failures = Claim(lock_path(tune.storage)), clock(), 0
    objective = Objective(tune, claim, log, should_stop)
    while timeout is None or clock() - start < timeout:
        claim.acquire()
        try:
            fail_dead_trials(study, log)
            if counted(study) >= tune.n_trials:
                break
            objective.outcome = None
            study.optimize(objective, n_trials=1, catch=(CnnlabError,))
        except Interrupted:
            log(f"tune stopped by a signal; the trial is marked failed. Start the same `cnnlab tune` command "
                f"again to continue the study ({tune.storage})")
            raise SystemExit(130) from None
        finally:
            claim.release()
        if objective.outcome == "surplus":
            break
        failures = failures + 1 if objective.outcome == "failed" else 0
        if failures >= MAX_FAILURES_IN_A_ROW:
            last = study.get_trials(deepcopy=False)[-1]
            where = last.user_attrs.get("run", f"trial {last.number}")
            raise CnnlabError(f"{failures} trials in a row failed (the last: {where}; see its log.txt); the study "
                              "stops here")
    else:
        log(f"--timeout: {timeout:g} s passed; no new trial started")
    return trial_counts(study)


def worker_command(args_tail: list[str], threads: int | None) -> list[str]:
    """The command each of --workers N processes runs: the same `cnnlab tune`, one worker, its share of cores."""
    command = [sys.executable, "-m", "cnnlab", "tune", *args_tail, "--workers", "1", "--no-report"]
    return command + (["--set", f"threads={threads}"] if threads else [])


def run_workers(tune: Tune, args_tail: list[str], workers: int, log=print) -> int:
    """Start `workers` processes of the same command on this machine, each with its share of the cores (or one
    GPU each), and wait for all; the exit status is the worst of theirs."""
    check_folders(tune, load_study(tune))  # the study is created once here, so the workers do not race for it
    threads = None if "threads" in tune.base or any(p.name == "threads" for p in tune.space) else max(
        1, usable_cores() // workers)
    gpus = _gpu_count(tune)
    processes = []
    for k in range(workers):
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(k % gpus)
        processes.append(subprocess.Popen(worker_command(args_tail, threads), env=env))
    log(f"{workers} workers started" + (f", {threads} CPU threads each" if threads else "")
        + (f", on {gpus} GPUs" if gpus else ""))
    codes = []
    for process in processes:
        try:
            codes.append(process.wait())
        except KeyboardInterrupt:  # the workers got the Ctrl-C too: wait for them to mark their trials failed
            codes.append(process.wait())
    return max(codes, key=lambda c: (c != 0, c))


def _gpu_count(tune: Tune) -> int:
    if tune.base.get("device", "auto") not in ("auto", "cuda"):
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def best_line(tune: Tune) -> str:
    """One line on the study's best trial so far: its value, settings and run folder."""
    study = load_study(tune, create=False)
    try:
        best = study.best_trial
    except ValueError:  # no complete trial yet
        return "best: no trial has completed yet"
    settings = " ".join(f"{k}={_short(v)}" for k, v in best.params.items())
    return f"best: trial {best.number}, {tune.objective} {best.value:.4g} with {settings} ({best.user_attrs['run']})"


def report(tune: Tune) -> Path:
    """The study's report in OUT/report/ (index.html and study.md with their PNGs)."""
    return write_study_report(load_study(tune, create=False), tune.out / "report", tune.objective)


def check_folders(tune: Tune, study) -> None:
    """Refuse trial-NNN folders in OUT that the study does not know (another study's, or one whose storage is
    gone): a new trial of the same number would collide with them."""
    known = {t.number for t in study.get_trials(deepcopy=False)} if study is not None else set()
    foreign = sorted(p for p in tune.out.glob("trial-*") if p.is_dir() and p.name[6:].isdigit()
                     and int(p.name[6:]) not in known)
    if foreign:
        raise CnnlabError(f"{foreign[0]} belongs to no trial of the study {tune.study_name!r} in {tune.storage}; "
                          "give [tune] out another folder, or --storage the study it came from")

