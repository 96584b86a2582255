"""`cnnlab sweep FILE.toml` (or a preset's name): a base configuration × named variants × a grid × seeds, run one
after another.

    [sweep]                      # where, and which seeds
    out = "runs/ablation"
    seeds = [0, 1, 2]
    data_root = "/data/sets"     # optional: where datasets are found (default: the data home, $CNNLAB_DATA)
    [base]                       # any TrainConfig fields
    model = "mlp"
    dataset = "cifar10"          # its copy in the data root / data home: the official files first (cnnlab.data.home)
    # data = ["full.zip", "subset.tar.gz"]   # or a path, or candidates: the first that exists is used
    [[variant]]                  # optional: named sets of overrides (an ablation's rows)
    name = "dropout"
    dropout = 0.5
    [grid]                       # optional: every combination of these values
    momentum = [0.0, 0.9]

Each run goes to OUT/<variant>-<field=value…>-seed<k>/. Every run is validated, its data found and checked, before
the first one starts. Started again, a sweep skips runs that finished (they have summary.json), resumes the one
that was interrupted, and restarts one killed before its first checkpoint.
"""

import dataclasses
import functools
import itertools
import re
import shutil
import time
import tomllib
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path

from cnnlab.config import TrainConfig, fit_to_epochs, read_toml
from cnnlab.errors import CnnlabError
from cnnlab.presets import find as find_preset

SWEEP_KEYS = ("out", "seeds", "data_root")
# The sweep sets these for each run; a value anywhere else would be replaced without a word.
RUN_KEYS = {"out": "[sweep] out", "seed": "[sweep] seeds"}


@dataclass
class Sweep:
    """A planned sweep: every run's validated config, with its data resolved, in the order the runs go."""
    file: Path
    out: Path
    data_root: Path | None  # None: each dataset's copy in the data home
    runs: list[tuple[str, TrainConfig]]
    data_notes: dict[str, str] = field(default_factory=dict)  # run name → which data candidate was taken
    epoch_notes: dict[str, list[str]] = field(default_factory=dict)  # run name → settings rescaled to its epochs


@contextmanager
def _naming(origin: str):
    """Prefix an error with the run it belongs to, so a sweep of 30 runs says which one is wrong."""
    try:
        yield
    except CnnlabError as e:
        raise CnnlabError(f"{origin}: {e}") from None


def parse_settings(items) -> dict:
    """`--set KEY=VALUE` pairs, typed: the value as TOML when it parses (1, 0.1, true, [30, 60]), else as text."""
    values = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise CnnlabError(f"--set {item!r} is not KEY=VALUE; e.g. --set epochs=1")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        TrainConfig.from_dict({key: value}, f"--set {item}")  # unknown keys and wrong types fail here, in one line
        values[key] = value
    return values


def read_sweep(path: Path) -> dict:
    """A sweep file's tables, refusing tables and [sweep] keys a sweep does not have."""
    spec = read_toml(path, "sweep file")
    unknown = sorted(set(spec) - {"sweep", "base", "variant", "grid", "report"})
    if unknown:
        raise CnnlabError(f"{path}: unknown table [{unknown[0]}]; a sweep has [sweep], [base], [[variant]], [grid]")
    unknown = sorted(set(spec.get("sweep", {})) - set(SWEEP_KEYS))
    if unknown:
        raise CnnlabError(f"{path}: unknown [sweep] key {unknown[0]!r}; it takes {', '.join(SWEEP_KEYS)}")
    return spec


def _check_sources(path: Path, spec: dict, overrides: dict) -> None:
    """Refuse settings the sweep would silently replace: per-run keys, and --set keys a variant or the grid sets."""
    variants, grid = spec.get("variant", []), spec.get("grid", {})
    tables = [("[base]", spec.get("base", {})), ("[grid]", grid), ("--set", overrides)]
    tables += [(f"[[variant]] {v.get('name', '')!r}", v) for v in variants]
    for where, table in tables:
        clash = sorted(set(table) & set(RUN_KEYS))
        if clash:
            raise CnnlabError(f"{path}: {where} sets {clash[0]}, which the sweep sets for each run from "
                              f"{RUN_KEYS[clash[0]]}")
    for key in overrides:
        owner = "[grid]" if key in grid else next((f"[[variant]] {v.get('name', '')!r}" for v in variants
                                                   if key in v), None)
        if owner:
            raise CnnlabError(f"--set {key}: {path}'s {owner} sets {key} itself, so --set would not reach it; "
                              "--set changes [base] settings only (edit the sweep file instead)")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise CnnlabError(f"{path}: [grid] {key} must be a non-empty list of values")


def _name_part(key: str, value) -> str:
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return re.sub(r"[^A-Za-z0-9_.=,+-]", "_", f"{key}={text}")


def _layer(below: dict, above: dict, source: str) -> tuple[dict, list[str]]:
    """`above`'s settings over `below`'s, with below's positions in epochs rescaled where above changes the epochs."""
    rescaled, notes = fit_to_epochs(below, above, source)
    return {**below, **above, **rescaled}, notes


def _combinations(spec: dict, overrides: dict, seeds: list[int]):
    """(run name, settings, notes) for every variant × grid combination × seed, in the order they run.

    A variant's or grid point's epochs rescale the [base] settings in epochs, as --set epochs does the sweep file's
    (fit_to_epochs); the notes say which."""
    grid = spec.get("grid", {})
    for variant in spec.get("variant", [{}]):
        variant = dict(variant)
        label = str(variant.pop("name", ""))
        for combo in itertools.product(*grid.values()):
            settings = dict(zip(grid, combo))
            parts = ([re.sub(r"[^A-Za-z0-9_.-]", "_", label)] if label else []) + [
                _name_part(k, v) for k, v in settings.items()]
            values, notes = _layer(spec.get("base", {}), {**variant, **settings}, "[base]'s")
            values, more = _layer(values, overrides, "the sweep file's")
            for seed in seeds:
                yield "-".join(parts + [f"seed{seed}"]), {**values, "seed": seed}, notes + more


def _data_root(path: Path, settings: dict, data_root) -> Path | None:
    """--data-root, else the file's [sweep] data_root, else None: datasets are then looked for in the data home."""
    if data_root is not None:
        return Path(data_root).expanduser()
    value = settings.get("data_root")
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise CnnlabError(f"{path}: [sweep] data_root must be a folder path (a string), got {value!r}")
    return Path(value).expanduser()


def _choose_data(values: dict, root: Path | None) -> tuple[dict, str]:
    """Settings with `data` resolved against the data root; a list of candidates becomes the first that exists.
    A run without `data` reads its dataset's copy in the data root (else the data home): resolve_data finds it."""
    data = values.get("data")
    if data is None:
        return ({**values, "data_root": str(root)} if root is not None else values), ""
    root = root if root is not None else Path(".")
    candidates = data if isinstance(data, list) else [data]
    if not candidates or not all(isinstance(c, str) and c for c in candidates):
        raise CnnlabError(f"data must be a path or a non-empty list of paths (the first that exists is used), "
                          f"got {data!r}")
    paths = [root / Path(c).expanduser() for c in candidates]  # an absolute candidate ignores the root
    if not root.is_dir() and any(not Path(c).expanduser().is_absolute() for c in candidates):
        raise CnnlabError(f"data root {root} is not a folder; pass --data-root DIR, the folder holding the data")
    if len(paths) == 1:
        return {**values, "data": str(paths[0])}, ""  # resolve_data says so if it is missing
    found = next((i for i, p in enumerate(paths) if p.exists()), None)
    if found is None:
        raise CnnlabError(f"none of the data candidates exists under {root}: {', '.join(candidates)}; "
                          "pass --data-root DIR, the folder holding one of them")
    missing = f"; not found: {', '.join(candidates[:found])}" if found else ""
    return {**values, "data": str(paths[found])}, f"candidate {found + 1} of {len(paths)}{missing}"


def _resolve(config: TrainConfig, seen: dict) -> str:
    """Validate the run, then resolve_data once per distinct data setting (a sweep names the same archive many
    times, each check ~1 s); what it said about the copy it found, for the dry run."""
    # Here, not above: they import torch (~2 s), and `cnnlab presets` reads sweep files through this module, so it
    # must start without torch and matplotlib.
    from cnnlab.build import validate_config
    from cnnlab.run_data import resolve_data

    validate_config(config)
    key = (config.data, config.data_root, config.dataset, config.cache_dir, config.download)  # what it reads
    if key not in seen:
        said = []
        done = resolve_data(dataclasses.replace(config), say=said.append)
        seen[key] = (done.data, done.dataset, done.cache_dir, " ".join(said).removeprefix("data: "))
    config.data, config.dataset, config.cache_dir, note = seen[key]
    return note


def run_settings(path: Path, spec: dict, overrides: dict | None = None) -> list[tuple[str, dict, list[str]]]:
    """(run name, settings, notes on settings rescaled to its epochs) of every run a sweep file's tables describe,
    in order; data not yet resolved."""
    overrides = dict(overrides or {})
    _check_sources(path, spec, overrides)
    seeds = spec.get("sweep", {}).get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise CnnlabError(f"{path}: [sweep] seeds must be a non-empty list of integers")
    combinations = list(_combinations(spec, overrides, seeds))
    names = [n for n, _, _ in combinations]
    if len(set(names)) != len(names):
        raise CnnlabError(f"{path}: two runs would share a folder name; give each [[variant]] a distinct name")
    return combinations


def plan(path, data_root=None, overrides: dict | None = None) -> Sweep:
    """Every run of a sweep file (or preset name), validated and with its data checked, before anything runs or is
    created.

    `data_root` (else the file's [sweep] data_root, else the current folder) is what relative `data` values
    resolve against; `overrides` (from --set) replace [base] settings for every run.
    """
    path = find_preset(path, "sweep")
    spec = read_sweep(path)
    combinations = run_settings(path, spec, overrides)
    settings = spec.get("sweep", {})
    sweep = Sweep(path, Path(settings.get("out", f"runs/{path.stem}")), _data_root(path, settings, data_root), [])
    seen = {}
    for name, values, notes in combinations:
        origin = f"{path} ({name})"
        sweep.epoch_notes[name] = notes
        with _naming(origin):
            values, sweep.data_notes[name] = _choose_data(values, sweep.data_root)
        config = TrainConfig.from_dict(values, origin)
        config.out = str(sweep.out / name)
        with _naming(origin):
            found = _resolve(config, seen)
        if found and not sweep.data_notes[name]:
            sweep.data_notes[name] = found.partition(" (")[2].removesuffix(")") or found
        sweep.runs.append((name, config))
    return sweep


def run_state(folder: Path) -> str:
    """done (has summary.json), resume (has last.pt) or new: what starting the sweep again does with a run."""
    if (folder / "summary.json").is_file():
        return "done"
    return "resume" if (folder / "last.pt").is_file() else "new"


def describe(sweep: Sweep) -> list[str]:
    """The dry run: each run's name, what a start would do with it, its folder, its differing settings, its data."""
    differ = [f.name for f in fields(TrainConfig) if f.name not in ("out", "data")
              and len({repr(getattr(c, f.name)) for _, c in sweep.runs}) > 1]
    action = {"done": "finished earlier: skipped", "resume": "interrupted: resumed", "new": "to train"}
    n = len(sweep.runs)
    lines = [f"{sweep.file}: {n} runs into {sweep.out}; data: {_where(sweep.data_root)}"]
    for k, (name, config) in enumerate(sweep.runs, 1):
        note = sweep.data_notes.get(name)
        data = config.data or f"none ({config.dataset} is generated)"
        lines += [f"[{k}/{n}] {name} ({action[run_state(Path(config.out))]})",
                  f"    out:      {config.out}",
                  "    settings: " + (" ".join(f"{key}={getattr(config, key)}" for key in differ) or "(one run)"),
                  *(f"    rescaled: {line}" for line in sweep.epoch_notes.get(name, [])),
                  f"    data:     {data}" + (f" ({note})" if note else "")]
    return lines + ["dry run: nothing trained, nothing created"]


def _where(root: Path | None) -> str:
    from cnnlab.data.home import data_home

    home = data_home(root)
    return f"{home.path} ({home.said})"


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class SweepProgress:
    """Time across a sweep's runs: elapsed, and what is left estimated from the runs trained from scratch here."""

    def __init__(self, pending: int, clock=time.monotonic):
        self.clock, self.start, self.pending, self.durations = clock, clock(), pending, []
        self.counts = {"done": 0, "resume": 0, "new": 0}

    def status(self) -> str:
        elapsed = f"{_clock(self.clock() - self.start)} elapsed"
        if not self.durations:
            return f"{elapsed}, estimate after the first run"
        left = sum(self.durations) / len(self.durations) * self.pending
        return f"{elapsed}, about {_clock(left)} left"

    def finished(self, state: str, seconds: float = 0.0) -> None:
        self.counts[state] += 1
        if state != "done":
            self.pending -= 1
        if state == "new":  # a resumed run's time is only its remainder: it would shrink the estimate
            self.durations.append(seconds)

    def summary(self) -> str:
        c = self.counts
        return (f"sweep finished: {sum(c.values())} runs ({c['new']} trained, {c['resume']} resumed, "
                f"{c['done']} finished earlier) in {_clock(self.clock() - self.start)}")


def _train_one(config: TrainConfig, state: str, should_stop, notes=()) -> None:
    from cnnlab.engine import fit  # here: torch, see _resolve

    folder = Path(config.out)
    if state == "resume":
        fit(None, resume=str(folder), should_stop=should_stop)
        return
    if folder.exists():  # stopped before its first checkpoint: nothing to keep
        shutil.rmtree(folder)
    fit(config, should_stop=should_stop, notes=notes)


def run_sweep(sweep, report: bool = True, log=print, should_stop=None, clock=time.monotonic) -> Path:
    """Run every planned run that has not finished, then write the sweep's report into OUT/report/.

    `sweep` is a planned Sweep or a sweep file. `should_stop(run name, epoch, step)`, if given, reaches each run's
    loop like Ctrl-C would: the run saves last.pt and SystemExit(130) ends the sweep, to be started again.
    """
    sweep = sweep if isinstance(sweep, Sweep) else plan(sweep)
    sweep.out.mkdir(parents=True, exist_ok=True)
    states = [run_state(Path(config.out)) for _, config in sweep.runs]
    progress = SweepProgress(sum(s != "done" for s in states), clock)
    n = len(sweep.runs)
    for k, ((name, config), state) in enumerate(zip(sweep.runs, states), 1):
        if state == "done":
            log(f"[{k}/{n}] {name}: finished earlier, skipped")
            progress.finished(state)
            continue
        log(f"[{k}/{n}] {name}{' (resuming)' if state == 'resume' else ''} — {progress.status()}")
        start = clock()
        try:
            _train_one(config, state, functools.partial(should_stop, name) if should_stop else None,
                       sweep.epoch_notes.get(name, []))
        except SystemExit:
            log(f"sweep stopped in run {k}/{n}; start the same `cnnlab sweep` command again to continue it")
            raise
        progress.finished(state, clock() - start)
    log(progress.summary())
    if report:
        from cnnlab.report import write_report  # here: matplotlib, see _resolve

        target = write_report([Path(c.out) for _, c in sweep.runs], sweep.out / "report")
        log(f"report: {target}")
    return sweep.out
