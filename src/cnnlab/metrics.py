"""Loss and accuracy sums kept on the device through an epoch and summed over processes at the end."""

import torch

from cnnlab.distributed import Dist, all_sum


class Sums:
    """Running sums on the device: no host synchronisation until `result()`, which also sums over processes."""

    def __init__(self, device, d: Dist = Dist()):
        self.d = d
        self.loss = torch.zeros((), device=device, dtype=torch.float64)
        self.correct = torch.zeros((), device=device, dtype=torch.int64)
        self.top5 = torch.zeros((), device=device, dtype=torch.int64)
        self.n = 0

    def add(self, loss, out, y, task):
        self.loss += loss.detach().double() * len(y)
        if task == "classification":
            self.correct += (out.argmax(1) == y).sum()
            if out.shape[1] > 10:
                self.top5 += (out.topk(5, 1).indices == y[:, None]).any(1).sum()
        self.n += len(y)

    def result(self, task, num_classes) -> dict:
        totals = torch.stack([self.loss, self.correct.double(), self.top5.double(),
                              torch.tensor(float(self.n), device=self.loss.device, dtype=torch.float64)])
        loss, correct, top5, n = all_sum(totals, self.d).tolist()
        r = {"loss": loss / max(n, 1), "n": int(n)}
        if task == "classification":
            r["acc"] = correct / max(n, 1)
            if num_classes > 10:
                r["top5"] = top5 / max(n, 1)
        return r

    def state(self) -> dict:
        return {"loss": float(self.loss), "correct": int(self.correct), "top5": int(self.top5), "n": self.n}

    def load(self, state: dict) -> None:
        self.loss.fill_(state["loss"])
        self.correct.fill_(state["correct"])
        self.top5.fill_(state["top5"])
        self.n = state["n"]
