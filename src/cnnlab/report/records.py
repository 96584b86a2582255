"""Read finished run folders back into plain records for comparison: config, metrics.csv rows, summary.json.

Only the files a run writes as text are read (never checkpoints), so a report works on a copy of the run folders
without the weights.
"""

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cnnlab import runfiles
from cnnlab.config import TrainConfig
from cnnlab.errors import CnnlabError
from cnnlab.runfolder import metrics_row_problem, read_config_values, read_metrics

REQUIRED = (runfiles.CONFIG, runfiles.METRICS, runfiles.SUMMARY)
# What `cnnlab eval` writes for the test split; the per-class file is optional (see `_per_class`).
CONFUSION_PNG = runfiles.confusion("test")
RELIABILITY_PNG = runfiles.reliability("test")
FILTERS_PNG = runfiles.FILTERS
MISTAKES_PNG = runfiles.mistakes("test")
EVAL_JSON = runfiles.evaluation("test")


@dataclass
class Run:
    """One run folder as data: every numeric metrics.csv cell is a float, an empty cell None."""

    path: Path
    config: dict
    metrics: list[dict]
    summary: dict
    name: str = ""
    per_class: dict | None = None
    confusion_png: Path | None = None
    reliability_png: Path | None = None
    ece: float | None = None
    filters_png: Path | None = None
    mistakes_png: Path | None = None
    confusion: list | None = None  # eval_test.json's counts, rows = true class in per_class's order
    notes: list[str] = field(default_factory=list)

    def column(self, key: str) -> list[tuple[int, float]]:
        """(epoch, value) for the epochs where `key` has a value."""
        return [(int(r["epoch"]), r[key]) for r in self.metrics if r.get(key) is not None]

    def best(self, key: str, lowest: bool = False) -> float | None:
        """The best value of a metrics.csv column over the epochs (max, or min with `lowest`), None if empty."""
        values = [v for _, v in self.column(key) if not math.isnan(v)]
        if not values:
            return None
        return min(values) if lowest else max(values)


def is_run(path) -> bool:
    """True when `path` is a folder holding the three files every finished run has."""
    path = Path(path)
    return path.is_dir() and all((path / name).is_file() for name in REQUIRED)


def load_run(path) -> Run:
    """Read a run folder; a folder that is not a finished run, or a damaged file in it, is one CnnlabError line."""
    path = Path(path)
    if not path.is_dir():
        raise CnnlabError(f"{path} is not a folder; give a cnnlab run folder (one with metrics.csv and summary.json)")
    missing = [name for name in REQUIRED if not (path / name).is_file()]
    if missing:
        hint = " (is the run still going, or was it interrupted? finish it with `cnnlab train --resume`)" \
            if (path / "metrics.csv").is_file() and missing == ["summary.json"] else ""
        raise CnnlabError(f"{path} is not a cnnlab run folder: no {' or '.join(missing)}{hint}")
    run = Run(path=path, config=_config(path / "config.toml"), metrics=_metrics(path / "metrics.csv"),
              summary=_summary(path / "summary.json"), name=path.name)
    if (path / CONFUSION_PNG).is_file():
        run.confusion_png = path / CONFUSION_PNG
    run.per_class = _per_class(path / EVAL_JSON, run)
    if run.per_class is not None:
        evaluation = json.loads((path / EVAL_JSON).read_text(encoding="utf-8"))
        confusion = evaluation.get("confusion")
        if isinstance(confusion, list) and len(confusion) == len(run.per_class):
            run.confusion = confusion
        ece = evaluation.get("ece")  # evaluations before calibration was added have none
        if isinstance(ece, (int, float)) and (path / RELIABILITY_PNG).is_file():
            run.reliability_png, run.ece = path / RELIABILITY_PNG, float(ece)
        # only the pictures this evaluation drew (older ones have none; a model without a first layer to draw none)
        run.filters_png = _drawn(path, evaluation, "filters_png", FILTERS_PNG)
        run.mistakes_png = _drawn(path, evaluation, "mistakes_png", MISTAKES_PNG)
    return run


def _drawn(path: Path, evaluation: dict, key: str, name: str) -> Path | None:
    """The run folder's picture `name` if eval_test.json says this evaluation drew it (under any folder: a copied
    run folder keeps its pictures beside the JSON)."""
    drawn = evaluation.get(key)
    return path / name if isinstance(drawn, str) and Path(drawn).name == name and (path / name).is_file() else None


def confused_pairs(confusion: list, classes: list[str], top: int = 5) -> list[dict]:
    """The `top` most frequent mistakes, true class → predicted class, with their count and their share of the true
    class's examples; none when every example is right."""
    pairs = [{"true": classes[i], "predicted": classes[j], "count": int(n), "share of true class":
              round(int(n) / max(1, sum(row)), 4)}
             for i, row in enumerate(confusion) for j, n in enumerate(row) if i != j and n]
    return sorted(pairs, key=lambda p: (-p["count"], p["true"], p["predicted"]))[:top]


def find_runs(paths) -> tuple[list[Path], list[str]]:
    """Expand the arguments to run folders, and say which sub-folders were passed over.

    A run folder stands for itself; any other folder (a sweep directory) stands for its immediate sub-folders that
    are runs. Sub-folders that look like an unfinished run are skipped with a note rather than failing the whole
    report, since a sweep is often reported on while its last runs are still training.
    """
    found, notes = [], []
    for path in map(Path, paths):
        if is_run(path):
            found.append(path)
            continue
        if not path.is_dir():
            raise CnnlabError(f"{path} does not exist or is not a folder; give run folders or a folder of runs")
        children = sorted(p for p in path.iterdir() if p.is_dir())
        runs = [p for p in children if is_run(p)]
        if not runs:
            if any((path / name).is_file() for name in REQUIRED):
                load_run(path)  # a run folder missing a file: load_run names which
            raise CnnlabError(f"{path} is neither a cnnlab run folder (no metrics.csv and summary.json) "
                              "nor a folder of run folders")
        for p in children:
            if p not in runs and (p / "config.toml").is_file():
                notes.append(f"skipped {p}: no summary.json or metrics.csv yet (still running or interrupted?)")
        found.extend(runs)
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return unique, notes


def load_runs(runs) -> list[Run]:
    """Run records for a mix of Run objects and paths (run folders or folders of runs), with unique names."""
    records, paths = [], []
    for item in runs:
        if isinstance(item, Run):
            records.append(item)
        else:
            paths.append(item)
    if paths:
        folders, notes = find_runs(paths)
        loaded = [load_run(p) for p in folders]
        if loaded and notes:
            loaded[0].notes.extend(notes)
        records.extend(loaded)
    if not records:
        raise CnnlabError("no runs to report on; give one or more run folders")
    if paths or not all(r.name for r in records):  # named records keep their names: a group's are named among all
        _name(records)
    return records


def _name(runs: list[Run]) -> None:
    # Folder names alone collide across sweeps (sweepA/seed0, sweepB/seed0): add parent folders until unique.
    depth = 1
    while True:
        names = ["/".join(r.path.resolve().parts[-depth:]) for r in runs]
        if len(set(names)) == len(names) or depth > max(len(r.path.resolve().parts) for r in runs):
            break
        depth += 1
    for run, name in zip(runs, names):
        run.name = name


def _config(path: Path) -> dict:
    # Fields written as `# name = (default)` are absent: fill today's defaults so runs compare field by field.
    # Unknown fields (a newer cnnlab) are kept rather than refused: a report only compares them.
    return {**asdict(TrainConfig()), **read_config_values(path)}


def _metrics(path: Path) -> list[dict]:
    """The rows with every cell a float (an empty cell None); a report refuses a damaged row wherever it is."""
    header, rows = read_metrics(path)
    if not header or header[0] != "epoch":
        raise CnnlabError(f"{path} has no metrics header (expected a first line starting with 'epoch'); "
                          "the file is empty or garbled")
    for number, cells in rows:
        problem = metrics_row_problem(header, cells)
        if problem:
            raise CnnlabError(f"{path} line {number} {problem}")
    return [{key: (float(cell) if cell != "" else None) for key, cell in zip(header, cells)} for _, cells in rows]


def _summary(path: Path) -> dict:
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CnnlabError(f"{path} is not valid JSON ({e.__class__.__name__}: {e})") from None
    if not isinstance(summary, dict):
        raise CnnlabError(f"{path} does not hold a JSON object; is it a cnnlab summary?")
    return summary


def _per_class(path: Path, run: Run) -> dict | None:
    """{class: accuracy} from eval_test.json (the `cnnlab eval` result: split, loss, acc, per_class), if present."""
    if not path.is_file():
        return None
    try:
        per_class = json.loads(path.read_text(encoding="utf-8")).get("per_class")
        return {str(k): float(v) for k, v in per_class.items()} if per_class else None
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError, ValueError):
        run.notes.append(f"{path} is not a readable evaluation result; per-class accuracy left out")
        return None
