"""Loss and accuracy curves, train vs validation (and the gradient norm of runs that clip it), drawn from
metrics.csv rows."""

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator  # not pyplot: no global backend switch, so a notebook keeps its own


CURVE_LABELS = {"loss": "loss", "acc": "accuracy", "top5": "top-5 accuracy",
                "grad_norm": "gradient norm before clipping"}


def panel_columns(panel: str) -> list[tuple[str, str, str]]:
    """(metrics.csv column, legend label, line style) of each curve a panel draws: a metric's train (dashed) and
    validation (solid) columns, or grad_norm (runs with --clip-grad-norm), the training steps' and so dashed."""
    if panel == "grad_norm":
        return [("grad_norm", "train", "--")]
    return [(f"train_{panel}", "train", "--"), (f"val_{panel}", "val", "-")]


def _series(rows, key):
    points = [(int(r["epoch"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
    return [p[0] for p in points], [p[1] for p in points]


def save_curves(rows: list[dict], path: Path, title: str = "", small: bool = False) -> Path:
    """Loss, accuracy when there is one, and the gradient norm before clipping when the run clipped — train
    dashed, validation solid. `small`: a figure light enough to commit (docs/)."""
    metrics = [m for m in ("loss", "acc", "grad_norm")
               if m == "loss" or any(r.get(column) not in (None, "") for r in rows for column, _, _ in panel_columns(m))]
    width = (3.5 if small else 4.5) * len(metrics) + 1
    fig = Figure(figsize=(width, 3.2) if small else (width, 4))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for metric, ax in zip(metrics, axes):
        for column, label, style in panel_columns(metric):
            x, y = _series(rows, column)
            if x:
                ax.plot(x, y, style, marker="o", markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no tick at 1.5
        ax.set_ylabel(CURVE_LABELS[metric])
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80 if small else 110)
    return Path(path)


def save_confusion(confusion, classes: list[str], path: Path) -> Path:
    """Row-normalised confusion matrix (true class down, predicted across); counts written when small."""
    k = len(classes)
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    size = min(14, 3 + 0.45 * k)
    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    if k <= 20:
        ax.set_xticks(range(k), classes, rotation=60, ha="right")
        ax.set_yticks(range(k), classes)
        for i in range(k):
            for j in range(k):
                ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = confusion.trace() / max(confusion.sum(), 1)
    ax.set_title(f"confusion matrix (accuracy {accuracy:.3f})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)
