"""Compare runs: a results table, and groups of seeds with mean ± std of every metric (figures: plots.py).

Every number comes from the runs' metrics.csv and summary.json (see `cnnlab.report.records`).
"""

import math
import statistics
from dataclasses import dataclass, field

from cnnlab.monitor import Monitor
from cnnlab.report.records import Run, load_runs

# Where data and outputs live says nothing about what was trained: the same experiment on another machine. Nor does
# a second view of the numbers (--tensorboard): a run with it repeats one without.
IGNORED = ("out", "data", "data_root", "cache_dir", "download", "tensorboard", "tensorboard_every")
# Runs equal in everything but these are repeats of one experiment.
GROUP_IGNORED = IGNORED + ("seed",)
# Shown in their own columns, so never repeated among the differing hyperparameters.
IDENTITY = ("model", "dataset")
# The numeric results of one run, in table order; every one is averaged over a group's seeds.
METRICS = ("parameters", "best_val_acc", "best_val_loss", "test_top1", "test_top5", "test_loss", "epochs",
           "wall_seconds", "images_per_second")


def run_metrics(run: Run) -> dict:
    """The numeric results of one run: best validation values from metrics.csv, the rest from summary.json."""
    s = run.summary
    return {"parameters": s.get("parameters"), "best_val_acc": best_of(run, "val_acc"),
            "best_val_loss": best_of(run, "val_loss"), "test_top1": s.get("test_top1"),
            "test_top5": s.get("test_top5"), "test_loss": s.get("test_loss"),
            "epochs": s.get("epochs_run", len(run.metrics)), "wall_seconds": s.get("wall_seconds"),
            "images_per_second": s.get("images_per_second")}


def best_of(run: Run, column: str) -> float | None:
    """The best value of a metrics.csv column over a run's epochs, in the direction its Monitor says."""
    return Monitor(column).best(v for _, v in run.column(column))


def differing_fields(configs: list[dict], ignore=IGNORED) -> list[str]:
    """Config fields whose values are not all equal across `configs`, in config order, leaving out `ignore`."""
    keys = list(dict.fromkeys(k for c in configs for k in c))
    return [k for k in keys if k not in ignore and len({config_key(c.get(k)) for c in configs}) > 1]


def results_table(runs) -> list[dict]:
    """One row per run: run, model, dataset, the hyperparameters that differ between the runs, results, device."""
    runs = load_runs(runs)
    differing = [k for k in differing_fields([r.config for r in runs]) if k not in IDENTITY]
    return [{"run": r.name, **_identity(r), **{k: r.config.get(k) for k in differing}, **run_metrics(r),
             "device": r.summary.get("device")} for r in runs]


# Student's t distribution's 97.5th percentile by degrees of freedom (two-sided 95 %), from its standard tables.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
        20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
        29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def t975(df: int) -> float:
    """Student's t 97.5th percentile for `df` degrees of freedom: the table, linear in 1/df between its rows
    beyond 30 (the standard interpolation, within 0.001), 1.960 in the limit."""
    if df in T975:
        return T975[df]
    rows = sorted(T975) + [math.inf]
    hi = next(r for r in rows if r > df)
    lo = max(r for r in rows if r < df)
    at_hi = 1.960 if hi == math.inf else T975[hi]
    w = (1 / lo - 1 / df) / (1 / lo - (0 if hi == math.inf else 1 / hi))
    return T975[lo] + w * (at_hi - T975[lo])


@dataclass
class Stat:
    """Mean, sample standard deviation (n − 1 in the denominator; None when n = 1) and n of some values, with the
    95 % confidence interval of the mean from Student's t (what a handful of seeds can say; ± sd alone cannot)."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, values) -> "Stat | None":
        values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
        if not values:
            return None
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))

    @property
    def half_width(self) -> float | None:
        """t(0.975, n − 1) · sd / √n: the 95 % interval is mean ± this (None for one value)."""
        return None if self.std is None else t975(self.n - 1) * self.std / math.sqrt(self.n)

    @property
    def ci95(self) -> tuple[float, float] | None:
        h = self.half_width
        return None if h is None else (self.mean - h, self.mean + h)


@dataclass
class Group:
    """Runs whose configs are equal except for the seed (and where they live): repeats of one experiment."""

    config: dict
    runs: list[Run] = field(default_factory=list)

    @property
    def seeds(self) -> list:
        return [r.config.get("seed") for r in self.runs]

    def stat(self, metric: str) -> Stat | None:
        return Stat.of(run_metrics(r)[metric] for r in self.runs)


def group_runs(runs) -> list[Group]:
    """Seed groups, in the order their first run was given."""
    groups: dict = {}
    for run in load_runs(runs):
        config = {k: v for k, v in run.config.items() if k not in GROUP_IGNORED}
        key = tuple(sorted((k, config_key(v)) for k, v in config.items()))
        groups.setdefault(key, Group(config)).runs.append(run)
    return list(groups.values())


def factors(groups: list[Group]) -> list[str]:
    """The config fields that differ between groups: what the experiment varied."""
    return differing_fields([g.config for g in groups], ignore=GROUP_IGNORED)


def grouped_table(runs) -> list[dict]:
    """One row per seed group: model, dataset, the factors, n and seeds, then a Stat (mean ± std) per metric."""
    groups = group_runs(runs)
    varied = [k for k in factors(groups) if k not in IDENTITY]
    rows = []
    for g in groups:
        devices = sorted({str(r.summary.get("device")) for r in g.runs})
        rows.append({**_identity(g.runs[0]), **{k: g.config.get(k) for k in varied}, "n": len(g.runs),
                     "seeds": g.seeds, **{m: g.stat(m) for m in METRICS}, "device": "; ".join(devices)})
    return rows


def primary_metric(runs) -> str:
    """What "better" means for these runs: best validation accuracy, else the lowest validation loss."""
    runs = load_runs(runs)
    return "best_val_acc" if any(r.best("val_acc") is not None for r in runs) else "best_val_loss"


def best_run(runs) -> Run | None:
    """The run with the best validation result (never chosen by the test split); None when none has one."""
    runs = load_runs(runs)
    metric = primary_metric(runs)
    scored = [(run_metrics(r)[metric], i, r) for i, r in enumerate(runs) if run_metrics(r)[metric] is not None]
    if not scored:
        return runs[0] if len(runs) == 1 else None
    monitor = Monitor(metric)
    return max(scored, key=lambda t: (monitor.sort_key(t[0]), -t[1]))[2]  # ties go to the run given first


def format_value(value) -> str:
    """A config value as the command line spells it (lists as 256,128; unset as 'default')."""
    if value is None:
        return "default"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "[]"
    return str(value)


def _identity(run: Run) -> dict:
    # summary.json names the resolved model (a paper letter such as "D" becomes vgg16) and the copy of the data
    # (a subset or re-encoded copy is labelled so: "tinyimagenet (train100 subset)").
    return {"model": run.summary.get("model", run.config.get("model")),
            "dataset": run.summary.get("data_label") or run.summary.get("dataset", run.config.get("dataset"))}


def config_key(value):
    """A config value in a hashable form (lists become tuples), for comparing and grouping."""
    if isinstance(value, list):
        return tuple(config_key(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, config_key(v)) for k, v in value.items()))
    return value


def sort_key(value):
    """Order for config values of mixed types (None, "all" and numbers for batch_size): numbers first, then text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, (float(value),), "")
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
        return (1, tuple(map(float, value)), "")  # hidden sizes: [8] before [64], not as text
    return (2, (), format_value(value))
