"""Figures for comparing runs: overlaid training curves and, per factor, dots of the mean over seeds with its 95 %
confidence interval.

Built as `matplotlib.figure.Figure` objects rather than through pyplot: nothing is kept in pyplot's global state (a
script drawing a hundred reports does not pile up open figures) and no backend is forced on anyone.
"""

import io

from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from cnnlab.errors import CnnlabError
from cnnlab.report.compare import Group, config_key, factors, format_value, group_runs, primary_metric, sort_key
from cnnlab.report.curves import CURVE_LABELS, panel_columns
from cnnlab.report.records import load_runs


class NotebookFigure(Figure):
    """A Figure that Jupyter shows inline under any matplotlib backend: IPython renders objects by `_repr_png_`."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=100)
        return buffer.getvalue()


X_AXES = {"epoch": "epoch", "step": "optimizer steps", "elapsed_seconds": "training seconds"}


def plot_runs(runs, metric: str = "val_acc", x: str = "epoch") -> Figure:
    """Overlaid curves, one colour per run, train dashed and validation solid.

    The first panel is `metric`'s quantity (val_acc → accuracy, val_top5 → top-5), the second the loss, the third
    the gradient norm before clipping; panels no run has values for (accuracy of a regression run, the gradient norm
    of runs without clipping or older than the column) are left out. `x` is epoch, step (cumulative optimizer steps:
    compares GD with SGD fairly) or elapsed_seconds, from metrics.csv. Accepts run folders or Run records.
    """
    if x not in X_AXES:
        raise CnnlabError(f"unknown x axis {x!r}; choose one of: {', '.join(X_AXES)}")
    runs = load_runs(runs)
    base = metric.split("_", 1)[1] if metric.startswith(("train_", "val_")) else metric
    if base not in CURVE_LABELS:
        raise CnnlabError(f"unknown curve metric {metric!r}; choose one of: val_acc, val_top5, val_loss, grad_norm")
    panels = [p for p in dict.fromkeys([base, "loss", "grad_norm"])
              if any(r.column(column) for r in runs for column, _, _ in panel_columns(p))]
    if not panels:
        raise CnnlabError("the runs' metrics.csv files hold no epochs to plot")
    fig = NotebookFigure(figsize=(5.2 * len(panels) + 2.2, 4.2), layout="constrained")
    colours = _colours(len(runs))
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for run, colour in zip(runs, colours):
            for column, _, style in panel_columns(panel):
                points = run.column(column)
                if x != "epoch":
                    position = dict(run.column(x))
                    points = [(position[e], v) for e, v in points if e in position]
                if points:
                    xs, values = zip(*points)
                    ax.plot(xs, values, style, color=colour, marker="o", markersize=2.5, linewidth=1.4)
        ax.set_xlabel(X_AXES[x])
        xs = [v for line in ax.lines for v in line.get_xdata() if v > 0]
        if x == "step" and xs and max(xs) > 100 * min(xs):
            ax.set_xscale("log")  # one GD step per epoch next to thousands of SGD steps
        ax.set_ylabel(CURVE_LABELS[panel])
        values = [v for line in ax.lines for v in line.get_ydata()]
        if panel == "loss" and values and min(values) > 0 and max(values) > 100 * min(values):
            ax.set_yscale("log")  # losses spanning orders of magnitude (a learning-rate sweep) stay readable
        if x == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    # Legend entries are proxies, so each axis holds exactly one line per run and split.
    handles = [Line2D([], [], color=c, label=r.name) for r, c in zip(runs, colours)]
    handles += [Line2D([], [], color="0.3", linestyle="--", label="train"),
                Line2D([], [], color="0.3", linestyle="-", label="validation")]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8 if len(runs) <= 12 else 6, frameon=False)
    return fig


def plot_factor(groups: list[Group], factor: str, metric: str, confounded=()) -> Figure:
    """A dot per group at the mean of `metric` over its seeds, with the mean's 95 % confidence interval (Student's
    t) and n above it, ordered by the factor's value. The axis spans the data, not 0 to the top: bars from 0 make
    0.89 and 0.94 look alike.

    `confounded` names factors that vary exactly as this one does; they go in the title, not the tick labels.
    """
    others = [k for k in factors(groups) if k != factor and k not in confounded]
    ordered = sorted(groups, key=lambda g: (sort_key(g.config.get(factor)),
                                            [sort_key(g.config.get(k)) for k in others]))
    values = list(dict.fromkeys(config_key(g.config.get(factor)) for g in ordered))
    colours = _colours(len(values))
    stats = [g.stat(metric) for g in ordered]
    fig = NotebookFigure(figsize=(max(4.5, 0.9 * len(ordered) + 2), 3.6), layout="constrained")
    ax = fig.add_subplot()
    x = list(range(len(ordered)))
    for i, (g, s) in enumerate(zip(ordered, stats)):
        if s is None:
            continue
        colour = colours[values.index(config_key(g.config.get(factor)))]
        ax.errorbar([i], [s.mean], yerr=[s.half_width or 0], fmt="o", color=colour, ecolor=colour, capsize=4,
                    markersize=6)
        ax.annotate(f"n={s.n}", (i, s.mean + (s.half_width or 0)), textcoords="offset points", xytext=(0, 2),
                    ha="center", va="bottom", fontsize=7)
    ax.set_xlim(-0.6, len(ordered) - 0.4)
    ax.margins(y=0.15)  # room for the n labels above the highest interval
    labels = [format_value(g.config.get(factor))
              + ("".join(f"\n{k}={format_value(g.config.get(k))}" for k in others)) for g in ordered]
    ax.set_xticks(x, labels, fontsize=7 if others else 9)
    ax.set_xlabel(factor)
    ax.set_ylabel(f"{metric.replace('_', ' ')}: mean, 95 % CI", fontsize=9)
    also = f"\n(varied together with {', '.join(confounded[:4])}{', …' if len(confounded) > 4 else ''})" \
        if confounded else ""
    ax.set_title(f"{metric.replace('_', ' ')} by {factor}{also}", fontsize=10 if not also else 9)
    ax.grid(axis="y", alpha=0.3)
    return fig


def factor_figures(runs, metric: str | None = None) -> list[tuple[str, Figure]]:
    """(factor, bar chart) for each config field that differs between seed groups; none with a single group.

    Factors that split the groups identically (hidden and lr changed together) would draw the same bars under
    another name, so they share one chart, named after the first of them.
    """
    runs = load_runs(runs)
    groups = group_runs(runs)
    metric = metric or primary_metric(runs)
    if len(groups) < 2:
        return []
    by_partition: dict = {}
    for f in factors(groups):
        keys = [config_key(g.config.get(f)) for g in groups]
        partition = frozenset(frozenset(i for i, k in enumerate(keys) if k == value) for value in keys)
        by_partition.setdefault(partition, []).append(f)
    return [(fs[0], plot_factor(groups, fs[0], metric, confounded=tuple(fs[1:]))) for fs in by_partition.values()]


def _colours(n: int) -> list:
    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["viridis"](i / (n - 1)) for i in range(n)]
