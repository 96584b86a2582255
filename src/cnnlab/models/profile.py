"""Parameter and multiply-accumulate counts."""

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers such as BN running stats excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on one example of shape (C, H, W) (or (D,) for flat input).

    Counted by PyTorch's FlopCounterMode: matmuls and convolutions, where one MAC is two FLOPs; element-wise work
    (ReLU, BN, pooling) is not counted, as in torchvision's tables. A model built under `torch.device("meta")` is
    counted without memory or arithmetic.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.empty((1, *input_shape), device=device))
    model.train(was_training)
    return counter.get_total_flops() // 2
