"""The optimizers cnnlab knows, one row each: its flag's help, how it is built, the lr it takes when the user gives
none, and how the run log names it. Adding an optimizer is one row of OPTIMIZERS.

Torch-free and at the bottom with config.py, which reads the names and help for `--optimizer`: `cnnlab --help`
imports no torch. The builders import torch when they run, which is only inside a training run.
"""

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    help: str  # the phrase `--optimizer`'s help gives it
    # (parameter groups, config, extra keyword arguments such as fused=True) → a torch.optim.Optimizer
    build: Callable
    # The lr when the user gives none: None takes the model's recipe lr, scaled to the batch (recipes.py); a number
    # is taken at any batch size.
    default_lr: float | None
    # config → how the run log's "method:" line goes on after "minibatch SGD (…)"
    describe: Callable


def _sgd(groups, config, **extra):
    import torch  # here, not at the top: config.py reads this table and `cnnlab --help` must not import torch
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=bool(config.nesterov), **extra)


def _adamw(groups, config, **extra):
    import torch  # as in _sgd
    return torch.optim.AdamW(groups, lr=config.lr, **extra)


def _describe_sgd(config) -> str:
    if config.momentum:
        return f" with {'Nesterov ' if config.nesterov else ''}momentum {config.momentum} (--momentum 0: none)"
    return " without momentum"


# SGD: v = βv + (g + λw), W = W − αv (PyTorch semantics, dampening 0). AdamW: decoupled decay, its usual 1e-3.
OPTIMIZERS: dict[str, OptimizerSpec] = {s.name: s for s in [
    OptimizerSpec("sgd", "sgd (momentum v = βv + g, W -= αv)", _sgd, None, _describe_sgd),
    OptimizerSpec("adamw", "adamw", _adamw, 1e-3, lambda config: " with AdamW"),
]}
