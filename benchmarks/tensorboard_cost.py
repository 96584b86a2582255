"""What `--tensorboard` costs: the speedrun preset trained without TensorBoard, with it (scalars every epoch and the
loss and lr every 50 steps, the default) and with the worst case (every step), in alternating rounds so that drift
hits each setting alike.

Per-step scalars read the loss on the host, which waits for the GPU; the loop otherwise never waits per step, so
this is where logging could cost. Printed: median training seconds (summary.json's train_seconds: the epochs with
their validation passes) and fit's whole wall time of each setting, and their ratios to the run without logging.

    python benchmarks/tensorboard_cost.py                        # GPU: a warm-up, then 3 rounds
    python benchmarks/tensorboard_cost.py --device cpu --quick   # CPU-sized: a narrow speednet on 4,000 images

The script exits 1 on a wrong result, never on a timing: an event file whose per-epoch training loss differs from
metrics.csv, per-step scalars at other steps than every N, or a run without logging that wrote event files.
"""

import csv
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from cnnlab.config import TrainConfig
from cnnlab.data import load_dataset
from cnnlab.engine import fit
from cnnlab.presets import preset_path
from common import DEFAULT_CIFAR, describe_device, exit_if_wrong, parser, pick_device

QUICK_OVERRIDES = {"hidden": [8, 16, 16], "subset": 4000, "epochs": 2, "warmup_epochs": 0.5, "lookahead_epoch": 2,
                   "batch_size": 256, "precision": "fp32"}
SETTINGS = {"off": {"tensorboard": False}, "every 50": {"tensorboard": True, "tensorboard_every": 50},
            "every step": {"tensorboard": True, "tensorboard_every": 1}}


def train(config: TrainConfig, out: Path) -> dict:
    start = time.perf_counter()
    run = fit(replace(config, out=str(out)))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    summary = json.loads(run.file("summary.json").read_text())
    summary["fit_wall"] = time.perf_counter() - start
    return summary


def event_problems(label: str, run: Path, config: TrainConfig) -> list[str]:
    """What is wrong with a run's event file, judged against its metrics.csv."""
    folder = run / "tensorboard"
    if not config.tensorboard:
        return [f"{label}: wrote {folder} without --tensorboard"] if folder.exists() else []
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    logged = [(e.step, e.value) for e in events.Scalars("loss/train")]
    expected = [(int(r["step"]), float(r["train_loss"])) for r in rows]
    problems = []
    if len(logged) != len(expected) or any(a[0] != b[0] or abs(a[1] - b[1]) > 1e-4 * max(1, abs(b[1]))
                                           for a, b in zip(logged, expected)):
        problems.append(f"{label}: the event file's loss/train {logged} is not metrics.csv's {expected}")
    tags = events.Tags()["scalars"]
    steps = [e.step for e in events.Scalars("step/loss")] if "step/loss" in tags else []
    every = config.tensorboard_every
    wanted = list(range(every, int(rows[-1]["step"]) + 1, every))
    if steps != wanted:
        problems.append(f"{label}: per-step scalars at steps {steps[:5]}…, expected every {every}: {wanted[:5]}…")
    return problems


def main():
    cli = parser(__doc__)
    cli.add_argument("--data", default=str(DEFAULT_CIFAR))
    cli.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    cli.add_argument("--quick", action="store_true", help="CPU-sized: narrow speednet, 4,000 images, one round")
    cli.add_argument("--rounds", type=int, help="rounds of the three settings (default 3, 1 with --quick)")
    cli.add_argument("--cache-dir", help="cnnlab's prepared-dataset cache (default: ~/.cache/cnnlab)")
    args = cli.parse_args()

    try:
        import tensorboard  # noqa: F401  (the runs with --tensorboard need it; say so before training anything)
    except ImportError:
        raise SystemExit("tensorboard_cost.py needs the tensorboard package: pip install 'cnnlab[tensorboard]'")
    device = pick_device(args.device)
    config = TrainConfig.from_toml(preset_path("speedrun-cifar10"))
    config = replace(config, data=args.data, cache_dir=args.cache_dir, device=device.type)
    if args.quick:
        config = replace(config, **QUICK_OVERRIDES)
    print(describe_device(device))
    print("preset: speedrun-cifar10" + (f" with {QUICK_OVERRIDES}" if args.quick else ""))
    load_dataset("cifar10", args.data, cache_dir=args.cache_dir)  # prepare the cache before any clock
    rounds = args.rounds or (1 if args.quick else 3)

    times = {name: [] for name in SETTINGS}
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if device.type == "cuda":
            train(config, out / "warmup")  # CUDA start-up, kernels loaded
        for k in range(rounds):
            for name, setting in SETTINGS.items():
                run_config = replace(config, seed=k, **setting)
                folder = out / f"{name.replace(' ', '-')}-{k}"
                summary = train(run_config, folder)
                times[name].append((summary["train_seconds"], summary["fit_wall"]))
                problems += event_problems(f"{name}, round {k}", folder, run_config)
                print(f"round {k} {name:>10}: train {summary['train_seconds']:.3f} s, fit wall "
                      f"{summary['fit_wall']:.2f} s, test top-1 {summary['test_top1']:.4f}", flush=True)

    base_train = statistics.median(t for t, _ in times["off"])
    base_wall = statistics.median(w for _, w in times["off"])
    for name in SETTINGS:
        train_s = statistics.median(t for t, _ in times[name])
        wall_s = statistics.median(w for _, w in times[name])
        print(f"{name:>10}: train {train_s:.3f} s ({train_s / base_train:.3f}× off), fit wall {wall_s:.2f} s "
              f"({wall_s / base_wall:.3f}× off), median of {rounds}")
    print(f"results: {'WRONG' if problems else 'correct'} (event files agree with metrics.csv)", flush=True)
    exit_if_wrong(problems)


if __name__ == "__main__":
    main()
