"""The losses, and loss and accuracy sums kept on the device through an epoch and summed over processes at the end."""

import torch
import torch.nn.functional as F

from cnnlab.distributed import Dist, all_sum

# Top-5 accuracy is reported above 10 classes: with 10 or fewer it is close to 1 and says little (CIFAR-10, MNIST).
TOP5_ABOVE = 10


def has_top5(task: str, num_classes: int) -> bool:
    """Whether a run reports top-5 accuracy: its metrics.csv columns, its sums and its summary follow this."""
    return task == "classification" and num_classes > TOP5_ABOVE


def loss_fn(task: str, label_smoothing: float = 0.0):
    """½ squared error for regression; cross-entropy for classification, whose targets are labels (N,) or class
    probabilities (N, classes), the soft targets of mixup/CutMix. F.cross_entropy smooths either kind the same
    way, target·(1 - ε) + ε/classes, so smoothing composes with mixing."""
    if task == "regression":
        return lambda out, y: 0.5 * (out - y).square().mean()  # the seed's ½(ŷ − y)², averaged
    return lambda out, y: F.cross_entropy(out, y, label_smoothing=label_smoothing)


class Sums:
    """Running sums on the device: no host synchronisation until `result()`, which also sums over processes.

    Training also sums the optimizer steps' gradient norms before clipping (`add_grad_norm`); `result()` reports
    their mean over the epoch's steps as "grad_norm", leaving out steps whose fp16 gradients overflowed (inf/NaN
    norms: those steps are skipped). Every process sees the same norm, so the sum over processes keeps the mean.
    """

    def __init__(self, device, task: str, num_classes: int, d: Dist = Dist()):
        self.d, self.task = d, task
        self.top5_kept = has_top5(task, num_classes)
        self.loss = torch.zeros((), device=device, dtype=torch.float64)
        self.correct = torch.zeros((), device=device, dtype=torch.int64)
        self.top5 = torch.zeros((), device=device, dtype=torch.int64)
        self.n = 0
        self.grad_norm = torch.zeros((), device=device, dtype=torch.float64)
        self.grad_norm_steps = torch.zeros((), device=device, dtype=torch.int64)

    def add(self, loss, out, y):
        """Add a batch. Soft targets (N, classes) of a mixed batch count accuracy against each image's dominant
        label, the larger λ part (a tie at λ = ½ goes to the lower class index)."""
        with torch.no_grad():  # one operator: in float64, the loss times the batch's size, added
            self.loss.add_(loss, alpha=len(y))
        if self.task == "classification":
            if y.ndim == 2:
                y = y.argmax(1)
            self.correct += (out.argmax(1) == y).sum()
            if self.top5_kept:
                self.top5 += (out.topk(5, 1).indices == y[:, None]).any(1).sum()
        self.n += len(y)

    def add_grad_norm(self, norm):
        finite = torch.isfinite(norm)
        self.grad_norm += torch.where(finite, norm.detach().double(), 0.0)
        self.grad_norm_steps += finite

    def result(self) -> dict:
        totals = torch.stack([self.loss, self.correct.double(), self.top5.double(),
                              torch.tensor(float(self.n), device=self.loss.device, dtype=torch.float64),
                              self.grad_norm, self.grad_norm_steps.double()])
        loss, correct, top5, n, grad_norm, steps = all_sum(totals, self.d).tolist()
        r = {"loss": loss / max(n, 1), "n": int(n)}
        if steps:
            r["grad_norm"] = grad_norm / steps
        if self.task == "classification":
            r["acc"] = correct / max(n, 1)
            if self.top5_kept:
                r["top5"] = top5 / max(n, 1)
        return r

    def state(self) -> dict:
        return {"loss": float(self.loss), "correct": int(self.correct), "top5": int(self.top5), "n": self.n,
                "grad_norm": float(self.grad_norm), "grad_norm_steps": int(self.grad_norm_steps)}

    def load(self, state: dict) -> None:
        self.loss.fill_(state["loss"])
        self.correct.fill_(state["correct"])
        self.top5.fill_(state["top5"])
        self.n = state["n"]
        self.grad_norm.fill_(state.get("grad_norm", 0.0))  # positions saved before grad norms were summed lack it
        self.grad_norm_steps.fill_(state.get("grad_norm_steps", 0))
