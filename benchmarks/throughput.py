"""Training throughput and model FLOPs utilisation (MFU) of cnnlab's training step, eager against torch.compile.

Each case trains on one synthetic batch already on the device (no data loading), with the engine's settings: bf16
autocast and channels_last on a GPU, SGD with Nesterov momentum through cnnlab's optimizer, cross-entropy with
label smoothing. After warm-up steps (which include compilation), N steps are timed between two
torch.cuda.synchronize() calls.

    MFU = images/s × 3 × forward MACs × 2 / peak bf16 FLOP/s

3× forward for forward + backward (the backward pass costs two forwards); MACs are counted by
cnnlab.models.count_macs (convolutions and matmuls). The peak comes from the table below, by GPU name; on the CPU
MFU is n/a. The reference here is the eager model: the compiled column shows what torch.compile buys.

    python benchmarks/throughput.py                         # on a GPU: batch 512, 50 timed steps
    python benchmarks/throughput.py --device cpu --quick    # CPU-sized: batch 16, 3 steps, eager only (< 1 min)

Target: ≥ 40 % MFU for ResNet-18 at 32×32 (compiled, bf16) on a GPU — printed, never enforced. The script exits 1 on a
wrong result: a loss that is not finite, or that does not fall over the repeated steps on its one batch.
"""

import argparse
import math
import sys
import time

import torch
import torch.nn.functional as F

from cnnlab import create_model
from cnnlab.config import TrainConfig
from cnnlab.models import count_macs
from cnnlab.optim import build_optimizer

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


def time_steps(model, x, y, optimizer, autocast, warmup, steps):
    """Seconds for `steps` training steps after `warmup` untimed ones; also the warm-up's seconds and every step's
    loss (kept on the device until the clock stops, so reading them costs no synchronisation inside it)."""
    losses = []

    def step():
        with autocast:
            out = model(x)
            loss = F.cross_entropy(out.float(), y, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())

    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    warm = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return time.perf_counter() - start, warm, [float(v) for v in losses]


def loss_problem(losses: list[float]) -> str | None:
    """What is wrong with the losses of repeated steps on one batch, or None: they must be finite and fall."""
    if not all(math.isfinite(v) for v in losses):
        return f"a loss is not finite: {losses}"
    if len(losses) > 1 and not losses[-1] < losses[0]:
        return f"the loss did not fall over {len(losses)} steps on one batch: {losses[0]:.4f} → {losses[-1]:.4f}"
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--quick", action="store_true", help="CPU-sized: batch 16, 1 warm-up and 3 timed steps")
    parser.add_argument("--batch-size", type=int, help="default 512 (16 with --quick)")
    parser.add_argument("--steps", type=int, help="timed steps (default 50, 3 with --quick)")
    parser.add_argument("--warmup", type=int, help="untimed steps first, compilation included (default 10, 1 quick)")
    parser.add_argument("--precision", choices=("bf16", "fp32"),
                        help="default: bf16 on a GPU, fp32 on the CPU (bf16 is emulated slowly on most CPUs)")
    parser.add_argument("--compile-cpu", action="store_true", help="also time torch.compile on the CPU (slow)")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune")
    parser.add_argument("--peak-tflops", type=float, help="peak FLOP/s of this device in TFLOP/s (overrides the table)")
    args = parser.parse_args()

    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    cuda = device.type == "cuda"
    batch = args.batch_size or (16 if args.quick else 512)
    steps = args.steps or (3 if args.quick else 50)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 10)
    precision = args.precision or ("bf16" if cuda else "fp32")
    modes = ["eager"] + (["compiled"] if cuda or args.compile_cpu else [])
    peak = peak_flops(device, args.peak_tflops)
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; {precision}; batch {batch}; {warmup} warm-up + {steps} "
          f"timed steps; peak {f'{peak / 1e12:.0f} TFLOP/s' if peak else 'unknown (MFU n/a)'}")
    if not cuda and not args.compile_cpu:
        print("compiled: skipped on the CPU (pass --compile-cpu)")
    print(f"{'model':<9} {'size':>4} {'GMACs':>6} {'mode':<9} {'img/s':>9} {'TFLOP/s':>8} {'MFU':>6} "
          f"{'warm-up s':>9} {'vs eager':>8}")

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    memory_format = torch.channels_last if cuda else torch.contiguous_format
    # lr 0.01, not 0.1: the speed is the same, and at 0.1 a fresh ResNet-18 on one batch of 16 diverges within four
    # steps, so the loss could not tell a step that trains from one that does not.
    config = TrainConfig(optimizer="sgd", lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    problems = []
    for model_name, size, classes, options in CASES:
        with torch.device("meta"):
            macs = count_macs(create_model(model_name, classes, image_size=size, **options), (3, size, size))
        torch.manual_seed(0)
        x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=memory_format)
        y = torch.randint(0, classes, (batch,), device=device)
        eager_ips = None
        for mode in modes:
            model = create_model(model_name, classes, image_size=size, **options)
            model = model.to(device, memory_format=memory_format).train()
            optimizer = build_optimizer(model, config)
            run = torch.compile(model, mode=args.compile_mode) if mode == "compiled" else model
            seconds, warm, losses = time_steps(run, x, y, optimizer, autocast, warmup, steps)
            ips = steps * batch / seconds
            eager_ips = eager_ips or ips
            flops = ips * 3 * macs * 2
            mfu = f"{flops / peak * 100:.1f}%" if peak else "n/a"
            print(f"{model_name:<9} {size:>4} {macs / 1e9:>6.2f} {mode:<9} {ips:>9.0f} {flops / 1e12:>8.2f} "
                  f"{mfu:>6} {warm:>9.1f} {ips / eager_ips:>7.2f}×  loss {losses[0]:.3f} → {losses[-1]:.3f}",
                  flush=True)
            problem = loss_problem(losses)
            if problem:
                problems.append(f"{model_name} {size}px {mode}: {problem}")
            del run, model, optimizer
            if cuda:
                torch.cuda.empty_cache()
    # The MFU target is a timing: printed, never failing. A step that does not train is a wrong result.
    if problems:
        print("WRONG RESULT:\n  " + "\n  ".join(problems), file=sys.stderr)
        sys.exit(1)
    print("results: every case trained (finite losses, falling on its batch); timings are reported, not enforced")


if __name__ == "__main__":
    main()
