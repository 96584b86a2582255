"""Calibration: do the model's probabilities mean what they say? Expected calibration error over equal-width
confidence bins (Guo et al. 2017, "On Calibration of Modern Neural Networks", 15 bins) and its reliability diagram.
"""

from pathlib import Path

import numpy as np

BINS = 15


def calibration(probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS) -> dict:
    """ECE = Σ_b (n_b / N) · |accuracy_b − mean confidence_b|, the confidence being each example's top
    probability, in `bins` equal-width bins over [0, 1]; returns {"ece", "bins": [{lo, hi, count, confidence,
    accuracy}…]} with empty bins kept (count 0, confidence and accuracy None)."""
    probabilities, labels = np.asarray(probabilities, np.float64), np.asarray(labels)
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)  # (lo, hi]; 0 joins bin 0
    rows, ece = [], 0.0
    for b in range(bins):
        members = which == b
        n = int(members.sum())
        conf = float(confidence[members].mean()) if n else None
        acc = float(correct[members].mean()) if n else None
        if n:
            ece += n / len(labels) * abs(acc - conf)
        rows.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": n, "confidence": conf,
                     "accuracy": acc})
    return {"ece": ece, "bins": rows}


def save_reliability(result: dict, path: Path) -> Path:
    """The reliability diagram: each bin's accuracy against its confidence (the diagonal is perfect calibration),
    the gap shaded, and how many examples fall in each bin below."""
    # Here, not above: matplotlib takes ~0.5 s, and predict and export import evaluate, which imports this.
    from matplotlib.figure import Figure

    rows = [r for r in result["bins"] if r["count"]]
    fig = Figure(figsize=(5, 5.6))
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    width = result["bins"][0]["hi"] - result["bins"][0]["lo"]
    centres = [(r["lo"] + r["hi"]) / 2 for r in rows]
    top.bar(centres, [r["accuracy"] for r in rows], width=width * 0.95, color="tab:blue", label="accuracy")
    top.bar(centres, [r["confidence"] - r["accuracy"] for r in rows], bottom=[r["accuracy"] for r in rows],
            width=width * 0.95, color="tab:red", alpha=0.35, label="gap to confidence")
    top.plot([0, 1], [0, 1], color="0.3", linestyle="--", linewidth=1, label="perfect calibration")
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy")
    top.set_title(f"reliability (ECE {result['ece']:.3f}, {len(result['bins'])} bins)", fontsize=10)
    top.legend(fontsize=8, loc="upper left")
    bottom.bar(centres, [r["count"] for r in rows], width=width * 0.95, color="0.5")
    bottom.set(xlabel="confidence (top probability)", ylabel="examples")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)
