"""Test-time augmentation: a classifier's logits averaged over views of each image."""

import torch
import torch.nn.functional as F


def tta_logits(model, x: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """The model's output, averaged over test-time views: `flip` adds the mirror image; `flip-translate` also
    the (mirrored) image shifted one pixel up-left and down-right (border mirrored), weighted half as much."""
    if tta == "none":
        return model(x)

    def view(v):  # summed in float32: bf16 sums would blur close logits
        return model(v).float()

    out = 0.5 * (view(x) + view(x.flip(3)))
    if tta == "flip-translate":
        h, w = x.shape[2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        shifted = [padded[:, :, :h, :w], padded[:, :, 2:, 2:]]
        out = 0.5 * out + 0.25 * sum(0.5 * (view(v) + view(v.flip(3))) for v in shifted)
    return out
