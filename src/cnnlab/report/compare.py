"""Compare runs: a results table, groups of seeds with mean ± std, overlaid curves and bar charts per factor.

Every number comes from the runs' metrics.csv and summary.json (see `cnnlab.report.runs`). Figures are built with
`matplotlib.figure.Figure` rather than pyplot, so nothing is kept in pyplot's global state, no backend is forced on
a notebook, and a returned figure displays inline there.
"""

import math
import statistics
from dataclasses import dataclass, field

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from cnnlab.errors import CnnlabError
from cnnlab.report.runs import Run, load_runs

# Where data and outputs live says nothing about what was trained: the same experiment on another machine.
IGNORED = ("out", "data", "cache_dir")
# Runs equal in everything but these are repeats of one experiment.
GROUP_IGNORED = IGNORED + ("seed",)
# Shown in their own columns, so never repeated among the differing hyperparameters.
IDENTITY = ("model", "dataset")
# The numeric results of one run, in table order; every one is averaged over a group's seeds.
METRICS = ("parameters", "best_val_acc", "best_val_loss", "test_top1", "test_top5", "test_loss", "epochs",
           "wall_seconds", "images_per_second")
CURVE_LABELS = {"loss": "loss", "acc": "accuracy", "top5": "top-5 accuracy"}


def run_metrics(run: Run) -> dict:
    """The numeric results of one run: best validation values from metrics.csv, the rest from summary.json."""
    s = run.summary
    return {"parameters": s.get("parameters"), "best_val_acc": run.best("val_acc"),
            "best_val_loss": run.best("val_loss", lowest=True), "test_top1": s.get("test_top1"),
            "test_top5": s.get("test_top5"), "test_loss": s.get("test_loss"),
            "epochs": s.get("epochs_run", len(run.metrics)), "wall_seconds": s.get("wall_seconds"),
            "images_per_second": s.get("images_per_second")}


def differing_fields(configs: list[dict], ignore=IGNORED) -> list[str]:
    """Config fields whose values are not all equal across `configs`, in config order, leaving out `ignore`."""
    keys = list(dict.fromkeys(k for c in configs for k in c))
    return [k for k in keys if k not in ignore and len({_hashable(c.get(k)) for c in configs}) > 1]


def results_table(runs) -> list[dict]:
    """One row per run: run, model, dataset, the hyperparameters that differ between the runs, results, device."""
    runs = load_runs(runs)
    differing = [k for k in differing_fields([r.config for r in runs]) if k not in IDENTITY]
    return [{"run": r.name, **_identity(r), **{k: r.config.get(k) for k in differing}, **run_metrics(r),
             "device": r.summary.get("device")} for r in runs]


@dataclass
class Stat:
    """Mean and sample standard deviation (n − 1 in the denominator; None when n = 1) of n values."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, values) -> "Stat | None":
        values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
        if not values:
            return None
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))


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
        key = tuple(sorted((k, _hashable(v)) for k, v in config.items()))
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
    sign = 1 if metric == "best_val_acc" else -1
    return max(scored, key=lambda t: (sign * t[0], -t[1]))[2]  # ties go to the run given first


def plot_runs(runs, metric: str = "val_acc") -> Figure:
    """Overlaid curves per epoch, one colour per run, train dashed and validation solid.

    The first panel is `metric`'s quantity (val_acc → accuracy, val_top5 → top-5), the second the loss; panels no
    run has values for (accuracy of a regression run) are left out. Accepts run folders or Run records.
    """
    runs = load_runs(runs)
    base = metric.split("_", 1)[1] if metric.startswith(("train_", "val_")) else metric
    if base not in CURVE_LABELS:
        raise CnnlabError(f"unknown curve metric {metric!r}; choose one of: val_acc, val_top5, val_loss")
    panels = [p for p in dict.fromkeys([base, "loss"])
              if any(r.column(f"{split}_{p}") for r in runs for split in ("train", "val"))]
    if not panels:
        raise CnnlabError("the runs' metrics.csv files hold no epochs to plot")
    fig = Figure(figsize=(5.2 * len(panels) + 2.2, 4.2), layout="constrained")
    colours = _colours(len(runs))
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for run, colour in zip(runs, colours):
            for split, style in (("train", "--"), ("val", "-")):
                points = run.column(f"{split}_{panel}")
                if points:
                    epochs, values = zip(*points)
                    ax.plot(epochs, values, style, color=colour, marker="o", markersize=2.5, linewidth=1.4)
        ax.set_xlabel("epoch")
        ax.set_ylabel(CURVE_LABELS[panel])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    # Legend entries are proxies, so each axis holds exactly one line per run and split.
    handles = [Line2D([], [], color=c, label=r.name) for r, c in zip(runs, colours)]
    handles += [Line2D([], [], color="0.3", linestyle="--", label="train"),
                Line2D([], [], color="0.3", linestyle="-", label="validation")]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8 if len(runs) <= 12 else 6, frameon=False)
    return fig


def plot_factor(groups: list[Group], factor: str, metric: str) -> Figure:
    """Bars of `metric` (mean over seeds, error bar ± sample std) for each group, ordered by the factor's value."""
    others = [k for k in factors(groups) if k != factor]
    ordered = sorted(groups, key=lambda g: (_sort_key(g.config.get(factor)),
                                            [_sort_key(g.config.get(k)) for k in others]))
    values = list(dict.fromkeys(_hashable(g.config.get(factor)) for g in ordered))
    colours = _colours(len(values))
    stats = [g.stat(metric) for g in ordered]
    fig = Figure(figsize=(max(4.5, 0.9 * len(ordered) + 2), 3.6), layout="constrained")
    ax = fig.add_subplot()
    x = range(len(ordered))
    ax.bar(x, [s.mean if s else 0 for s in stats], yerr=[(s.std or 0) if s else 0 for s in stats], capsize=4,
           color=[colours[values.index(_hashable(g.config.get(factor)))] for g in ordered])
    for i, s in zip(x, stats):
        top = (s.mean + (s.std or 0)) if s else 0
        ax.annotate(f"n={s.n}" if s else "n=0", (i, top), textcoords="offset points", xytext=(0, 2), ha="center",
                    va="bottom", fontsize=7)
    ax.margins(y=0.12)  # room for the n labels above the tallest error bar
    labels = [format_value(g.config.get(factor))
              + ("".join(f"\n{k}={format_value(g.config.get(k))}" for k in others)) for g in ordered]
    ax.set_xticks(list(x), labels, fontsize=7 if others else 9)
    ax.set_xlabel(factor)
    ax.set_ylabel(f"{metric.replace('_', ' ')}, mean ± std")
    ax.set_title(f"{metric.replace('_', ' ')} by {factor}", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return fig


def factor_figures(runs, metric: str | None = None) -> list[tuple[str, Figure]]:
    """(factor, bar chart) for every config field that differs between seed groups; none with a single group."""
    runs = load_runs(runs)
    groups = group_runs(runs)
    metric = metric or primary_metric(runs)
    return [(f, plot_factor(groups, f, metric)) for f in factors(groups)] if len(groups) > 1 else []


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
    # summary.json names the resolved model (a paper letter such as "D" becomes vgg16).
    return {"model": run.summary.get("model", run.config.get("model")),
            "dataset": run.summary.get("dataset", run.config.get("dataset"))}


def _hashable(value):
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def _sort_key(value):
    # Mixed types (None, "all" and numbers for batch_size) must still sort: numbers first, then by text.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, format_value(value))


def _colours(n: int) -> list:
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["viridis"](i / (n - 1)) for i in range(n)]
