"""cnnlab's streamed ImageNet loader against a plain torchvision pipeline: training samples per core, same run.

A synthetic ImageNet-layout folder (train/<wnid>/*.JPEG) is written once into a temporary folder: photo-like JPEGs
at ImageNet's sizes, each a 2×2 collage of real 64×64 Tiny ImageNet images upscaled (bicubic) to a random 300–500
px per side, with mild grain (σ 8), saved at quality 90. Then, in alternating rounds (the order flipping every
round, so a burst of load from other processes falls on both alike), one training epoch through each of:

  cnnlab     StreamingImageFolder + StreamLoader: RandomResizedCrop(224) + flip, uint8 to the device, normalised
             there; persistent workers (the decode path of src/cnnlab/data/stream.py)
  reference  torchvision ImageFolder + RandomResizedCrop(224) + RandomHorizontalFlip + ToTensor + Normalize in a
             DataLoader (shuffle, pinned memory on CUDA), batches moved to the device — the typical script
  cnnlab gpu on CUDA with torchvision: --decode gpu (the workers send the bytes; the GPU decodes in batches)

Each timed epoch runs in a fresh process of its own after an untimed one, and takes its batches as a training
loop does (each moved to the device and let go before the next); cnnlab's process keeps freed memory for reuse on
a CPU device, as every cnnlab CPU run does (hardware.reuse_freed_memory), the reference's keeps glibc's defaults,
as a plain script has. Both use the same workers and batch size. "Per core" is samples per CPU-second of all the
pipeline's processes (the main process and its workers, from /proc): it counts the work each pipeline makes the
cores do, not how long other processes kept it waiting, so it holds on a shared machine; samples/s on the wall
clock is printed beside it.

    python benchmarks/stream.py --device cpu --quick    # 400 images, 2 rounds (make bench; ~1 min on 2 cores)
    python benchmarks/stream.py                         # 3,000 images, 4 rounds; on CUDA the GPU decode too

Targets (issue 27), printed and never enforced: ≥ 2× the reference per core and ≥ 700 samples/s per core. The
script exits 1 on a wrong result: an epoch that does not yield every image once with its label, a batch of the
wrong shape or dtype, values outside the normalised [0, 1] range, cnnlab's samples or labels that differ from the
reference decode of the same file (same box and flip, torchvision's resized_crop on a full PIL decode), or the two
pipelines' mean colours that disagree.
"""

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets, transforms
from torchvision.transforms.v2 import functional as v2

from cnnlab.data.stream import StreamingImageFolder, StreamLoader, collate_encoded, sample_crop_box, train_sample
from cnnlab.hardware import reuse_freed_memory
from common import REPO, cpu_name, exit_if_wrong, parser, pick_device, sync

DEFAULT_TINY = REPO.parent / "shared/datasets/tiny-imagenet-200-train100.tar.gz"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIZE = 224
BICUBIC = Image.Resampling.BICUBIC


# -- the synthetic folder -----------------------------------------------------------------------------------------
def source_images(path: Path, n: int) -> tuple[list[Image.Image], str]:
    """Up to n real 64×64 RGB images from the Tiny ImageNet tar.gz, or smooth random fields where it is missing."""
    if path.is_file():
        images = []
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                if member.isfile() and "/train/" in member.name and member.name.endswith(".JPEG"):
                    images.append(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB"))
                    if len(images) == n:
                        break
        return images, f"Tiny ImageNet images from {path.name}"
    rng = np.random.default_rng(0)
    fields = [Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((64, 64), BICUBIC)
              for _ in range(n)]
    return fields, f"smooth random fields ({path} not found: not photos, so decode times are optimistic)"


def write_folder(root: Path, n: int, classes: int, source: Path) -> str:
    """n JPEGs in `classes` class folders under root/train; returns a line describing them."""
    tiles, what = source_images(source, 4 * classes)
    rng = np.random.default_rng(0)
    sizes, nbytes = [], 0
    for i in range(n):
        label = i % classes
        w, h = (int(v) for v in rng.integers(300, 501, 2))
        canvas = Image.new("RGB", (w, h))
        xs, ys = [0, w // 2, w], [0, h // 2, h]
        for a in range(2):
            for b in range(2):
                tile = tiles[4 * label + int(rng.integers(4))]  # a class's own images, so labels mean something
                canvas.paste(tile.resize((xs[a + 1] - xs[a], ys[b + 1] - ys[b]), BICUBIC), (xs[a], ys[b]))
        pixels = np.asarray(canvas).astype(np.int16) + rng.normal(0, 8, (h, w, 3)).astype(np.int16)
        folder = root / "train" / f"n{label:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:05d}.JPEG"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        sizes.append(w * h)
        nbytes += path.stat().st_size
    return (f"{n} JPEGs in {classes} classes, sides 300–500 px (mean {np.mean(sizes) / 1e3:.0f} kpixels), quality "
            f"90, mean {nbytes / n / 1e3:.0f} KB ({nbytes / sum(sizes):.2f} bytes/pixel); 2×2 collages of {what}")


# -- the pipelines ------------------------------------------------------------------------------------------------
def cnnlab_loader(root: Path, batch: int, workers: int, device, decode="cpu") -> StreamLoader:
    dataset = StreamingImageFolder(root / "train", True, SIZE, seed=0)
    return StreamLoader(dataset, range(len(dataset)), batch_size=batch, device=device, train=True,
                        mean=IMAGENET_MEAN, std=IMAGENET_STD, channels_last=True,  # as cnnlab feeds CNNs
                        workers=workers, seed=0, decode=decode)


def bytes_loader(root: Path, batch: int, workers: int) -> DataLoader:
    """The host side of --decode gpu: workers read each JPEG's bytes and draw its box, nothing is decoded (on
    CUDA the device decodes and crops them); its samples per CPU-second are what a GPU-decoding run asks of
    the host's cores."""
    dataset = StreamingImageFolder(root / "train", True, SIZE, encoded=True)
    return DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, collate_fn=collate_encoded,
                      persistent_workers=workers > 0)


def reference_loader(root: Path, batch: int, workers: int, device) -> DataLoader:
    transform = transforms.Compose([transforms.RandomResizedCrop(SIZE), transforms.RandomHorizontalFlip(),
                                    transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return DataLoader(datasets.ImageFolder(str(root / "train"), transform), batch_size=batch, shuffle=True,
                      num_workers=workers, pin_memory=device.type == "cuda")


def epoch(loader, device) -> tuple[list, list[torch.Tensor]]:
    """One pass: (batches of images, batches of labels), on the device as a training loop would hold them (the
    bytes loader's batches stay on the host, packed)."""
    xs, ys = [], []
    for *x, y in loader:
        xs.append(x[0].to(device, non_blocking=True) if len(x) == 1 else x)
        ys.append(y.to(device, non_blocking=True))
    sync(device)
    return xs, ys


def cpu_seconds() -> tuple[float, float]:
    """CPU time (user + system) of (this process, its child processes): the children that have ended and those
    still running (the DataLoader workers); a worker that ends between two reads is counted once either way."""
    import resource

    def used(who):
        usage = resource.getrusage(who)
        return usage.ru_utime + usage.ru_stime

    children = used(resource.RUSAGE_CHILDREN)
    tick = os.sysconf("SC_CLK_TCK")
    for task in os.listdir("/proc/self/task"):
        try:
            pids = Path(f"/proc/self/task/{task}/children").read_text().split()
        except OSError:
            continue
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # ended since the listing: RUSAGE_CHILDREN has it once it is reaped
            children += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return used(resource.RUSAGE_SELF), children


# -- wrong results ------------------------------------------------------------------------------------------------
def epoch_problems(name: str, xs, ys, targets: np.ndarray) -> list[str]:
    """Every image once with its label; (N, 3, 224, 224) float batches; values inside the normalised [0, 1]."""
    problems = []
    labels = torch.cat(ys).cpu().numpy()
    if not np.array_equal(np.sort(labels), np.sort(targets)):
        problems.append(f"{name}: an epoch's {len(labels)} labels are not the folder's {len(targets)}, each once")
    for x in xs:
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, SIZE, SIZE) or not x.dtype.is_floating_point:
            problems.append(f"{name}: a batch is {tuple(x.shape)} {x.dtype}, not (N, 3, {SIZE}, {SIZE}) float")
            break
    mean = torch.tensor(IMAGENET_MEAN, device=xs[0].device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=xs[0].device).view(1, 3, 1, 1)
    low = min(float((x.float() * std + mean).min()) for x in xs)
    high = max(float((x.float() * std + mean).max()) for x in xs)
    if low < -1e-3 or high > 1 + 1e-3:
        problems.append(f"{name}: un-normalised values span {low:.4f}…{high:.4f}, outside [0, 1]")
    return problems


def image_means(xs) -> np.ndarray:
    """Each image's mean normalised colour: (N, 3)."""
    return torch.cat([x.float().mean((2, 3)) for x in xs]).cpu().numpy()


def colour_problem(name: str, ours: np.ndarray, theirs: np.ndarray) -> str | None:
    """Two pipelines' mean colours over an epoch of random crops differ by chance with a standard error from the
    images' spread (~0.03 at 400 photos, ~0.2 at a dozen smooth fields); more than 5 of them, or 0.15 whichever is
    larger, is a wrong result (normalised twice, channels swapped, another image set)."""
    diff = np.abs(ours.mean(0) - theirs.mean(0))
    error = np.sqrt(ours.var(0, ddof=1) / len(ours) + theirs.var(0, ddof=1) / len(theirs))
    if (diff > np.maximum(0.15, 5 * error)).any():
        return (f"{name}: mean normalised colour {np.round(ours.mean(0), 3)} against the reference's "
                f"{np.round(theirs.mean(0), 3)} (standard error {np.round(error, 3)})")
    return None


def decode_problems(root: Path, checks: int) -> list[str]:
    """cnnlab's training samples and labels against the reference decode of the same files.

    For `checks` files, the sample of key (index, seed) is compared with torchvision's resized_crop (bilinear) +
    flip of a full PIL decode, with the box and flip that seed draws: mean difference ≤ 2.5 grey levels (of 255).
    The resize kernels round differently (≤ 1 level); a crop spanning ≥ 448 px decodes at half scale, its box
    snapped to the half-scale grid (tests/test_stream.py: mean ≤ 2.2 against the unsnapped box).
    """
    ours = StreamingImageFolder(root / "train", True, SIZE)
    theirs = datasets.ImageFolder(str(root / "train"))
    problems = []
    if ours.classes != theirs.classes or [ours.path(i) for i in range(len(ours))] != [p for p, _ in theirs.samples] \
            or ours.targets.tolist() != theirs.targets:
        problems.append("cnnlab lists other files, classes or labels than torchvision's ImageFolder")
    worst = 0.0
    for index in np.random.default_rng(1).choice(len(ours), min(checks, len(ours)), replace=False).tolist():
        seed = 1000 + index
        sample, label = ours[(index, seed)]
        with Image.open(ours.path(index)) as img:
            rng = random.Random(seed)
            top, left, h, w = sample_crop_box(img.height, img.width, rng)
            flip = rng.random() < 0.5
            ref = v2.resized_crop(img.convert("RGB"), top, left, h, w, [SIZE, SIZE],
                                  interpolation=v2.InterpolationMode.BILINEAR)
        ref = np.asarray(ref.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else ref, dtype=np.int16)
        again = train_sample(Path(ours.path(index)).read_bytes(), SIZE, random.Random(seed))
        diff = float(np.abs(sample.numpy().astype(np.int16) - ref).mean())
        worst = max(worst, diff)
        if sample.shape != (SIZE, SIZE, 3) or sample.dtype != torch.uint8 or label != theirs.targets[index] \
                or not torch.equal(sample, again) or diff > 2.5:
            problems.append(f"{ours.path(index)}: cnnlab's sample {tuple(sample.shape)} {sample.dtype} label "
                            f"{label} differs from the reference decode (label {theirs.targets[index]}, mean "
                            f"difference {diff:.2f} levels) or from itself with the same seed")
    print(f"decode check: {checks} samples against torchvision's resized_crop of the full PIL decode, same box and "
          f"flip: worst mean difference {worst:.2f} grey levels (limit 2.5)", flush=True)
    return problems


# -- timing -------------------------------------------------------------------------------------------------------
def training_pass(loader, device) -> None:
    """One epoch as a training loop takes it: each batch moved to the device and let go before the next."""
    for *x, y in loader:
        if len(x) == 1:
            x[0].to(device, non_blocking=True)
        y.to(device, non_blocking=True)
    sync(device)


def measure_one(name: str, root: Path, batch: int, workers: int, device) -> dict:
    """In a process of its own: pipeline `name`, one untimed epoch (workers started, caches warm), then one timed
    epoch; (main CPU-s, workers' CPU-s, wall s). cnnlab's process keeps freed memory for reuse on a CPU device, as
    a cnnlab training run there does (build.py); the reference's and the byte path's keep glibc's defaults."""
    if name == "cnnlab" and device.type == "cpu":
        reuse_freed_memory()
    loader = build_pipelines(root, batch, workers, device, only=name)[name]
    training_pass(loader, device)
    (main, workers_cpu), wall = cpu_seconds(), time.perf_counter()
    with gpu_utilisation(device) as busy:
        training_pass(loader, device)
    wall = time.perf_counter() - wall
    main, workers_cpu = (after - before for after, before in zip(cpu_seconds(), (main, workers_cpu)))
    return {"main": main, "workers": workers_cpu, "wall": wall, "gpu_busy": busy.get("mean")}


@contextlib.contextmanager
def gpu_utilisation(device):
    """The GPU's mean utilisation (%, nvidia-smi sampling every 100 ms) over the block, in the yielded dict's
    "mean"; nothing where there is no CUDA device or no nvidia-smi."""
    result = {}
    sampler = None
    if device.type == "cuda" and shutil.which("nvidia-smi"):
        sampler = subprocess.Popen(["nvidia-smi", f"--id={device.index or 0}", "--query-gpu=utilization.gpu",
                                    "--format=csv,noheader,nounits", "-lms", "100"],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        yield result
    finally:
        if sampler is not None:
            sampler.terminate()
            samples = [float(line) for line in sampler.communicate()[0].split() if line.replace(".", "").isdigit()]
            result["mean"] = statistics.fmean(samples) if samples else None


def measure(names: list[str], rounds: int, device, n: int, args, root: Path) -> dict[str, dict[str, list[float]]]:
    """{name: {"core": samples per CPU-second of all its processes, "workers": … of its workers alone,
    "wall": samples/s}} over alternating rounds of one epoch each, each epoch in a fresh process
    (`measure_one`), so no pipeline's memory or worker processes are another's."""
    rates = {name: {"core": [], "workers": [], "wall": []} for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            child = subprocess.run([sys.executable, __file__, "--measure-one", name, "--root", str(root),
                                    "--device", device.type, "--workers", str(args.workers), "--batch-size",
                                    str(args.batch_size)], capture_output=True, text=True)
            if child.returncode:
                raise SystemExit(f"{name}: the timed epoch failed:\n{child.stderr[-2000:]}")
            one = json.loads(child.stdout.strip().splitlines()[-1])
            main, workers, wall = one["main"], one["workers"], one["wall"]
            if one.get("gpu_busy") is not None:
                rates[name].setdefault("gpu_busy", []).append(one["gpu_busy"])
            rates[name]["core"].append(n / (main + workers))
            rates[name]["workers"].append(n / workers if workers else float("nan"))
            rates[name]["wall"].append(n / wall)
            print(f"round {r + 1}/{rounds} {name:<10} {n / wall:6.0f} samples/s wall; CPU-s: main {main:5.2f}, "
                  f"workers {workers:5.2f} → {n / (main + workers):4.0f} samples per CPU-second", flush=True)
    return rates


def build_pipelines(root: Path, batch: int, workers: int, device, only: str | None = None) -> dict:
    """cnnlab, the reference, on CUDA cnnlab with --decode gpu (where it is available), and the host side of it;
    with `only`, that one alone."""
    pipelines = {}
    if only in (None, "cnnlab"):
        pipelines["cnnlab"] = cnnlab_loader(root, batch, workers, device)
    if only in (None, "reference"):
        pipelines["reference"] = reference_loader(root, batch, workers, device)
    if device.type == "cuda" and only in (None, "cnnlab gpu"):
        gpu_loader = cnnlab_loader(root, batch, workers, device, decode="gpu")
        if only is None:
            print(gpu_loader.decode_note)
        if gpu_loader.decode == "gpu":
            pipelines["cnnlab gpu"] = gpu_loader
    if only in (None, "gpu host"):
        pipelines["gpu host"] = bytes_loader(root, batch, workers)
    return pipelines


def epoch_checks(pipelines: dict, device, targets: np.ndarray) -> list[str]:
    """One untimed epoch of each pipeline (start-up outside the clock): what is wrong with it."""
    problems, means = [], {}
    for name, loader in pipelines.items():
        xs, ys = epoch(loader, device)
        if name == "gpu host":  # bytes, not images: only the labels can be checked
            if not np.array_equal(np.sort(torch.cat(ys).cpu().numpy()), np.sort(targets)):
                problems.append("gpu host: an epoch does not yield every image once")
            continue
        problems += epoch_problems(name, xs, ys, targets)
        means[name] = image_means(xs)
    problems += filter(None, (colour_problem(name, mean, means["reference"]) for name, mean in means.items()))
    return problems


def report(rates: dict, workers_per_pipeline: int, device) -> None:
    """The medians over the rounds: per core (the headline), in the workers alone, on the wall clock."""
    core, workers, wall = ({name: statistics.median(r[key]) for name, r in rates.items()}
                           for key in ("core", "workers", "wall"))
    ratio = core["cnnlab"] / core["reference"]
    print(f"samples/s per core: cnnlab {core['cnnlab']:.0f}, reference {core['reference']:.0f}, ratio {ratio:.2f}")
    where = "the GPU" if device.type == "cuda" else "the CPU (this run's device)"
    print(f"  (per CPU-second of all processes; cnnlab's main process normalises on {where}, the reference's "
          f"workers do with ToTensor + Normalize)")
    print(f"in the workers alone: cnnlab {workers['cnnlab']:.0f}, reference {workers['reference']:.0f} per "
          f"CPU-second, ratio {workers['cnnlab'] / workers['reference']:.2f} (what a GPU run's host pays per "
          f"sample, cnnlab normalising on the GPU)")
    per_worker = max(1, workers_per_pipeline)
    print(f"samples/s, wall clock with {workers_per_pipeline} workers: cnnlab {wall['cnnlab']:.0f}, reference "
          f"{wall['reference']:.0f} (ratio {wall['cnnlab'] / wall['reference']:.2f}); per worker process: cnnlab "
          f"{wall['cnnlab'] / per_worker:.0f}, reference {wall['reference'] / per_worker:.0f}")
    print(f"host side of --decode gpu (bytes and boxes, no decode): {core['gpu host']:.0f} samples per CPU-second, "
          f"{workers['gpu host']:.0f} in the workers alone")
    if "cnnlab gpu" in core:
        print(f"GPU decode: {wall['cnnlab gpu']:.0f} samples/s wall, {core['cnnlab gpu']:.0f} per CPU-second "
              f"({wall['cnnlab gpu'] / wall['cnnlab']:.2f}× the CPU path's wall rate)")
    busy = {name: statistics.median(r["gpu_busy"]) for name, r in rates.items() if r.get("gpu_busy")}
    if busy:
        print("GPU utilisation (nvidia-smi, mean over each timed epoch, median over rounds): "
              + ", ".join(f"{name} {value:.0f} %" for name, value in busy.items()))
    print(f"targets (reported, never enforced): ratio ≥ 2 {'met' if ratio >= 2 else 'MISSED'}; ≥ 700 per core "
          f"{'met' if core['cnnlab'] >= 700 else 'MISSED'}; load average now {os.getloadavg()[0]:.1f}")


def main():
    cli = parser(__doc__)
    cli.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    cli.add_argument("--quick", action="store_true", help="400 images, 2 rounds")
    cli.add_argument("--images", type=int, help="images in the synthetic folder (default 3,000; --quick 400)")
    cli.add_argument("--rounds", type=int, help="timed rounds per pipeline (default 4; --quick 2)")
    cli.add_argument("--workers", type=int, default=os.cpu_count(), help="DataLoader workers, both pipelines "
                                                                         "(default: one per core)")
    cli.add_argument("--batch-size", type=int, default=64)
    cli.add_argument("--source", default=str(DEFAULT_TINY),
                     help="the Tiny ImageNet tar.gz whose images the folder is made of (default: the shared one)")
    cli.add_argument("--measure-one", help=argparse.SUPPRESS)  # a timed epoch's own process (measure_one)
    cli.add_argument("--root", help=argparse.SUPPRESS)
    args = cli.parse_args()
    if args.measure_one:
        torch.set_num_threads(1)
        one = measure_one(args.measure_one, Path(args.root), args.batch_size, args.workers, pick_device(args.device))
        print(json.dumps(one))
        return
    n = args.images or (400 if args.quick else 3000)
    rounds = args.rounds or (2 if args.quick else 4)
    device = pick_device(args.device)
    # The main process's only CPU work is cnnlab's normalisation on a CPU device; one thread, since idle OpenMP
    # threads spin, and on busy shared cores that spinning would be counted as the loader's CPU time
    torch.set_num_threads(1)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none used"
    print(f"machine: {os.cpu_count()} CPU cores ({cpu_name()}), load average {os.getloadavg()[0]:.1f}; GPU: {gpu}; "
          f"torch {torch.__version__}; {args.workers} workers, batch {args.batch_size}, {rounds} rounds")

    with tempfile.TemporaryDirectory(prefix="cnnlab-stream-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        print(write_folder(root, n, 10, Path(args.source)) + f"; written in {time.perf_counter() - start:.0f} s",
              flush=True)
        problems = decode_problems(root, 8 if args.quick else 32)
        pipelines = build_pipelines(root, args.batch_size, args.workers, device)
        problems += epoch_checks(pipelines, device, pipelines["cnnlab"].dataset.targets)
        names = list(pipelines)
        del pipelines  # their workers end here; each timed epoch runs in a process of its own
        rates = measure(names, rounds, device, n, args, root)
    report(rates, args.workers, device)
    exit_if_wrong(problems)


if __name__ == "__main__":
    main()
