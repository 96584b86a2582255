"""synthetic-linear: y = Xw + b + ε with known w and b (D2L 3.3), for linear regression."""

import numpy as np

from cnnlab.data.arrays import Dataset, Split

TRUE_W = (2.0, -3.4)
TRUE_B = 4.2


def synthetic_linear(n_train: int = 1000, n_test: int = 1000, w=TRUE_W, b: float = TRUE_B, sigma: float = 0.01,
                     seed: int = 0) -> Dataset:
    """Features X ~ N(0, 1) of width len(w); targets (N, 1) float32. `notes` records the truth for reports."""
    rng = np.random.default_rng(seed)
    w = np.asarray(w, np.float64)

    def make(n):
        x = rng.standard_normal((n, len(w)))
        y = x @ w + b + rng.normal(0.0, sigma, n)
        return Split(x.astype(np.float32), y[:, None].astype(np.float32))

    notes = {"true_w": w.tolist(), "true_b": float(b), "sigma": float(sigma), "seed": seed}
    return Dataset("synthetic-linear", "synthetic", [], {"train": make(n_train), "test": make(n_test)},
                   task="regression", notes=notes)
