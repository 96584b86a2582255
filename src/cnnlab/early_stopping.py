"""Early stopping on a validation metric, as a small pure object the loop calls once per epoch."""

from cnnlab.monitor import Monitor

METRICS = ("val_loss", "val_acc")
RULES = ("best", "previous")


class EarlyStopping:
    """Stop after `patience` epochs in a row without improvement of `metric`.

    An epoch improves only if it beats the reference by MORE than `delta`: for val_loss (minimised) when
    value < reference − delta, for val_acc (maximised) when value > reference + delta. A change of exactly delta
    is not an improvement; NaN never is. The reference depends on `rule`:

    - `best` (default, as Lightning's EarlyStopping): the last value that improved.
    - `previous`: the previous epoch's value, as the seed wrote it (stop when the loss improves by at most ε).

    Worked sequences with delta 0.1, patience 2 (val_loss per epoch):
      1.0, 0.94, 0.88, 0.82, 0.76 (a slow steady fall) — `best`: 0.94 no, 0.88 yes (< 1.0 − 0.1), 0.82 no, 0.76 yes:
      never stops; `previous`: 0.94 no (vs 1.0), 0.88 no (vs 0.94): stops after epoch 3.
      1.0, 0.5, 0.9, 0.7, 0.55 (a spike, then recovery) — `best`: 0.5 yes, 0.9 no, 0.7 no (vs 0.5): stops after
      epoch 4; `previous`: 0.5 yes, 0.9 no, 0.7 yes (vs 0.9), 0.55 yes: never stops.
    """

    def __init__(self, metric: str, delta: float = 0.0, patience: int = 3, rule: str = "best"):
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}")
        if rule not in RULES:
            raise ValueError(f"rule must be one of {', '.join(RULES)}")
        self.metric, self.delta, self.patience, self.rule = metric, delta, patience, rule
        self.monitor = Monitor(metric)
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.previous: float | None = None
        self.bad_epochs = 0

    def improved(self, value: float) -> bool:
        return self.monitor.beats(value, self.previous if self.rule == "previous" else self.best, self.delta)

    def step(self, value: float, epoch: int) -> tuple[bool, str]:
        """Record one epoch's value; return (stop, reason)."""
        improved = self.improved(value)
        self.previous = value
        # `best` is the reference of the best rule; under the previous rule it is only reported, so it is the
        # true best there.
        if improved if self.rule == "best" else self.monitor.beats(value, self.best):
            self.best, self.best_epoch = value, epoch
        if improved:
            self.bad_epochs = 0
            return False, ""
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            than = "the previous epoch's" if self.rule == "previous" else "the best"
            return True, (f"{self.metric} did not improve by more than {self.delta} for {self.patience} epoch(s) "
                          f"in a row, compared with {than} value (best {self.best:.4f} at epoch {self.best_epoch})")
        return False, ""

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "previous": self.previous}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]
        self.previous = state.get("previous")
