"""Loss and accuracy curves, train vs validation, drawn from metrics.csv rows."""

from pathlib import Path

from matplotlib.figure import Figure  # not pyplot: no global backend switch, so a notebook keeps its own


def _series(rows, key):
    points = [(int(r["epoch"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
    return [p[0] for p in points], [p[1] for p in points]


def save_curves(rows: list[dict], path: Path, title: str = "", small: bool = False) -> Path:
    """Two panels — loss, and accuracy when there is one — train dashed, validation solid. `small`: a figure
    light enough to commit (docs/)."""
    has_acc = any(r.get("train_acc") not in (None, "") for r in rows)
    fig = Figure(figsize=(8 if has_acc else 4.5, 3.2) if small else (10 if has_acc else 5.5, 4))
    axes = fig.subplots(1, 2 if has_acc else 1, squeeze=False)
    panels = [("loss", axes[0][0])] + ([("acc", axes[0][1])] if has_acc else [])
    for metric, ax in panels:
        for split, style in (("train", "--"), ("val", "-")):
            x, y = _series(rows, f"{split}_{metric}")
            if x:
                ax.plot(x, y, style, marker="o", markersize=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy" if metric == "acc" else "loss")
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80 if small else 110)
    return Path(path)


def save_confusion(confusion, classes: list[str], path: Path) -> Path:
    """Row-normalised confusion matrix (true class down, predicted across); counts written when small."""
    import numpy as np

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
