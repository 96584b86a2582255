"""What speednet's 2×2 max-pool costs, as `F.max_pool2d` against a reshape and `amax` over the two 2-pixel axes.

On an H200 the graphed speedrun step (batch 1024) spends a quarter of its 4.5 ms in max-pool's forward and its
NHWC backward (BENCHMARKS.md, "On an H200"): the backward scatters through saved indices. A reshape + amax is a
plain reduction whose backward is an elementwise mask, so on a GPU it may be cheaper; on the CPU it was 7-30× slower
(a probe, 2026-12-04). Both give the same forward; at ties amax splits the gradient evenly where max_pool2d gives
it all to one input (ties are rare outside bf16's coarse grid).

Two measurements, each pair timed in alternating rounds (common.alternate), bf16 channels_last as the speedrun:
1. each pool's forward + backward on speednet's three pooled shapes at the batch given;
2. speednet's whole training step (`engine.step_function`: graphed where CUDA graphs are allowed) with each pool.

    python benchmarks/pool_cost.py                       # CUDA, batch 1024
    python benchmarks/pool_cost.py --device cpu --quick  # plumbing only (batch 32)

Prints `amax / max_pool2d: R` (time ratio, < 1 means amax is faster) per row. Exits 1 only on a wrong result: the
two pools' forwards differ, or a step's loss is not finite.
"""

import math

import torch
import torch.nn.functional as F

from cnnlab import create_model
from cnnlab.config import TrainConfig
from cnnlab.engine import step_function
from common import alternate, describe_device, exit_if_wrong, parser, pick_device


def amax_pool(x: torch.Tensor) -> torch.Tensor:
    """A 2×2, stride-2 max-pool as a view that splits H and W into pairs (any memory format) and a max over them; an
    odd last row or column is dropped, as max_pool2d drops it."""
    h, w = x.shape[2] // 2, x.shape[3] // 2
    return x[:, :, :2 * h, :2 * w].unflatten(3, (w, 2)).unflatten(2, (h, 2)).amax((3, 5))


class AmaxPool(torch.nn.Module):
    def forward(self, x):
        return amax_pool(x)


POOLS = {"max_pool2d": lambda x: F.max_pool2d(x, 2), "amax": amax_pool}


def pooled_shapes(batch: int) -> list[tuple]:
    """The shapes speednet's three groups pool at 32×32 input (its first convolution is unpadded: 31, 15, 7)."""
    shapes = []
    model = create_model("speednet", 10, image_size=32)
    for group in model.layers:
        group.pool.register_forward_pre_hook(lambda module, args: shapes.append((batch, *args[0].shape[1:])))
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    return shapes


def pool_rows(batch: int, device, rounds: int, steps: int, problems: list[str]) -> None:
    for shape in pooled_shapes(batch):
        x = torch.randn(shape, device=device, dtype=torch.bfloat16)
        x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
        out_shape = (*shape[:2], shape[2] // 2, shape[3] // 2)
        grad = torch.randn(out_shape, device=device, dtype=torch.bfloat16)
        grad = grad.contiguous(memory_format=torch.channels_last)
        if not torch.equal(POOLS["max_pool2d"](x), POOLS["amax"](x)):
            problems.append(f"the two pools differ at {tuple(x.shape)}")
        work = {name: (lambda f=f: torch.autograd.grad(f(x), x, grad)[0].sum()) for name, f in POOLS.items()}
        median, _, _ = alternate(work, batch, rounds, steps, device)
        ms = {name: 1000 / (rate / batch) for name, rate in median.items()}  # milliseconds per call
        print(f"pool forward+backward {str(tuple(x.shape)):<20} max_pool2d {ms['max_pool2d']:.3f} ms, amax "
              f"{ms['amax']:.3f} ms; amax / max_pool2d: {ms['amax'] / ms['max_pool2d']:.2f}", flush=True)


def step_row(batch: int, device, rounds: int, steps: int, problems: list[str]) -> None:
    config = TrainConfig(model="speednet", lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4,
                         label_smoothing=0.1, schedule="constant", device=device.type)
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    work = {}
    for name in POOLS:
        torch.manual_seed(0)
        model = create_model("speednet", 10, image_size=32).train()
        if name == "amax":
            for group in model.layers:
                group.pool = AmaxPool()
        step = step_function(config, model, device)
        work[name] = lambda step=step: step(x, y)
    median, _, losses = alternate(work, batch, rounds, steps, device)
    for name, values in losses.items():
        if not all(math.isfinite(v) for v in values):
            problems.append(f"speednet's step with {name} gave a loss that is not finite")
    ms = {name: 1000 / (rate / batch) for name, rate in median.items()}
    print(f"speednet training step, batch {batch}: max_pool2d {ms['max_pool2d']:.3f} ms, amax {ms['amax']:.3f} ms; "
          f"amax / max_pool2d: {ms['amax'] / ms['max_pool2d']:.2f}", flush=True)


def main():
    cli = parser(__doc__)
    cli.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    cli.add_argument("--quick", action="store_true", help="batch 32, few rounds: plumbing only")
    cli.add_argument("--batch", type=int, default=1024)
    args = cli.parse_args()
    device = pick_device(args.device)
    batch, rounds, steps = (32, 2, 2) if args.quick else (args.batch, 6, 20)
    print(describe_device(device))
    problems = []
    pool_rows(batch, device, rounds, steps, problems)
    step_row(batch, device, rounds, steps, problems)
    exit_if_wrong(problems)


if __name__ == "__main__":
    main()
