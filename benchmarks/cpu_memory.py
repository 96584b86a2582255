"""cnnlab's CPU training step with freed memory kept for reuse against glibc's default, model by model, same run.

A CPU run of cnnlab calls `cnnlab.hardware.reuse_freed_memory()` (glibc's mallopt: freed blocks up to 1 GiB stay in
the process for the next allocation). glibc's default returns blocks of 128 KB-32 MB and more to the kernel when
they are freed, so a training step, which allocates the same activations every step, page-faults them in again
and the kernel zeroes every page. The setting is process-wide, so each side runs in its own process: the engine's
minibatch step (`cnnlab.engine.step_function`, cnnlab's default precision and channels_last, one synthetic batch,
no data loading), the same seed and weights; `CNNLAB_REUSE_MEMORY=0` makes the reference process leave glibc as it
is. The two sides take turns for R rounds, the order flipping every round. Printed per model: images/s of each side
(median round), the ratio, and the minor page faults per step of each.

    python benchmarks/cpu_memory.py            # batch 128, 2 warm-up + 4 timed steps, 3 rounds (~5 min on 2 cores)
    python benchmarks/cpu_memory.py --quick    # batch 32, ResNet-18 at 32² and 64² only, 2 rounds (~1 min)

No target: it measures what the setting buys. The script exits 1 on a wrong result: a loss that is not finite or
does not fall over the steps on the one batch, or first losses of the two sides that differ (the same seed, weights
and kernels compute the same numbers wherever the memory comes from).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from cnnlab import create_model
from cnnlab.config import TrainConfig
from cnnlab.engine import step_function
from cnnlab.hardware import resolve_precision, reuse_freed_memory, set_deterministic
from common import describe_device, exit_if_wrong, input_format, loss_problem, parser

# (model, image size, classes, options): CIFAR-10 at 32², Tiny ImageNet at 64², as cnnlab builds them.
CASES = [
    ("resnet18", 32, 10, {"stem": "cifar"}),
    ("resnet18", 64, 200, {"stem": "cifar"}),
    ("vgg11_bn", 32, 10, {"head": "cifar"}),
    ("speednet", 32, 10, {}),
]
QUICK_CASES = CASES[:2]


def child(case: int, batch: int, warmup: int, steps: int) -> None:
    """One side: build the step, time it, print {"done", "ips", "faults", "losses"} as JSON."""
    done = reuse_freed_memory()
    name, size, classes, options = CASES[case]
    config = TrainConfig(model=name, optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4,
                         schedule="constant")
    set_deterministic(config.deterministic, config.autotune)
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = create_model(name, classes, image_size=size, **options).train()
    step = step_function(config, model, device)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=input_format(model))
    y = torch.randint(0, classes, (batch,))
    losses = [float(step(x, y)) for _ in range(warmup)]
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    losses += [float(step(x, y)) for _ in range(steps)]
    seconds = time.perf_counter() - start
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    print(json.dumps({"done": done, "ips": steps * batch / seconds, "faults": faults / steps, "losses": losses}))


def side(case: int, reuse: bool, batch: int, warmup: int, steps: int) -> dict:
    env = os.environ | {"CNNLAB_REUSE_MEMORY": "1" if reuse else "0"}
    out = subprocess.run([sys.executable, __file__, "--child", str(case), "--batch-size", str(batch), "--warmup",
                          str(warmup), "--steps", str(steps)], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    cli = parser(__doc__)
    cli.add_argument("--quick", action="store_true", help="batch 32, ResNet-18 only, 2 rounds")
    cli.add_argument("--batch-size", type=int, help="default 128 (32 with --quick)")
    cli.add_argument("--steps", type=int, help="timed steps per round (default 4, 2 with --quick)")
    cli.add_argument("--warmup", type=int, default=2, help="untimed steps first (oneDNN's weight reorders)")
    cli.add_argument("--rounds", type=int, help="default 3 (2 with --quick)")
    cli.add_argument("--child", type=int, help=argparse.SUPPRESS)  # one side, in its own process
    args = cli.parse_args()
    batch = args.batch_size or (32 if args.quick else 128)
    steps = args.steps or (2 if args.quick else 4)
    if args.child is not None:
        return child(args.child, batch, args.warmup, steps)

    rounds = args.rounds or (2 if args.quick else 3)
    cases = QUICK_CASES if args.quick else CASES
    precision = resolve_precision("auto", torch.device("cpu"))
    print(f"{describe_device(torch.device('cpu'))}; precision {precision.name}; batch {batch}; {args.warmup} warm-up "
          f"+ {steps} timed steps per round, {rounds} rounds, each side in its own process")
    print(f"{'model':<9} {'size':>4} {'default img/s':>13} {'reuse img/s':>11} {'ratio':>6}  faults/step default → reuse")
    problems = []
    for case, (name, size, _, _) in enumerate(CASES):
        if CASES[case] not in cases:
            continue
        runs = {False: [], True: []}
        for r in range(rounds):
            for reuse in ((False, True) if r % 2 == 0 else (True, False)):
                runs[reuse].append(side(case, reuse, batch, args.warmup, steps))
        default, reuse = (statistics.median(run["ips"] for run in runs[k]) for k in (False, True))
        faults = [statistics.median(run["faults"] for run in runs[k]) for k in (False, True)]
        print(f"{name:<9} {size:>4} {default:>13.1f} {reuse:>11.1f} {reuse / default:>5.2f}×  "
              f"{faults[0]:,.0f} → {faults[1]:,.0f}", flush=True)
        if runs[False][0]["done"] is not None:
            problems.append(f"{name} {size}px: the reference process kept freed memory (CNNLAB_REUSE_MEMORY=0)")
        if runs[True][0]["done"] is None:
            print(f"{name:<9} {size:>4} note: this C library was left as it is (not glibc, or $MALLOC_*/LD_PRELOAD "
                  "set): both sides ran glibc's or the user's allocator")
        for k in (False, True):
            for run in runs[k]:
                problem = loss_problem(run["losses"])
                if problem:
                    problems.append(f"{name} {size}px ({'reuse' if k else 'default'}): {problem}")
        first = {run["losses"][0] for k in (False, True) for run in runs[k]}
        if max(first) - min(first) > 1e-6 * max(abs(v) for v in first):
            problems.append(f"{name} {size}px: the first losses differ between runs: {sorted(first)}")
    exit_if_wrong(problems)
    print("results: every run trained (finite losses, falling on its batch) and the two sides computed the same "
          "first loss; timings are reported, not enforced")


if __name__ == "__main__":
    sys.exit(main())
