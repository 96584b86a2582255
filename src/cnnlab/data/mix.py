"""Mixup (Zhang et al., arXiv:1710.09412) and CutMix (Yun et al., arXiv:1905.04899) of whole training batches on
the device: every image is mixed with the one before it in the batch (the first with the last), by one λ drawn
per batch, and its target becomes the same mix of the two one-hot labels.

The per-batch draws (mix or not, which of the two, λ, the box) come from a NumPy generator on the host: they
decide what the batch computes, so drawing them on the device would cost a host sync every step. Its state is
part of the loader's `state_dict()`, so a resumed run mixes exactly as an uninterrupted one.
"""

import numpy as np
import torch
import torch.nn.functional as F


class Mixer:
    """Turns a batch (x, labels) into (mixed x, soft targets (N, classes)). With probability `prob` a batch is
    mixed: by mixup with λ ~ Beta(mixup, mixup), or by CutMix with λ ~ Beta(cutmix, cutmix); when both α are set
    each mixed batch picks one of them with probability ½, as timm's Mixup does. A batch left unmixed still gets
    one-hot float targets, so every training batch has the same kind of target."""

    def __init__(self, num_classes: int, mixup: float = 0.0, cutmix: float = 0.0, prob: float = 1.0,
                 seed: int = 0, rank: int = 0):
        self.num_classes, self.mixup, self.cutmix, self.prob = num_classes, mixup, cutmix, prob
        self.rng = np.random.default_rng([seed, rank, 0x6D6978])  # its own stream, one per process

    def __call__(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        targets = F.one_hot(labels.long(), self.num_classes).float()
        if self.rng.random() >= self.prob:
            return x, targets
        use_cutmix = self.cutmix > 0 and (self.mixup == 0 or self.rng.random() < 0.5)
        lam = float(self.rng.beta(*(2 * [self.cutmix if use_cutmix else self.mixup])))
        if use_cutmix:
            x, lam = cutmix(x, lam, self.rng)
        else:
            x = mixup(x, lam)
        return x, lam * targets + (1 - lam) * targets.roll(1, 0)

    def describe(self) -> str:
        kinds = [f"{name} α={alpha}" for name, alpha in (("mixup", self.mixup), ("CutMix", self.cutmix)) if alpha]
        return (f"mixing training batches: {' or '.join(kinds)}"
                + (" (one of them per batch, chosen with probability ½, as timm does)" if len(kinds) == 2 else "")
                + f", {self.prob:.0%} of batches; each image is mixed with its neighbour in the batch and its "
                  "target is the same mix of the two labels. Train loss is against these soft targets and train "
                  "acc against each image's dominant label (the larger λ part); validation and test are not mixed")

    def state_dict(self) -> dict:
        return self.rng.bit_generator.state

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state


def mixup(x: torch.Tensor, lam: float) -> torch.Tensor:
    """λ·x + (1 - λ)·(each image's predecessor in the batch), computed in float32 whatever x's dtype."""
    return x.float().lerp(x.roll(1, 0).float(), 1 - lam).to(x.dtype)


def cutmix(x: torch.Tensor, lam: float, rng: np.random.Generator) -> tuple[torch.Tensor, float]:
    """Paste into every (N, C, H, W) image the same box of its predecessor: a box of area (1 - λ)·H·W centred at a
    random pixel, clipped at the border. Returns the images and λ corrected to the area actually kept."""
    h, w = x.shape[-2:]
    box_h, box_w = int(h * np.sqrt(1 - lam)), int(w * np.sqrt(1 - lam))
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    top, left = cy - box_h // 2, cx - box_w // 2
    y0, y1 = max(top, 0), min(top + box_h, h)
    x0, x1 = max(left, 0), min(left + box_w, w)
    out = x.clone()
    out[..., y0:y1, x0:x1] = x.roll(1, 0)[..., y0:y1, x0:x1]
    return out, 1 - (y1 - y0) * (x1 - x0) / (h * w)
