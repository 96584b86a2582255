"""Where a training step's time goes: step time against batch size, and a profiler's view of 20 steps (issue 26).

Two measurements of the engine's own minibatch step (`cnnlab.engine.step_function`, as throughput.py times it: one
synthetic batch on the device, cnnlab's default precision and memory format, no data loading):

  batch sweep  ms per step at each batch size, and a least-squares line t = fixed + per_image × batch through
               them: the fixed part is what a step costs however small its batch (launches, Python, dispatch),
               the slope what the arithmetic and memory traffic of one more image cost
  profile      20 steps under torch.profiler at one batch size: wall ms per step; host ms per step (how long the
               step's calls take to return: Python and dispatch, the GPU running behind); kernel ms per step (the
               union of the device's kernel intervals) and so the share of the wall time the GPU was busy; kernels
               per step; the idle gaps between kernels longer than 20 µs, and the kernels that took the most time

    python benchmarks/step_profile.py                        # GPU: speednet and resnet18 at 32², batch 256-2048
    python benchmarks/step_profile.py --device cpu --quick   # CPU-sized: batch 8-32, a few steps (< 1 min)

Nothing here is a target: it explains the MFU and speedrun figures (throughput.py, speedrun.py). The script exits 1
on a wrong result only: a loss that is not finite or does not fall over the steps on its batch.
"""

import time
from dataclasses import replace

import torch
from torch.profiler import ProfilerActivity, profile

from cnnlab import create_model
from cnnlab.config import TrainConfig
from cnnlab.engine import step_function
from cnnlab.hardware import resolve_precision, set_deterministic
from common import describe_device, exit_if_wrong, input_format, loss_problem, parser, pick_device, sync

CASES = [("speednet", {}), ("resnet18", {"stem": "cifar"})]  # CIFAR-10 at 32×32, as the speedrun and seed train
SIZE, CLASSES = 32, 10
WARMUP = 5  # untimed steps for each shape: more than a CUDA graph's eager steps before its capture (graphs.py)
GAP_US = 20  # a gap between kernels longer than this is the GPU waiting, not the next launch's latency


def make_step(model_name: str, options: dict, config: TrainConfig, device: torch.device):
    model = create_model(model_name, CLASSES, image_size=SIZE, **options).train()
    return step_function(replace(config, model=model_name), model, device), input_format(model)


def batch_of(batch: int, device: torch.device, memory_format) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, SIZE, SIZE, generator=generator).to(device, memory_format=memory_format)
    return x, torch.randint(0, CLASSES, (batch,), generator=generator).to(device)


def timed(step, x, y, steps: int) -> tuple[float, float, list]:
    """(wall seconds per step, host seconds per step: until the last call returned, losses) over `steps` calls."""
    sync(x.device)
    start = time.perf_counter()
    losses = [step(x, y) for _ in range(steps)]
    host = time.perf_counter() - start
    sync(x.device)
    return (time.perf_counter() - start) / steps, host / steps, losses


def line_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares y = a + b·x: (a, b)."""
    n, mx, my = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if n > 1 and sxx else 0.0
    return my - b * mx, b


def kernel_summary(prof, steps: int) -> dict | None:
    """Busy time, kernel count and idle gaps per step from the device kernels a profile recorded (None: no device
    kernels, as on the CPU)."""
    kernels = sorted((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                     if e.device_type == torch.autograd.DeviceType.CUDA)
    if not kernels:
        return None
    busy, gaps, end = 0.0, [], kernels[0][0]
    for start, stop, _ in kernels:
        if start > end:
            if start - end > GAP_US:
                gaps.append(start - end)
            busy += stop - start
        else:
            busy += max(0.0, stop - end)
        end = max(end, stop)
    totals: dict[str, float] = {}
    for start, stop, name in kernels:
        totals[name] = totals.get(name, 0.0) + stop - start
    top = sorted(totals.items(), key=lambda kv: -kv[1])[:6]
    return {"busy_ms": busy / 1e3 / steps, "kernels": len(kernels) / steps, "gaps": len(gaps) / steps,
            "gap_ms": sum(gaps) / 1e3 / steps, "top": [(name, us / 1e3 / steps) for name, us in top]}


def main():
    cli = parser(__doc__)
    cli.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    cli.add_argument("--quick", action="store_true", help="CPU-sized: batches 8, 16, 32 and a few steps")
    cli.add_argument("--batch-sizes", help="comma-separated (default 256,512,1024,2048; 8,16,32 with --quick)")
    cli.add_argument("--profile-batch", type=int, help="the profiled batch (default 1024 speednet, 512 resnet18)")
    cli.add_argument("--steps", type=int, help="timed steps per batch size (default 30, 3 with --quick)")
    cli.add_argument("--models", default="speednet,resnet18", help="comma-separated, from speednet and resnet18")
    cli.add_argument("--autotune", action="store_true", help="let cuDNN time its convolution algorithms per shape")
    cli.add_argument("--cuda-graphs", choices=("off", "on"), default="off",
                     help="on: the step captured as a CUDA graph and replayed (CUDA only; default off: eager)")
    args = cli.parse_args()

    device = pick_device(args.device)
    batches = [int(b) for b in (args.batch_sizes or ("8,16,32" if args.quick else "256,512,1024,2048")).split(",")]
    steps = args.steps or (3 if args.quick else 30)
    profiled_steps = 3 if args.quick else 20
    # The speedrun's step settings (Nesterov, label smoothing, weight decay); lr 0.01 so a step on one batch trains
    # without diverging, whatever the batch size.
    config = TrainConfig(optimizer="sgd", lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4,
                         cuda_graphs=args.cuda_graphs, autotune=args.autotune,
                         label_smoothing=0.1, schedule="constant")
    set_deterministic(config.deterministic, config.autotune)
    precision = resolve_precision(config.precision, device)
    graphed = args.cuda_graphs == "on" and device.type == "cuda"
    print(f"{describe_device(device)}; precision {precision.name}; {'CUDA graph' if graphed else 'eager'} step; "
          f"cuDNN autotuning {'on' if config.autotune else 'off'}; "
          f"{steps} timed steps per batch after {WARMUP} warm-up")

    problems = []
    for model_name, options in (c for c in CASES if c[0] in args.models.split(",")):
        walls = []
        for batch in batches:
            # a fresh model per batch, so each loss check starts from an untrained network
            step, memory_format = make_step(model_name, options, config, device)
            x, y = batch_of(batch, device, memory_format)
            # warm-up: cuDNN's algorithm choice for this shape, the allocator, a graph's eager steps and its capture
            *_, warm_losses = timed(step, x, y, WARMUP)
            wall, host, losses = timed(step, x, y, steps)
            walls.append(wall * 1e3)
            print(f"{model_name:<9} batch {batch:>5}: {wall * 1e3:8.2f} ms/step, host {host * 1e3:7.2f} ms/step, "
                  f"{batch / wall:9.0f} img/s", flush=True)
            problem = loss_problem([float(v) for v in warm_losses + losses])
            if problem:
                problems.append(f"{model_name} batch {batch}: {problem}")
        fixed, per_image = line_fit(batches, walls)
        middle = batches[len(batches) // 2]
        print(f"{model_name:<9} fit: {fixed:.2f} ms fixed + {per_image * 1e3:.2f} µs per image; at batch {middle} "
              f"the fixed part is {fixed / (fixed + per_image * middle):.0%} of the step")

        batch = args.profile_batch or (batches[-1] if args.quick else {"speednet": 1024}.get(model_name, 512))
        step, memory_format = make_step(model_name, options, config, device)  # a graph is for one batch shape
        x, y = batch_of(batch, device, memory_format)
        timed(step, x, y, WARMUP)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            wall, host, losses = timed(step, x, y, profiled_steps)
        print(f"{model_name:<9} profile, batch {batch}, {profiled_steps} steps: wall {wall * 1e3:.2f} ms/step, host "
              f"{host * 1e3:.2f} ms/step (under the profiler, which slows the host side)")
        summary = kernel_summary(prof, profiled_steps)
        if summary is None:
            print(f"{model_name:<9} no device kernels recorded ({device.type}): the host's time is the step's time")
        else:
            print(f"{model_name:<9} kernels {summary['busy_ms']:.2f} ms/step busy (GPU busy "
                  f"{summary['busy_ms'] / (wall * 1e3):.0%} of the wall time), {summary['kernels']:.0f} kernels/step, "
                  f"{summary['gaps']:.1f} gaps > {GAP_US} µs/step totalling {summary['gap_ms']:.2f} ms")
            for name, ms in summary["top"]:
                print(f"    {ms:7.3f} ms/step  {name[:100]}")
        del step
        if device.type == "cuda":
            torch.cuda.empty_cache()
    exit_if_wrong(problems)
    print("results: every case trained (finite losses, falling on its batch); timings are reported, not enforced")


if __name__ == "__main__":
    main()
