"""The seed's experiment end to end — ResNet-18 on CIFAR-10, 4 epochs — through cnnlab and the typical pipeline.

Reference ("typical"): the code most tutorials and the kuangliu/pytorch-cifar style scripts write — a Dataset that
turns each uint8 image into a PIL image (as torchvision.datasets.CIFAR10 does), torchvision's per-image
RandomCrop(32, padding=4) / RandomHorizontalFlip / ToTensor / Normalize in DataLoader workers (8 on a GPU machine,
one per core on the CPU; pinned memory on a GPU), batch 128, fp32, SGD momentum 0.9 with weight decay 5e-4 on every
parameter, OneCycleLR. cnnlab: `cnnlab.engine.fit` with its fast settings (data resident on the device, batched
augmentation, batch 512, Nesterov, one-cycle, label smoothing 0.1, bf16 autocast and channels_last on a GPU), no
held-out validation split so both train on the same 50,000 images. Both build the model with
`cnnlab.create_model`, run the same number of epochs and end with one pass over the 10,000 test images.

Decoding the JPEGs is excluded from both: the arrays come from cnnlab's cache (prepared once before timing; see
benchmarks/data.py for the decode itself). The reference is handed the arrays in memory; cnnlab's time includes its
own cache reload (~0.5 s), model build, checkpoints and curves.png — everything `fit` does.

    python benchmarks/seed_experiment.py                        # on a GPU: the seed's experiment
    python benchmarks/seed_experiment.py --device cpu --quick   # CPU-sized: an MLP, 2 epochs (~2 min on 2 cores)

The last line is `speedup X accuracy A% vs B%` (cnnlab vs reference; speedup = reference wall / cnnlab wall).
Targets: on a GPU ≥ 6× at ≥ 85 % test accuracy; on the CPU (--quick) ≥ 3×. Targets are reported, never enforced.
The script exits 1 on a wrong result, in either pipeline: a training loss that does not fall from the first epoch
to the last, or a test accuracy far below what the experiment reliably reaches (see MIN_ACCURACY).
"""

import argparse
import contextlib
import json
import csv
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from cnnlab import create_model
from cnnlab.config import TrainConfig
from cnnlab.data import load_dataset
from cnnlab.engine import fit

REPO = Path(__file__).resolve().parent.parent
# The statistics typical CIFAR-10 scripts hard-code.
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class Experiment:
    model: str
    model_options: dict
    epochs: int
    ref_batch: int
    ref_lr: float  # OneCycleLR's max_lr
    batch: int  # cnnlab's
    lr: float  # cnnlab's peak lr
    min_accuracy: float  # below this test top-1 the result is wrong, not slow: far under what the form reaches
    target_speedup: float  # a timing target: reported, never enforced
    scaled_down: str = ""


# min_accuracy: ResNet-18 reaches ~88-91 % in these 4 epochs; the MLP ~45 % in 2 (chance is 10 %).
SEED = Experiment("resnet18", {"stem": "cifar"}, epochs=4, ref_batch=128, ref_lr=0.1, batch=512, lr=0.4,
                  min_accuracy=0.60, target_speedup=6.0)
# On 2 CPU cores ResNet-18 trains at ~20 images/s: 4 epochs would take days and measure only the convolutions.
# The MLP keeps the full data set and both pipelines, so the comparison is still about moving and augmenting
# images, which is the part that differs.
QUICK = Experiment("mlp", {}, epochs=2, ref_batch=128, ref_lr=0.05, batch=512, lr=0.1, min_accuracy=0.25,
                   target_speedup=3.0,
                   scaled_down="model mlp (3072→256→10) instead of resnet18, 2 epochs instead of 4; "
                               "same data (50,000 train / 10,000 test), same pipelines")


def default_workers(device: torch.device) -> int:
    """The reference's DataLoader workers: 8 on a GPU machine, one per core (at most 8) on the CPU."""
    return 8 if device.type == "cuda" else min(8, os.cpu_count() or 1)


class ArrayImages(Dataset):
    """uint8 (N, H, W, C) arrays served as PIL images, exactly as torchvision.datasets.CIFAR10 serves its arrays."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def typical_loaders(train, test, batch_size, workers, pin_memory):
    """The reference's train and test DataLoaders: per-image torchvision transforms in worker processes."""
    normalize = transforms.Normalize(CIFAR_MEAN, CIFAR_STD)
    train_tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), normalize])
    test_tf = transforms.Compose([transforms.ToTensor(), normalize])
    train_loader = DataLoader(ArrayImages(train.images, train.labels, train_tf), batch_size=batch_size,
                              shuffle=True, num_workers=workers, pin_memory=pin_memory)
    test_loader = DataLoader(ArrayImages(test.images, test.labels, test_tf), batch_size=batch_size,
                             shuffle=False, num_workers=workers, pin_memory=pin_memory)
    return train_loader, test_loader


@contextlib.contextmanager
def cudnn_benchmark(enabled):
    """Typical scripts switch cuDNN's autotuner on; keep it from leaking into the cnnlab run."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def run_reference(exp, ds, device, workers, seed):
    """Train and test the typical pipeline; returns (wall seconds, training images/s, test top-1, each epoch's mean
    training loss)."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    train_loader, test_loader = typical_loaders(ds.train, ds.test, exp.ref_batch, workers, device.type == "cuda")
    model = create_model(exp.model, len(ds.classes), **exp.model_options).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=exp.ref_lr, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=exp.ref_lr, epochs=exp.epochs,
                                                    steps_per_epoch=len(train_loader))
    train_seconds, losses = 0.0, []
    for epoch in range(1, exp.epochs + 1):
        epoch_start = time.perf_counter()
        model.train()
        total_loss = torch.zeros((), device=device)
        for x, y in train_loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.detach()
        mean_loss = float(total_loss) / len(train_loader)  # synchronises, so the epoch's time is real
        train_seconds += time.perf_counter() - epoch_start
        losses.append(mean_loss)
        print(f"reference epoch {epoch}/{exp.epochs}  train loss {mean_loss:.4f}  "
              f"{len(ds.train) / (time.perf_counter() - epoch_start):.0f} img/s", flush=True)
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in test_loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            correct += int((model(x).argmax(1) == y).sum())
    wall = time.perf_counter() - start
    return wall, exp.epochs * len(ds.train) / train_seconds, correct / len(ds.test), losses


def run_cnnlab(exp, args, device, out):
    """Train and test through `fit`; returns (wall seconds, training images/s, test top-1, each epoch's training
    loss from metrics.csv)."""
    config = TrainConfig(model=exp.model, dataset="cifar10", data=args.data, cache_dir=args.cache_dir,
                         val_split=0.0, epochs=exp.epochs, batch_size=exp.batch, optimizer="sgd", lr=exp.lr,
                         momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="triangular",
                         label_smoothing=0.1, precision="bf16" if device.type == "cuda" else "fp32",
                         compile=args.compile, device=device.type, seed=args.seed, out=str(out))
    start = time.perf_counter()
    run = fit(config)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    summary = json.loads(run.file("summary.json").read_text())
    with open(run.file("metrics.csv"), newline="") as f:
        losses = [float(row["train_loss"]) for row in csv.DictReader(f)]
    return wall, summary["images_per_second"], summary["test_top1"], losses


def result_problems(label: str, accuracy, losses: list[float], min_accuracy: float) -> list[str]:
    """What makes a training result wrong rather than slow: a test top-1 far below the floor, a training loss that is
    not finite or does not fall from the first epoch to the last."""
    problems = []
    if accuracy is None or not accuracy >= min_accuracy:
        problems.append(f"{label}: test top-1 {accuracy} is below {min_accuracy:.0%}, far under what this form "
                        "reliably reaches (chance is 10 %)")
    if not losses or not all(math.isfinite(v) for v in losses):
        problems.append(f"{label}: training losses are missing or not finite: {losses}")
    elif len(losses) > 1 and not losses[-1] < losses[0]:
        problems.append(f"{label}: the training loss did not fall: {' → '.join(f'{v:.4f}' for v in losses)}")
    return problems


def exit_if_wrong(problems: list[str]) -> None:
    """Timings are only reported; a wrong result ends the benchmark with exit code 1, saying what is wrong."""
    if problems:
        print("WRONG RESULT:\n  " + "\n  ".join(problems), file=sys.stderr, flush=True)
        sys.exit(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--data", default=str(REPO.parent / "shared/datasets/cifar10-jpeg.tar.gz"),
                        help="CIFAR-10 in any format cnnlab reads (default: ../shared/datasets/cifar10-jpeg.tar.gz)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--quick", action="store_true", help="the CPU-sized version (an MLP, 2 epochs)")
    parser.add_argument("--epochs", type=int, help="override the experiment's epochs (both pipelines)")
    parser.add_argument("--workers", type=int,
                        help="reference DataLoader workers (default: 8 on a GPU, one per CPU core up to 8 otherwise)")
    parser.add_argument("--compile", action="store_true", help="cnnlab side: torch.compile (compile time counts)")
    parser.add_argument("--cache-dir", help="cnnlab's prepared-dataset cache (default: ~/.cache/cnnlab)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-run", metavar="DIR", help="keep cnnlab's run folder here (default: a temp folder)")
    args = parser.parse_args()

    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    exp = QUICK if args.quick else SEED
    if args.epochs:
        exp = replace(exp, epochs=args.epochs,
                      scaled_down=(exp.scaled_down + f"; --epochs {args.epochs}").lstrip("; "))
    workers = args.workers if args.workers is not None else default_workers(device)
    if device.type == "cuda":
        torch.zeros(1, device=device)  # CUDA start-up paid before either clock starts
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    print(f"device: {name}; torch {torch.__version__}")
    print(f"experiment: {exp.model} on CIFAR-10, {exp.epochs} epochs; reference batch {exp.ref_batch} fp32 "
          f"{workers} workers; cnnlab batch {exp.batch} {'bf16' if device.type == 'cuda' else 'fp32'}")
    if exp.scaled_down:
        print(f"scaled down: {exp.scaled_down}")
    print("JPEG decoding excluded from both (arrays from cnnlab's cache, prepared before timing)", flush=True)
    ds = load_dataset("cifar10", args.data, cache_dir=args.cache_dir)  # prepares the cache on first use

    with cudnn_benchmark(True):
        ref = run_reference(exp, ds, device, workers, args.seed)
    with contextlib.ExitStack() as stack:
        out = Path(args.keep_run) if args.keep_run else Path(stack.enter_context(tempfile.TemporaryDirectory())) / "run"
        ours = run_cnnlab(exp, args, device, out)

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
