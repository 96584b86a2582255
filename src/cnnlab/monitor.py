"""What "better" means for a metric: the one rule that best checkpoints, early stopping and reports share.

Losses are minimised and everything else (accuracy, top-5) maximised; a name says which by its ending, so
`val_loss`, `test_loss` and a report's `best_val_loss` all go down, `val_acc` and `best_val_acc` up.
"""

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Monitor:
    metric: str

    @property
    def lower_is_better(self) -> bool:
        return self.metric.endswith("loss")

    def beats(self, value, reference, delta: float = 0.0) -> bool:
        """`value` is better than `reference` by MORE than `delta` (0: strictly better). NaN never beats anything;
        anything beats a missing or NaN reference."""
        if value is None or math.isnan(value):
            return False
        if reference is None or math.isnan(reference):
            return True
        return value < reference - delta if self.lower_is_better else value > reference + delta

    def best(self, values) -> float | None:
        """The best of `values`, NaN and None left out; None when nothing is left."""
        values = [v for v in values if v is not None and not math.isnan(v)]
        if not values:
            return None
        return min(values) if self.lower_is_better else max(values)

    def sort_key(self, value: float) -> float:
        """A key under which the best value is the largest."""
        return -value if self.lower_is_better else value


def default_monitor(task: str) -> Monitor:
    """What picks best.pt when nothing else is said: validation accuracy, or the loss of a regression."""
    return Monitor("val_acc" if task == "classification" else "val_loss")
