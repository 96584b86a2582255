"""Early stopping on a validation metric, as a small pure object the loop calls once per epoch."""

import math

MODES = {"val_loss": "min", "val_acc": "max"}


class EarlyStopping:
    """Stop after `patience` epochs without improvement of `metric`.

    An epoch improves only if it beats the best so far by MORE than `delta`: for val_loss (minimised) when
    value < best − delta, for val_acc (maximised) when value > best + delta. A change of exactly delta is not an
    improvement; NaN never is.
    """

    def __init__(self, metric: str, delta: float = 0.0, patience: int = 3):
        if metric not in MODES:
            raise ValueError(f"metric must be one of {', '.join(MODES)}")
        self.metric, self.delta, self.patience = metric, delta, patience
        self.mode = MODES[metric]
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0

    def improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        return value < self.best - self.delta if self.mode == "min" else value > self.best + self.delta

    def step(self, value: float, epoch: int) -> tuple[bool, str]:
        """Record one epoch's value; return (stop, reason)."""
        if self.improved(value):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return False, ""
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            return True, (f"{self.metric} did not improve by more than {self.delta} for {self.patience} epochs "
                          f"(best {self.best:.4f} at epoch {self.best_epoch})")
        return False, ""

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]
