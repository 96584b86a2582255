"""Cross-correlation and pooling written out by hand (D2L chapter 7), to check the layers the models use.

Slow loops on purpose: each line is the definition, so a test can compare nn.Conv2d / nn.MaxPool2d against it.
A test helper, so it lives with the tests and not in the installed package.
"""

import torch


def corr2d(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """2-D cross-correlation of one channel: y[i, j] = Σ_ab x[i+a, j+b] · k[a, b] ("valid" padding, stride 1)."""
    h, w = k.shape
    y = torch.zeros(x.shape[0] - h + 1, x.shape[1] - w + 1, dtype=x.dtype)
    for i in range(y.shape[0]):
        for j in range(y.shape[1]):
            y[i, j] = (x[i:i + h, j:j + w] * k).sum()
    return y


def corr2d_multi_in(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Several input channels (c, h, w) with a kernel per channel (c, kh, kw): the per-channel results summed."""
    return sum(corr2d(xc, kc) for xc, kc in zip(x, k))


def corr2d_multi_in_out(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Several output channels: kernel (o, c, kh, kw) gives one multi-input correlation per output channel."""
    return torch.stack([corr2d_multi_in(x, ko) for ko in k])


def pool2d(x: torch.Tensor, size: tuple[int, int], mode: str = "max") -> torch.Tensor:
    """2-D pooling of one channel with window `size`, stride 1 (D2L's definition); `max` or `avg`."""
    p_h, p_w = size
    y = torch.zeros(x.shape[0] - p_h + 1, x.shape[1] - p_w + 1, dtype=x.dtype)
    for i in range(y.shape[0]):
        for j in range(y.shape[1]):
            window = x[i:i + p_h, j:j + p_w]
            y[i, j] = window.max() if mode == "max" else window.mean()
    return y
