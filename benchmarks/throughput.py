"""Training throughput and model FLOPs utilisation (MFU) of cnnlab's training step: eager, torch.compile, CUDA graph.

Each case times the engine's own minibatch step (`cnnlab.engine.step_function`: optimizer groups, autocast at
cnnlab's default precision — bf16 on a GPU and on a CPU that computes bf16 natively —, channels_last, label
smoothing, torch.compile for the compiled column, the step captured as a CUDA graph and replayed for the graphed
one), on one synthetic batch already on the device in the memory format
the engine's loader would hand it (no data loading). After warm-up steps (which include compilation), N steps are
timed between two synchronisations.

    MFU = images/s × 3 × forward MACs × 2 / peak bf16 FLOP/s

3× forward for forward + backward (the backward pass costs two forwards); MACs are counted by
cnnlab.models.count_macs (convolutions and matmuls). The peak comes from the table below, by GPU name; on the CPU
MFU is n/a. The reference here is the eager model: the compiled and graphed columns show what torch.compile and
CUDA graphs buy, and `--modes …,compiled-graphed` (CUDA) what both together do: torch.compile's reduce-overhead
mode fuses batch norm with its neighbours (the memory-bound part of ResNet-18's graphed step) and replays CUDA
graphs of its own (the CPU's
fast path against plain fp32 PyTorch is benchmarks/cpu.py).

    python benchmarks/throughput.py                         # on a GPU: batch 512, 50 timed steps
    python benchmarks/throughput.py --device cpu --quick    # CPU-sized: batch 16, 3 steps, eager only (< 1 min)

Target: ≥ 40 % MFU for ResNet-18 at 32×32 (compiled, bf16) on a GPU — printed, never enforced. The script exits 1 on a
wrong result: a loss that is not finite, or that does not fall over the repeated steps on its one batch.
"""

import time
from dataclasses import replace

import torch

from cnnlab import create_model
from cnnlab.config import TrainConfig
from cnnlab.engine import step_function
from cnnlab.hardware import resolve_precision, set_deterministic
from cnnlab.models import count_macs
from common import describe_device, exit_if_wrong, input_format, loss_problem, parser, pick_device, sync

# (model, image size, classes, options): CIFAR-10 at 32×32, Tiny ImageNet at 64×64 (cnnlab picks the CIFAR stem
# and head for images ≤ 64 px).
CASES = [
    ("resnet18", 32, 10, {"stem": "cifar"}),
    ("vgg11_bn", 32, 10, {"head": "cifar"}),
    ("resnet18", 64, 200, {"stem": "cifar"}),
    ("speednet", 32, 10, {}),  # the speedrun preset's network
]

# Dense (no 2:4 sparsity) bf16 tensor-core peaks, FLOP/s. NVIDIA's datasheets print the sparse figure with a
# footnote "shown with sparsity; specifications are one-half lower without sparsity": H100 SXM 1,979 → 989 T,
# H100 PCIe 1,513 → 756 T, H100 NVL 1,671 → 835 T (NVIDIA H100 Tensor Core GPU datasheet); H200 SXM 1,979 → 989 T,
# H200 NVL 1,671 → 835 T (NVIDIA H200 datasheet); A100 312 T dense (NVIDIA A100 datasheet). The H200 is the H100's
# GH100 chip with HBM3e, hence the same peak. First match wins, so the specific names come first.
PEAK_BF16 = [
    ("H200 NVL", 835e12),
    ("H200", 989e12),
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # "NVIDIA H100 80GB HBM3" is the SXM part
    ("A100", 312e12),
]


def peak_flops(device: torch.device, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16 if key in name), None)


def time_steps(step, x, y, warmup, steps):
    """Seconds for `steps` calls of `step(x, y)` after `warmup` untimed ones; also the warm-up's seconds and every
    step's loss (kept on the device until the clock stops, so reading them costs no synchronisation inside it)."""
    losses = []
    start = time.perf_counter()
    for _ in range(warmup):
        losses.append(step(x, y))
    sync(x.device)
    warm = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        losses.append(step(x, y))
    sync(x.device)
    return time.perf_counter() - start, warm, [float(v) for v in losses]


def main():
    cli = parser(__doc__)
    cli.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    cli.add_argument("--quick", action="store_true", help="CPU-sized: batch 16, 1 warm-up and 3 timed steps")
    cli.add_argument("--batch-size", type=int, help="default 512 (16 with --quick)")
    cli.add_argument("--steps", type=int, help="timed steps (default 50, 3 with --quick)")
    cli.add_argument("--warmup", type=int, help="untimed steps first, compilation included (default 10, 1 quick)")
    cli.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                     help="the engine's --precision (default auto: bf16 where the GPU or CPU computes it natively)")
    cli.add_argument("--compile-cpu", action="store_true", help="also time torch.compile on the CPU (slow)")
    cli.add_argument("--modes", help="comma-separated, of eager, compiled (CUDA or --compile-cpu), graphed (CUDA), "
                                     "compiled-graphed (CUDA: torch.compile's reduce-overhead mode, which fuses "
                                     "batch norm and ReLU and captures its own CUDA graphs): which to time (default: "
                                     "all this device has but compiled-graphed)")
    cli.add_argument("--peak-tflops", type=float, help="peak FLOP/s of this device in TFLOP/s (overrides the table)")
    args = cli.parse_args()

    device = pick_device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch_size or (16 if args.quick else 512)
    steps = args.steps or (3 if args.quick else 50)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 10)
    modes = ["eager"] + (["compiled"] if cuda or args.compile_cpu else []) + (["graphed"] if cuda else [])
    if args.modes:
        modes = [m for m in args.modes.split(",") if m in modes + (["compiled-graphed"] if cuda else [])]
    peak = peak_flops(device, args.peak_tflops)
    # lr 0.01, not 0.1: the speed is the same, and at 0.1 a fresh ResNet-18 on one batch of 16 diverges within four
    # steps, so the loss could not tell a step that trains from one that does not.
    config = TrainConfig(optimizer="sgd", lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4,
                         label_smoothing=0.1, schedule="constant", precision=args.precision)
    set_deterministic(config.deterministic, config.autotune)  # as fit does
    precision = resolve_precision(config.precision, device)
    print(f"{describe_device(device)}; precision {precision.name} ({precision.reason}); batch {batch}; {warmup} "
          f"warm-up + {steps} timed steps; peak {f'{peak / 1e12:.0f} TFLOP/s' if peak else 'unknown (MFU n/a)'}")
    if not cuda and not args.compile_cpu:
        print("compiled: skipped on the CPU (pass --compile-cpu)")
    print(f"{'model':<9} {'size':>4} {'GMACs':>6} {'mode':<16} {'img/s':>9} {'TFLOP/s':>8} {'MFU':>6} "
          f"{'warm-up s':>9} {'vs eager':>8}")

    problems = []
    for model_name, size, classes, options in CASES:
        with torch.device("meta"):
            macs = count_macs(create_model(model_name, classes, image_size=size, **options), (3, size, size))
        torch.manual_seed(0)
        x = torch.randn(batch, 3, size, size, device=device)
        y = torch.randint(0, classes, (batch,), device=device)
        eager_ips = None
        for mode in modes:
            model = create_model(model_name, classes, image_size=size, **options).train()
            compiled = mode.startswith("compiled")
            step = step_function(replace(config, model=model_name, compile=compiled,
                                         compile_mode="reduce-overhead" if mode == "compiled-graphed" else "default",
                                         cuda_graphs="on" if mode == "graphed" else "off"), model, device)
            seconds, warm, losses = time_steps(step, x.contiguous(memory_format=input_format(model)), y, warmup,
                                               steps)
            ips = steps * batch / seconds
            eager_ips = eager_ips or ips
            flops = ips * 3 * macs * 2
            mfu = f"{flops / peak * 100:.1f}%" if peak else "n/a"
            print(f"{model_name:<9} {size:>4} {macs / 1e9:>6.2f} {mode:<16} {ips:>9.0f} {flops / 1e12:>8.2f} "
                  f"{mfu:>6} {warm:>9.1f} {ips / eager_ips:>7.2f}×  loss {losses[0]:.3f} → {losses[-1]:.3f}",
                  flush=True)
            problem = loss_problem(losses)
            if problem:
                problems.append(f"{model_name} {size}px {mode}: {problem}")
            del step, model
            if cuda:
                torch.cuda.empty_cache()
    # The MFU target is a timing: printed, never failing. A step that does not train is a wrong result.
    exit_if_wrong(problems)
    print("results: every case trained (finite losses, falling on its batch); timings are reported, not enforced")


if __name__ == "__main__":
    main()
