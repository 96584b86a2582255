"""Optimizers with weight-decay parameter groups, and learning-rate schedules as per-step multipliers."""

import math

import torch
from torch import nn

from cnnlab.config import TrainConfig
from cnnlab.finetune import classifier
from cnnlab.optimizers import OPTIMIZERS


def parameter_groups(model: nn.Module, weight_decay: float, decay_all: bool = False, lr: float = 0.1,
                     norm_lr_scale: float = 1.0) -> list[dict]:
    """Decay only weight matrices and conv kernels (tensors with ≥ 2 dims): the seed's λ/2‖w‖² penalises w, not b.

    Biases and batch-norm scales/shifts (1-dim) go to a group without decay unless decay_all. With
    norm_lr_scale s ≠ 1 the batch-norm parameters get a group of their own at lr·s and decay λ/s: their steps are
    s times larger while the decay per step (lr·λ) stays that of the other weights.
    """
    norm_ids = set()
    if norm_lr_scale != 1:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._NormBase):
                norm_ids.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay, norm = [], [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if id(p) in norm_ids:
            norm.append(p)
        else:
            (decay if decay_all or p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "lr": lr}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lr": lr})
    if norm:
        groups.append({"params": norm, "weight_decay": weight_decay / norm_lr_scale if decay_all else 0.0,
                       "lr": lr * norm_lr_scale})
    return groups


def scale_head_lr(groups: list[dict], head: nn.Module, mult: float) -> list[dict]:
    """Each group split in two: the classifier's parameters at lr × mult, the rest as they were."""
    if mult == 1:
        return groups
    ids = {id(p) for p in head.parameters()}
    split = []
    for g in groups:
        rest = [p for p in g["params"] if id(p) not in ids]
        mine = [p for p in g["params"] if id(p) in ids]
        split += ([{**g, "params": rest}] if rest else []) + ([{**g, "params": mine, "lr": g["lr"] * mult}]
                                                             if mine else [])
    return split


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """config.optimizer's row of OPTIMIZERS, built on the weight-decay groups (and the head's lr multiplier)."""
    groups = parameter_groups(model, config.weight_decay, config.decay_all, config.lr, config.norm_lr_scale)
    if config.head_lr_mult != 1:
        groups = scale_head_lr(groups, classifier(model)[1], config.head_lr_mult)
    # One fused kernel updates every parameter of a group instead of several operators per tensor (PyTorch's
    # default off CUDA is a loop over tensors): on a GPU fewer launches, on the CPU fewer passes over the weights.
    fused = {"fused": True} if all(p.device.type in ("cuda", "cpu") for p in model.parameters()) else {}
    return OPTIMIZERS[config.optimizer].build(groups, config, **fused)


def lr_multiplier(config: TrainConfig, steps_per_epoch: int):
    """step → factor on the base lr. Warm-up is linear from 1/warmup_steps to 1; schedules then run per step."""
    total = config.epochs * steps_per_epoch
    warmup = round(config.warmup_epochs * steps_per_epoch)
    if config.schedule == "triangular" and warmup == 0:
        warmup = max(1, round(0.3 * total))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.schedule == "constant":
            return 1.0
        if config.schedule == "step":
            epoch = step // steps_per_epoch
            return config.gamma ** sum(epoch >= m for m in config.milestones)
        progress = (step - warmup) / max(1, total - warmup)
        if config.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return max(0.0, 1 - progress)  # triangular: linear decay to zero after the warm-up peak

    return factor


def build_scheduler(optimizer, config: TrainConfig, steps_per_epoch: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(config, steps_per_epoch))
