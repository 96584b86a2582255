"""CUDA graphs for the training step: forward, backward and the optimizer step of one batch captured once and
replayed, so a step costs one launch instead of hundreds of small ones (issue 26: on an H100 the speedrun's step
was bound by launching its ~200 operators, not by the GPU's arithmetic).

A graph replays the same kernels on the same memory, so it is safe only where every step is the same work:
one CUDA process, every batch the same shape (--static-shapes), one batch per optimizer step, no host-side decision
inside the step (fp16 loss scaling skips steps, clipping reads the norm) and an optimizer whose step reads its
learning rate from the device (SGD's fused kernel takes the lr as a tensor; the schedule fills it before each
replay). `refusal` names the first reason a run is not safe; `--cuda-graphs auto` then trains eagerly and the log
says why. The schedule, Lookahead and the weights' EMA stay outside the graph: they run after each replay, eagerly,
on the weights the graph updates in place.
"""

import torch

from cnnlab.errors import CnnlabError

WARMUP_STEPS = 3  # eager steps before the capture: the optimizer creates its momentum buffers, cuDNN its plans


def refusal(config, device: torch.device, world_size: int, loader, precision_name: str) -> str | None:
    """Why this run's step cannot be captured as a CUDA graph, or None when it can."""
    if device.type != "cuda":
        return f"a {device.type} run (CUDA graphs are CUDA's)"
    if config.compile:
        return "torch.compile makes its own (its mode reduce-overhead captures CUDA graphs)"
    if world_size > 1:
        return "under torchrun DDP's gradient all-reduce runs from hooks outside a captured step"
    if not config.static_shapes or not loader.drop_last:
        return "batches change shape (--static-shapes keeps every batch one shape)"
    if loader.batches_per_step != 1:
        return "several batches make one optimizer step (--accumulate)"
    if precision_name == "fp16":
        return "fp16 loss scaling decides on the host whether each step is taken"
    if config.clip_grad_norm:
        return "gradient clipping (--clip-grad-norm)"
    if config.optimizer != "sgd":
        return f"{config.optimizer} (only SGD's fused step reads its learning rate from the device here)"
    return None


def decide(config, device: torch.device, world_size: int, loader, precision_name: str) -> str | None:
    """`refusal` under the user's --cuda-graphs: None to capture, else why not ("--cuda-graphs off" when asked so);
    `on` where the step cannot be captured is one CnnlabError line."""
    if config.cuda_graphs == "off":
        return "--cuda-graphs off"
    why = refusal(config, device, world_size, loader, precision_name)
    if why is not None and config.cuda_graphs == "on":
        raise CnnlabError(f"--cuda-graphs on cannot capture this run's step: {why}; use --cuda-graphs auto or off")
    return why


class GraphedStep:
    """`step(x, y) -> (loss, logits)`: one whole optimizer step (zeroed gradients, forward, backward, the optimizer's
    update) of the batch x, y — eager for the first WARMUP_STEPS calls, then captured once and replayed.

    What it returns after the capture lives in the graph's memory: the next call overwrites it, so the caller reads
    it (queues work that reads it) before stepping again, as the training loop's sums do.
    """

    def __init__(self, model, optimizer, criterion, autocast_dtype: torch.dtype | None, say=None,
                 must: bool = False):
        """`say(line)` reports a capture that failed (the steps then stay eager); with `must` (--cuda-graphs on)
        such a failure is one CnnlabError line instead."""
        # Only the fused kernel takes the lr as a device tensor; the foreach step would read it on the host.
        if not all(group.get("fused") for group in optimizer.param_groups):
            raise ValueError("GraphedStep needs an optimizer built with fused=True")
        self.model, self.optimizer, self.criterion = model, optimizer, criterion
        self.say, self.must = say or (lambda line: None), must
        # The autocast cache keeps the weights' bf16 copies between operators of one region; inside a capture those
        # copies would be freed at the region's end while the graph still points at them.
        self.autocast = torch.autocast("cuda", dtype=autocast_dtype or torch.bfloat16,
                                       enabled=autocast_dtype is not None, cache_enabled=False)
        self.eager_steps, self.replays = 0, 0
        self.graph = None
        self.side = None
        self.failed: str | None = None  # why the capture failed, if it did: every step is eager then

    @property
    def graphed(self) -> bool:
        """Whether the steps are being replayed (False before the capture and after a failed one)."""
        return self.graph is not None

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        if self.failed or (self.graph is None and self.eager_steps < WARMUP_STEPS):
            self.eager_steps += 1
            return self._eager(x, y)
        if self.graph is None:
            try:
                self._capture(x, y)
            except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
                return self._fall_back(e, x, y)
        else:
            for new, static in ((x, self.x), (y, self.y)):
                # copy_ would broadcast a smaller batch or convert a dtype without a word: the graph is for one
                if new.shape != static.shape or new.dtype != static.dtype:
                    raise CnnlabError(f"a batch of shape {tuple(new.shape)} ({new.dtype}) reached a step captured "
                                      f"for {tuple(static.shape)} ({static.dtype}); use --cuda-graphs off")
            self.x.copy_(x, non_blocking=True)
            self.y.copy_(y, non_blocking=True)
        for lr, group in zip(self.lrs, self.optimizer.param_groups):
            lr.fill_(group["lr"])  # the schedule's lr for this step: a fill kernel, no wait for the device
        self.graph.replay()
        self.replays += 1
        return self.loss, self.out

    def _fall_back(self, error: Exception, x, y):
        """A capture that failed (an operator that reads the device on the host, memory): say so and go on eagerly
        from this batch, or under --cuda-graphs on stop with one line."""
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        self.graph, self.failed = None, first
        self.optimizer.zero_grad(set_to_none=True)  # nothing of the recording is kept
        torch.cuda.synchronize()
        if self.must:
            raise CnnlabError(f"--cuda-graphs on: capturing the step failed ({first}); use --cuda-graphs auto or "
                              "off") from None
        self.say(f"CUDA graphs: capturing the step failed ({first}); training on eagerly")
        return self._eager(x, y)

    def _forward_backward(self, x, y):
        with self.autocast:  # as engine.forward_backward: the loss in float32, the logits in the model's dtype
            out = self.model(x)
            loss = self.criterion(out.float(), y)
        loss.backward()
        return loss.detach(), out.detach()

    def _eager(self, x, y):
        # On a side stream, as PyTorch's whole-network capture recipe warms up: the backward pass's gradient
        # accumulation then runs on the stream the capture will use. Each side ↔ current wait keeps the caching
        # allocator from handing either stream memory the other still reads.
        self.side = self.side or torch.cuda.Stream()
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):
            self.optimizer.zero_grad(set_to_none=True)
            loss, out = self._forward_backward(x, y)
            self.optimizer.step()
        torch.cuda.current_stream().wait_stream(self.side)
        return loss, out

    def _capture(self, x, y):
        """Record one step into the graph (recording runs nothing: the replay that follows is this batch's step).

        The gradients are set to None first, so the captured backward pass writes them afresh in the graph's memory
        instead of adding to the last eager step's; the optimizer sees its lr as a device tensor for the capture
        only and keeps its plain numbers for everything else (checkpoints, metrics.csv, the log)."""
        self.x = x.clone(memory_format=torch.preserve_format)
        self.y = y.clone()
        groups = self.optimizer.param_groups
        self.lrs = [torch.tensor(float(g["lr"]), device=x.device) for g in groups]
        plain = [g["lr"] for g in groups]
        self.optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            for group, lr in zip(groups, self.lrs):
                group["lr"] = lr
            # thread_local: a pinned-memory thread of a streamed loader may allocate while this thread captures
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.loss, self.out = self._forward_backward(self.x, self.y)
                self.optimizer.step()
            self.graph = graph
        finally:
            for group, lr in zip(groups, plain):
                group["lr"] = lr
