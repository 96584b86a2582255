"""Lookahead with a moving average as the slow weights (Zhang et al. 2019; the CIFAR speedruns' "EMA").

Every EVERY optimizer steps from `start_step` on, the average moves toward the current weights and the weights are
set to the average. The average's decay rises with training progress p as (0.95^EVERY)·p³: early on the weights
barely look back, at the end they are averaged over the last few hundred steps. At each epoch's end the weights
are set to the average once more, so evaluation and checkpoints see the averaged model.
"""

import torch
from torch import nn

EVERY = 5
DECAY_BASE = 0.95
DECAY_POWER = 3


class Lookahead:
    def __init__(self, model: nn.Module, start_step: int, total_steps: int):
        self.model, self.start_step, self.total_steps = model, start_step, max(1, total_steps)
        self.average: dict[str, torch.Tensor] | None = None

    def _weights(self) -> dict[str, torch.Tensor]:
        """Parameters and float buffers (batch-norm running statistics), not integer counters."""
        return {k: v for k, v in self.model.state_dict().items() if v.is_floating_point()}

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
