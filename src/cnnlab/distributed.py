"""torchrun / DistributedDataParallel glue: which process this is, sums across processes, rank 0 as the writer.

`torchrun --nproc_per_node=N -m cnnlab train …` sets RANK, WORLD_SIZE and LOCAL_RANK; without them everything here
is a no-op and cnnlab runs as one process. CUDA uses NCCL, the CPU gloo (which is how CI tests it).
"""

import datetime
import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str) -> Dist:
    """Join the process group torchrun describes (once); a single process returns Dist()."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        backend = "nccl" if device != "cpu" and torch.cuda.is_available() else "gloo"
        # A bounded timeout: a rank that died mid-collective ends the job instead of hanging it forever.
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=10))
    info = Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if backend_is_nccl():
        torch.cuda.set_device(info.local_rank)
    return info


def backend_is_nccl() -> bool:
    return dist.is_initialized() and dist.get_backend() == "nccl"


def all_sum(values: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum a tensor over all processes (in place); unchanged for one process."""
    if d.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def any_true(flag: bool, d: Dist, device) -> bool:
    """True on every process if it is true on any: keeps all ranks stopping at the same step."""
    if not d.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast(value, d: Dist):
    """Rank 0's value of a small Python object, on every process."""
    if not d.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value, d: Dist) -> list:
    """Every process's value of a small Python object, in rank order, on every process."""
    if not d.enabled:
        return [value]
    values = [None] * d.world_size
    dist.all_gather_object(values, value)
    return values


def gradient_sync(model, sync: bool):
    """A context for one backward pass: DDP averages the gradients over processes in every backward, but an
    optimizer step that adds up several batches (--accumulate, full-batch GD) needs it only in its last; inside
    `no_sync()` the others accumulate locally. Anything but a DDP model (one process) needs nothing."""
    ddp = getattr(model, "_orig_mod", model)  # torch.compile wraps the DDP module
    if sync or not isinstance(ddp, torch.nn.parallel.DistributedDataParallel):
        return nullcontext()
    return ddp.no_sync()


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
