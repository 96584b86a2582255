"""Everything a checkpoint restores, as one object with symmetric `state_dict()` / `load_state_dict()`.

A checkpoint is `TrainState.state_dict()` plus what describes the run (config, model options, classes,
normalisation; `Setup.describe()`), so saving and resuming cannot drift apart: they are the same two methods.

Its "model" is always the weights to evaluate, so `cnnlab eval`, `cnnlab predict` and the test pass load them
without knowing how they were made: with --ema-decay these are the averaged weights, and the weights the
optimizer steps travel as "raw_model" beside the average's state ("ema"), for resuming.
"""

from typing import TypedDict

import torch

from cnnlab.averaging import EMA, Lookahead
from cnnlab.early_stopping import EarlyStopping
from cnnlab.monitor import Monitor

# What a checkpoint must hold to be resumed (an eval-only or foreign file lacks some).
RESUME_KEYS = ("model", "optimizer", "scheduler", "rng", "epoch", "position")


class Position(TypedDict):
    """Where a run stopped inside an epoch (a plain dict in the checkpoint: weights_only loading reads it)."""

    epoch: int  # the epoch it stopped in
    batch: int  # the steps of it done
    order: torch.Tensor  # the epoch's shuffled order, on the CPU
    sums: dict  # the epoch's running sums (metrics.Sums.state())
    lr: float  # the lr the epoch started with: its metrics.csv row reports that one


class TrainState:
    """Model, optimizer, schedule, early stopping, Lookahead, the weights' EMA, the random streams (torch, CUDA,
    the training loader's), the completed epochs, the best epoch so far, and — when a run stopped inside an epoch —
    its `Position` there.
    `clip_grad_norm` (0: off) is the global gradient norm each optimizer step clips to. State only: the step
    that moves it is `engine.optimizer_step`."""

    def __init__(self, model, optimizer, scheduler, loader, monitor: Monitor,
                 early: EarlyStopping | None = None, lookahead: Lookahead | None = None,
                 scaler: torch.amp.GradScaler | None = None, ema: EMA | None = None, clip_grad_norm: float = 0.0):
        self.model, self.optimizer, self.scheduler, self.loader = model, optimizer, scheduler, loader
        self.monitor, self.early, self.lookahead, self.ema = monitor, early, lookahead, ema
        self.clip_grad_norm = clip_grad_norm
        self.scaler = scaler or torch.amp.GradScaler("cpu", enabled=False)  # fp16's loss scaling; off otherwise
        self.skipped_steps = 0  # optimizer steps fp16 loss scaling skipped (gradients overflowed), all epochs
        self._skipped = None  # this epoch's count, on the device until the epoch ends
        self.epoch = 0  # completed epochs
        self.best = {"metric": monitor.metric, "value": None, "epoch": None}
        self.position: Position | None = None

    def record(self, epoch: int, value: float | None) -> bool:
        """Note an epoch's monitored value; True when it is the best so far. Without a validation split
        (value None) every epoch counts as the best: the last weights are the ones kept."""
        improved = value is None or self.best["value"] is None or self.monitor.beats(value, self.best["value"])
        if improved:
            self.best = {"metric": self.monitor.metric, "value": value, "epoch": epoch}
        return improved

    @property
    def eval_model(self):
        """The weights validation and the test pass see: the EMA's when there is one, else the model's own."""
        return self.ema.module if self.ema else self.model

    def state_dict(self) -> dict:
        return {
            "model": self.eval_model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "raw_model": self.model.state_dict() if self.ema else None,
            "ema": self.ema.state_dict() if self.ema else None,
            "scheduler": self.scheduler.state_dict(),
            "early_stopping": self.early.state_dict() if self.early else None,
            "lookahead": self.lookahead.state_dict() if self.lookahead else None,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "skipped_steps": self.skipped_steps + self.skipped_this_epoch(),
            "rng": {"torch": torch.get_rng_state(), "loader": self.loader.state_dict(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "epoch": self.epoch, "best": self.best, "position": self.position,
        }

    def load_state_dict(self, state: dict) -> None:
        self.eval_model.load_state_dict(state["model"])
        if self.ema:
            self.model.load_state_dict(state["raw_model"])
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.early and state["early_stopping"]:
            self.early.load_state_dict(state["early_stopping"])
        if self.lookahead and state.get("lookahead"):
            self.lookahead.load_state_dict(state["lookahead"])
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.skipped_steps, self._skipped = state.get("skipped_steps", 0), None
        torch.set_rng_state(state["rng"]["torch"])
        loader_state = state["rng"]["loader"]  # older checkpoints stored the bare generator state
        self.loader.load_state_dict(loader_state if isinstance(loader_state, dict) else {"generator": loader_state})
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.epoch, self.best, self.position = state["epoch"], state["best"], state["position"]

    def add_skipped(self, skipped: torch.Tensor) -> None:
        """Count optimizer steps fp16 loss scaling skipped, as a device tensor (reading it would wait for the
        device every step); `skipped_this_epoch` reads it."""
        self._skipped = skipped if self._skipped is None else self._skipped + skipped

    def skipped_this_epoch(self) -> int:
        return int(self._skipped) if self._skipped is not None else 0

    def end_epoch(self) -> int:
        """Close the epoch's count of skipped steps; return it."""
        skipped = self.skipped_this_epoch()
        self.skipped_steps, self._skipped = self.skipped_steps + skipped, None
        return skipped
