"""The seed's experiment end to end — ResNet-18 on CIFAR-10, 4 epochs — through cnnlab and the typical pipeline.

Reference ("typical"): the code most tutorials and the kuangliu/pytorch-cifar style scripts write — a Dataset that
turns each uint8 image into a PIL image (as torchvision.datasets.CIFAR10 does), torchvision's per-image
RandomCrop(32, padding=4) / RandomHorizontalFlip / ToTensor / Normalize in DataLoader workers (8 on a GPU machine,
one per core on the CPU; pinned memory on a GPU), batch 128, fp32, SGD momentum 0.9 with weight decay 5e-4 on every
parameter, OneCycleLR (benchmarks/common.py). cnnlab: `cnnlab.engine.fit` with its fast settings (data resident on
the device, batched augmentation, batch 256 at lr 0.2 (seed_recipe_grid.py), Nesterov, one-cycle, label smoothing 0.1, bf16 autocast and
channels_last on a GPU, full batches only there so that the step is captured as a CUDA graph), no held-out
validation split so both train on the same 50,000 images. Both build the model
with `cnnlab.create_model`, run the same number of epochs and end with one pass over the 10,000 test images.

Decoding the JPEGs is excluded from both: the arrays come from cnnlab's cache (prepared once before timing; see
benchmarks/data.py for the decode itself). The reference is handed the arrays in memory; cnnlab's time includes its
own cache reload (~0.5 s), model build, checkpoints and curves.png — everything `fit` does.

The forms (common.py: SEED, CPU_SEED, QUICK):
    python benchmarks/seed_experiment.py                        # on a GPU: the seed's experiment
    python benchmarks/seed_experiment.py --device cpu           # ResNet-18 on the CPU: 8,000 images, 2 epochs
    python benchmarks/seed_experiment.py --device cpu --quick   # CI-sized: an MLP, 2 epochs (~2 min on 2 cores)
The CPU ResNet-18 form (~6 min on 2 cores) gives cnnlab only the reference's recipe (batch 128, lr 0.1, momentum
0.9, weight decay 5e-4, one-cycle): precision (auto: bf16 where the CPU computes it natively), channels_last and the
loader are cnnlab's defaults, so the ratio is what those defaults buy. Both train on the same subset (cnnlab's
--subset draw) and test on the same 2,000 test images; --subset, --test-subset and --epochs change the size.

The last line is `speedup X accuracy A% vs B%` (cnnlab vs reference; speedup = reference wall / cnnlab wall).
Targets: on a GPU ≥ 6× at ≥ 85 % test accuracy; on the CPU ≥ 3×. Targets are reported, never enforced.
The script exits 1 on a wrong result, in either pipeline: a training loss that does not fall from the first epoch
to the last, or a test accuracy far below what the experiment reliably reaches (each form's min_accuracy).
"""

import contextlib
import csv
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from cnnlab.config import TrainConfig
from cnnlab.data import load_dataset
from cnnlab.data.arrays import Split
from cnnlab.engine import fit
from cnnlab.hardware import resolve_precision
from common import (CPU_SEED, DEFAULT_CIFAR, QUICK, SEED, cudnn_benchmark, default_workers, describe_device,
                    exit_if_wrong, parser, pick_device, result_problems, run_reference, subset_indices, sync)


def cnnlab_config(exp, args, device) -> TrainConfig:
    """cnnlab's side of the experiment. With `same_recipe` it is given only what the reference sets (the data, the
    epochs, batch, lr, momentum, weight decay, a one-cycle schedule): precision, memory format and loader are
    cnnlab's defaults, which is what the CPU form measures."""
    shared = {"model": exp.model, "dataset": "cifar10", "data": args.data, "cache_dir": args.cache_dir,
              "val_split": 0.0, "subset": exp.subset, "test_subset": exp.test_subset, "epochs": exp.epochs,
              "batch_size": exp.batch, "lr": exp.lr, "momentum": 0.9, "weight_decay": 5e-4,
              "schedule": "triangular", "compile": args.compile, "device": device.type, "seed": args.seed,
              "cuda_graphs": args.cuda_graphs}
    if exp.same_recipe:
        return TrainConfig(**shared)
    # On a GPU every batch full (the 80 images 50,000 leaves over at batch 256 skipped, a different 80 each epoch),
    # so the step can be captured as a CUDA graph (--cuda-graphs auto, as `cnnlab train` decides).
    return TrainConfig(**shared, optimizer="sgd", nesterov=True, label_smoothing=0.1,
                       precision="bf16" if device.type == "cuda" else "fp32", static_shapes=device.type == "cuda")


def run_cnnlab(config: TrainConfig, device, out):
    """Train and test through `fit`; returns (wall seconds, training images/s, test top-1, each epoch's training
    loss from metrics.csv)."""
    start = time.perf_counter()
    run = fit(replace(config, out=str(out)))
    sync(device)
    wall = time.perf_counter() - start
    summary = json.loads(run.file("summary.json").read_text())
    with open(run.file("metrics.csv"), newline="") as f:
        losses = [float(row["train_loss"]) for row in csv.DictReader(f)]
    return wall, summary["images_per_second"], summary["test_top1"], losses


def main():
    cli = parser(__doc__)
    cli.add_argument("--data", default=str(DEFAULT_CIFAR),
                     help="CIFAR-10 in any format cnnlab reads (default: ../shared/datasets/cifar10-jpeg.tar.gz)")
    cli.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    cli.add_argument("--quick", action="store_true", help="the CI-sized version (an MLP, 2 epochs)")
    cli.add_argument("--epochs", type=int, help="override the experiment's epochs (both pipelines)")
    cli.add_argument("--subset", type=int, help="train both on N training images (cnnlab's --subset draw)")
    cli.add_argument("--test-subset", type=int, help="test both on N test images (cnnlab's --test-subset draw)")
    cli.add_argument("--workers", type=int,
                     help="reference DataLoader workers (default: 8 on a GPU, one per CPU core up to 8 otherwise)")
    cli.add_argument("--compile", action="store_true", help="cnnlab side: torch.compile (compile time counts)")
    cli.add_argument("--cuda-graphs", choices=("auto", "on", "off"), default="auto",
                     help="cnnlab side: capture the step as a CUDA graph where safe (auto), or not (off)")
    cli.add_argument("--cache-dir", help="cnnlab's prepared-dataset cache (default: ~/.cache/cnnlab)")
    cli.add_argument("--seed", type=int, default=0)
    cli.add_argument("--keep-run", metavar="DIR", help="keep cnnlab's run folder here (default: a temp folder)")
    args = cli.parse_args()

    device = pick_device(args.device)
    exp = QUICK if args.quick else SEED if device.type == "cuda" else CPU_SEED
    for key in ("epochs", "subset", "test_subset"):
        value = getattr(args, key)
        if value:
            exp = replace(exp, **{key: value},
                          scaled_down=f"{exp.scaled_down}; --{key.replace('_', '-')} {value}".lstrip("; "))
    workers = args.workers if args.workers is not None else default_workers(device)
    if device.type == "cuda":
        torch.zeros(1, device=device)  # CUDA start-up paid before either clock starts
    config = cnnlab_config(exp, args, device)
    precision = resolve_precision(config.precision, device)
    print(describe_device(device))
    print(f"experiment: {exp.model} on CIFAR-10, {exp.epochs} epochs; reference batch {exp.ref_batch} fp32 "
          f"{workers} workers; cnnlab batch {exp.batch} {precision.name} ({precision.reason})")
    if exp.scaled_down:
        print(f"scaled down: {exp.scaled_down}")
    print("JPEG decoding excluded from both (arrays from cnnlab's cache, prepared before timing)", flush=True)
    ds = load_dataset("cifar10", args.data, cache_dir=args.cache_dir)  # prepares the cache on first use
    keep_train, keep_test = subset_indices(len(ds.train), exp.subset), subset_indices(len(ds.test), exp.test_subset)
    train = Split(ds.train.images[keep_train], ds.train.labels[keep_train])
    test = Split(ds.test.images[keep_test], ds.test.labels[keep_test])
    print(f"images: {len(train)} train / {len(test)} test", flush=True)

    with cudnn_benchmark(True):
        ref = run_reference(exp, train, test, len(ds.classes), device, workers, args.seed)
    with contextlib.ExitStack() as stack:
        out = Path(args.keep_run) if args.keep_run else Path(stack.enter_context(tempfile.TemporaryDirectory())) / "run"
        ours = run_cnnlab(config, device, out)

    print(f"{'pipeline':<10} {'wall s':>8} {'train img/s':>12} {'test top-1':>11}  train loss by epoch")
    problems = []
    for label, (wall, ips, acc, losses) in (("reference", ref), ("cnnlab", ours)):
        print(f"{label:<10} {wall:>8.1f} {ips:>12.0f} {acc * 100:>10.2f}%  {' → '.join(f'{v:.3f}' for v in losses)}")
        problems += result_problems(label, acc, losses, exp.min_accuracy)
    speedup = ref[0] / ours[0]
    print(f"speedup {speedup:.2f}: {'meets' if speedup >= exp.target_speedup else 'MISSES'} the "
          f"≥ {exp.target_speedup:g}× target (a timing: reported, not enforced); results "
          f"{'WRONG' if problems else f'correct (both ≥ {exp.min_accuracy:.0%} test top-1, losses falling)'}")
    print(f"speedup {speedup:.2f} accuracy {ours[2] * 100:.2f}% vs {ref[2] * 100:.2f}%")
    exit_if_wrong(problems)


if __name__ == "__main__":
    main()
