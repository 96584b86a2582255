"""cnnlab's default training step on the CPU against plain fp32 PyTorch, model by model, in the same run.

cnnlab: `cnnlab.engine.step_function(TrainConfig(model=name, lr=LR, …), ...)` — the engine's own minibatch step with
its defaults: precision auto (for convolutional models bf16 autocast on a CPU that computes bf16 natively,
AVX512-BF16 or AMX; fp32 on one that does not, and for the MLP), channels_last memory for convolutional models
(the batch too, as the engine's loader hands it), SGD with momentum 0.9 through cnnlab's optimizer, cross-entropy. Reference: the same architecture with the same
initial weights (built by `create_model`, so only the step differs) in PyTorch's default memory format,
torch.optim.SGD with the same lr and momentum, F.cross_entropy, no autocast — the plain fp32 loop.

Both train on one synthetic 32×32 batch (no data loading). After warm-up steps, the two take turns for R rounds of
S steps, the order flipping every round, so load from other processes falls on both alike. speedup = cnnlab
images/s / reference images/s, each side's median round; `best rounds` gives each side's fastest round and their
ratio, the least disturbed measurement on a shared machine (load only ever adds time).

    python benchmarks/cpu.py            # batch 128, 2 warm-up steps, 9 rounds of 1 step (~2 min on 2 idle cores)
    python benchmarks/cpu.py --quick    # batch 32, 1 warm-up step, 5 rounds of 1 step (~30 s on 2 idle cores)

Target: resnet18 ≥ 2.5× on a CPU with native bf16, full form — printed, never enforced. The script exits 1 on a wrong result,
on either side: a loss that is not finite or does not fall over the repeated steps on the one batch, or first losses
of the two sides that disagree beyond bf16 rounding (same weights, same batch: they compute the same function).
"""

import copy
import os

import torch
import torch.nn.functional as F

from cnnlab import create_model
from cnnlab.config import TrainConfig
from cnnlab.engine import step_function
from cnnlab.hardware import resolve_precision, set_threads
from cnnlab.models import model_info
from common import alternate, describe_device, exit_if_wrong, input_format, loss_problem, parser

# (model, options): the CIFAR-10 forms, as cnnlab builds them for 32×32 images.
MODELS = [
    ("resnet18", {"stem": "cifar"}),
    ("vgg11_bn", {"head": "cifar"}),
    ("vgg11", {"head": "cifar"}),
    ("speednet", {}),
    ("mlp", {}),
]
TARGET = {"resnet18": 2.5}  # speedup targets: printed, never enforced
# Not the default 0.1: the speed is the same, and at 0.1 a fresh ResNet-18 jumps up before it falls on one batch, so
# a handful of steps could not tell a step that trains from one that does not.
# 0.01: VGG's He-initialised FC layers start its logits larger (first loss ~4), and at 0.05 one batch's loss rose.
LR = 0.01
# bf16 keeps 8 significant bits: the first losses of the two sides agree to a few % (vgg11_bn's larger logits: 7 %);
# a different function would not.
FIRST_LOSS_TOLERANCE = 0.1


def plain_step(model, x, y, lr, momentum):
    """The reference: the loop a PyTorch tutorial writes, in fp32."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)

    def step():
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()
    return step


def compare(name, options, batch, warmup, rounds, steps, device):
    """({side: median images/s}, {side: best round's images/s}, {side: losses}, cnnlab's precision and layout,
    problems) for one model, the sides being "cnnlab" and "reference"."""
    torch.manual_seed(0)
    model = create_model(name, 10, image_size=32, **options).train()
    reference = copy.deepcopy(model)  # before the engine moves the original to channels_last
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    # Exactly the plain step's method: no decay, constant lr (what the model's default recipe would add is not timed).
    config = TrainConfig(model=name, lr=LR, weight_decay=0.0, schedule="constant", label_smoothing=0.0)
    ours = step_function(config, model, device)
    x_ours = x.contiguous(memory_format=input_format(model))
    sides = {"cnnlab": lambda: ours(x_ours, y), "reference": plain_step(reference, x, y, config.lr, config.momentum)}
    warm = {label: [float(step()) for _ in range(warmup)] for label, step in sides.items()}
    median, best, losses = alternate(sides, batch, rounds, steps, device)
    problems = []
    for label in sides:
        losses[label] = warm[label] + losses[label]
        problem = loss_problem(losses[label])
        if problem:
            problems.append(f"{name} {label}: {problem}")
    first = losses["cnnlab"][0], losses["reference"][0]
    if not abs(first[0] - first[1]) <= FIRST_LOSS_TOLERANCE * abs(first[1]):
        problems.append(f"{name}: the first losses differ beyond bf16 rounding ({first[0]:.4f} vs {first[1]:.4f}) "
                        "though both sides start from the same weights on the same batch")
    # The engine's rule, as build.bare_setup applies it: `auto` gives convolutional models bf16 where it is native.
    precision = resolve_precision(config.precision, device, model_info(name).channels_last)
    layout = "NHWC" if input_format(model) == torch.channels_last else "NCHW"
    return median, best, losses, f"{precision.name} {layout}", problems


def main():
    cli = parser(__doc__)
    cli.add_argument("--quick", action="store_true", help="batch 32, 1 warm-up step, 5 rounds of 1 step")
    cli.add_argument("--batch-size", type=int, help="default 128 (32 with --quick)")
    cli.add_argument("--rounds", type=int, help="timed rounds per side (default 9, 5 with --quick)")
    cli.add_argument("--steps", type=int, help="steps per round (default 1)")
    cli.add_argument("--warmup", type=int, help="untimed steps per side first (default 2, 1 with --quick)")
    cli.add_argument("--threads", type=int, help="torch threads (default: as cnnlab train, every usable core)")
    cli.add_argument("--models", nargs="+", default=[name for name, _ in MODELS],
                     choices=[name for name, _ in MODELS])
    args = cli.parse_args()

    device = torch.device("cpu")
    batch = args.batch_size or (32 if args.quick else 128)
    rounds = args.rounds or (5 if args.quick else 9)
    steps = args.steps or 1
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    threads = set_threads(args.threads)  # what fit does before training
    conv = resolve_precision(TrainConfig().precision, device)
    print(describe_device(device))
    print(f"cnnlab: precision auto (convolutional models: {conv.name}, {conv.reason}), the memory format the engine "
          f"picks (NHWC: channels_last), {threads} threads; reference: fp32, PyTorch's default memory format, "
          f"{threads} threads")
    print(f"batch {batch} × 3×32²; {warmup} warm-up step(s) per side, then {rounds} alternating rounds of {steps} "
          "step(s); images/s and speedup: each side's median round; best rounds: each side's fastest (reference, "
          "cnnlab, ratio)")
    print(f"{'model':<9} {'cnnlab':<9} {'reference img/s':>15} {'cnnlab img/s':>13}  {'speedup':<12} "
          f"{'best rounds':>20}  loss cnnlab | reference")
    problems = []
    for name, options in MODELS:
        if name not in args.models:
            continue
        median, best, losses, how, wrong = compare(name, options, batch, warmup, rounds, steps, device)
        problems += wrong
        speedup = median["cnnlab"] / median["reference"]
        target = "" if name not in TARGET else \
            f"  (the ≥ {TARGET[name]:g} target is for the full form)" if args.quick else \
            f"  (target ≥ {TARGET[name]:g}: {'met' if speedup >= TARGET[name] else 'MISSED'})"
        print(f"{name:<9} {how:<9} {median['reference']:>15.1f} {median['cnnlab']:>13.1f}  speedup {speedup:<4.2f} "
              f"{best['reference']:>7.1f} {best['cnnlab']:>6.1f} {best['cnnlab'] / best['reference']:>5.2f}×  "
              f"{losses['cnnlab'][0]:.3f} → {losses['cnnlab'][-1]:.3f} | "
              f"{losses['reference'][0]:.3f} → {losses['reference'][-1]:.3f}{target}", flush=True)
    exit_if_wrong(problems)  # the speedups and the target are timings: printed, never failing
    print("results: every step trained (finite, falling losses; both sides start at the same loss); load average "
          f"at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
