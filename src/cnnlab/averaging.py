"""Weight averaging: Lookahead, which pulls the training weights to their average, and EMA, which keeps the
average beside them for evaluation.

Lookahead with a moving average as the slow weights (Zhang et al. 2019; the CIFAR speedruns' "EMA"):

Every EVERY optimizer steps from `start_step` on, the average moves toward the current weights and the weights are
set to the average. The average's decay rises with training progress p as (0.95^EVERY)·p³: early on the weights
barely look back, at the end they are averaged over the last few hundred steps. At each epoch's end the weights
are set to the average once more, so evaluation and checkpoints see the averaged model.
"""

from itertools import chain

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

EVERY = 5
DECAY_BASE = 0.95
DECAY_POWER = 3


class Lookahead:
    def __init__(self, model: nn.Module, start_step: int, total_steps: int):
        self.model, self.start_step, self.total_steps = model, start_step, max(1, total_steps)
        self.average: dict[str, torch.Tensor] | None = None

    def _weights(self) -> dict[str, torch.Tensor]:
        """Parameters and float buffers (batch-norm running statistics), not integer counters. keep_vars: the
        tensors themselves; a plain state_dict() dispatches a detach per tensor, every pull."""
        return {k: v for k, v in self.model.state_dict(keep_vars=True).items() if v.is_floating_point()}

    @torch.no_grad()
    def step(self, step: int) -> None:
        """Call after optimizer step number `step` (1-based, counted over the whole run)."""
        if step <= self.start_step or step % EVERY:  # steps after start_step: from the start epoch's first
            return
        weights = self._weights()
        if self.average is None:
            self.average = {k: v.detach().clone() for k, v in weights.items()}
            return
        decay = DECAY_BASE ** EVERY * min(1.0, step / self.total_steps) ** DECAY_POWER
        averages, current = list(self.average.values()), [weights[k] for k in self.average]
        torch._foreach_lerp_(averages, current, 1 - decay)  # one kernel per dtype, not two per tensor
        torch._foreach_copy_(current, averages)

    @torch.no_grad()
    def end_epoch(self) -> None:
        if self.average is not None:
            weights = self._weights()
            torch._foreach_copy_([weights[k] for k in self.average], list(self.average.values()))

    def state_dict(self) -> dict:
        return {"average": self.average}

    def load_state_dict(self, state: dict) -> None:
        if state["average"] is None:
            self.average = None
            return
        weights = self._weights()
        self.average = {k: v.to(weights[k].device) for k, v in state["average"].items()}


class EMA:
    """An exponential moving average of a model's weights and batch-norm statistics, kept beside the model (torch's
    AveragedModel with use_buffers=True) and moved after every optimizer step: average ← d·average + (1 − d)·weights.

    The decay warms up as d = min(decay, (1 + t) / (10 + t)) after t earlier updates (TensorFlow's
    ExponentialMovingAverage with num_updates). The average starts as the initial weights, and at a constant 0.999
    they would still weigh e^(−t/1000) in it after t steps: for the first thousands of steps validation would see
    mostly the random initialisation. Warmed up, the average follows the weights early (d = 0.5 at t = 8, 0.9 at
    80, 0.99 at 890) and averages over about 1/(1 − decay) steps once d reaches decay. Integer buffers (batch norm's
    step counters) are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.averaged = AveragedModel(model, use_buffers=True)  # a copy of the model; its counter stays on the CPU

    @property
    def module(self) -> nn.Module:
        """The averaged model: what validation, the test pass and the checkpoints' "model" use."""
        return self.averaged.module

    def decay_at(self, updates: int) -> float:
        return min(self.decay, (1 + updates) / (10 + updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average toward `model`'s current weights (the bare module, not its DDP or compiled wrapper)."""
        # Not AveragedModel.update_parameters: every call it reads its counter on the host (`n_averaged == 0`) and
        # copies it to the weights' device, which on a GPU waits for the queued steps to finish — a sync per step.
        # Its counter lives on the CPU here, so reading it costs nothing.
        averages, current, counters, counts = [], [], [], []
        pairs = zip(chain(self.module.parameters(), self.module.buffers()), chain(model.parameters(), model.buffers()))
        for mine, theirs in pairs:
            into = (averages, current) if mine.is_floating_point() else (counters, counts)
            into[0].append(mine)
            into[1].append(theirs.detach())
        get_ema_multi_avg_fn(self.decay_at(int(self.averaged.n_averaged)))(averages, current, None)
        if counters:
            torch._foreach_copy_(counters, counts)
        self.averaged.n_averaged += 1

    def state_dict(self) -> dict:
        """The update count; the averaged weights travel as the checkpoint's "model" (see TrainState)."""
        return {"n_averaged": int(self.averaged.n_averaged)}

    def load_state_dict(self, state: dict) -> None:
        self.averaged.n_averaged.fill_(state["n_averaged"])
