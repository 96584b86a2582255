"""`cnnlab eval --save-predictions`: each example's logits, probabilities, predicted and true label, in one file."""

import csv
import io
from pathlib import Path

import numpy as np
import torch

from cnnlab.atomic import atomic_write
from cnnlab.errors import CnnlabError


def write_predictions(path, logits: torch.Tensor, labels, classes: list[str]) -> Path:
    """Write `path` atomically: `.csv` gets columns index, label, predicted, prob_<class>…; anything else is an
    `.npz` of logits (N, K), probabilities (N, K, softmax), predicted (N,), label (N,) and classes (K,)."""
    path = Path(path)
    logits = logits.float().cpu()
    probabilities = torch.softmax(logits, 1).numpy()
    predicted = logits.argmax(1).numpy()
    labels = np.asarray(labels, dtype=np.int64)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() == ".csv":
            with atomic_write(path, "w") as f:
                _write_csv(f, labels, predicted, probabilities, classes)
        else:
            buffer = io.BytesIO()  # np.savez appends ".npz" to a name; a file object keeps the name given
            np.savez(buffer, logits=logits.numpy(), probabilities=probabilities, predicted=predicted, label=labels,
                     classes=np.array(classes, dtype=str))
            with atomic_write(path, "wb") as f:
                f.write(buffer.getvalue())
    except OSError as e:
        raise CnnlabError(f"cannot write predictions to {path} ({e.strerror or e}); pick another path") from None
    return path


def _write_csv(f, labels, predicted, probabilities, classes) -> None:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(["index", "label", "predicted", *(f"prob_{name}" for name in classes)])
    for i, (label, guess, probs) in enumerate(zip(labels, predicted, probabilities)):
        writer.writerow([i, int(label), int(guess), *(f"{p:.6g}" for p in probs)])
