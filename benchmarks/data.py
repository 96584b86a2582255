"""CIFAR-10's data path against the typical pipeline, in the same run: prepare, cached reload, and the loader alone.

1. Prepare and reload (the shared 60,000-JPEG tar.gz). Reference ("typical"): tarfile reads each member and PIL
   decodes each image in one process — what a plain Dataset/ImageFolder-style loop does. cnnlab: its ustar walk +
   forked decode into uint8 arrays, then the .npy cache. Targets from the data issue: prepare ≤ 10 s on 2 cores,
   reload ≤ 1 s. Every image cnnlab decodes must equal the reference's pixels, under the same class.
2. The loader alone, with CIFAR augmentation (random crop after 4-pixel padding, horizontal flip, normalise), no
   model: images/s of cnnlab's DeviceLoader (images resident on the device, augmented in whole batches) against a
   torch DataLoader running torchvision's per-image transforms on PIL images in worker processes — the same
   reference pipeline as benchmarks/seed_experiment.py. Both at the same batch size; the reference's batches are
   moved to the device (pinned memory, non_blocking) as a training loop would. On the CPU always, and on the GPU
   when there is one (unless --device cpu).

    python benchmarks/data.py                          # everything, CPU and GPU when present
    python benchmarks/data.py --device cpu --quick     # the loader on 20,000 images, CPU only (~1 min on 2 cores)

Timing targets are reported, never enforced. The script exits 1 on a wrong result: pixels or labels that differ
from the reference decode, a cached reload that differs from the prepare, a loader epoch that misses images.
"""

import hashlib
import io
import os
import tarfile
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from cnnlab.data import load_dataset
from cnnlab.data.arrays import Split
from cnnlab.data.loader import DeviceLoader, augment_preset
from common import (CIFAR_MEAN, CIFAR_STD, DEFAULT_CIFAR, cpu_name, default_workers, exit_if_wrong, parser, sync,
                    subset_indices, typical_loaders)


def typical_prepare(path):
    """The reference decode: {split: [(class, RGB image)]} in archive order."""
    splits = {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3:
                continue
            with Image.open(io.BytesIO(tar.extractfile(member).read())) as im:
                splits.setdefault(parts[0], []).append((parts[1], np.asarray(im.convert("RGB"))))
    return splits


def fingerprints(pairs) -> list[tuple[str, str]]:
    """Sorted (class, SHA-1 of the pixels): equal lists mean the same images with the same labels, in any order."""
    return sorted((cls, hashlib.sha1(np.ascontiguousarray(image)).hexdigest()) for cls, image in pairs)


def pixel_problems(ds, reference) -> list[str]:
    """How cnnlab's arrays differ from the reference decode: every image, its pixels and its label."""
    problems = []
    for split, items in reference.items():
        ours = ds.splits.get("test" if split == "val" else split)
        if ours is None:
            problems.append(f"cnnlab has no {split} split")
            continue
        expected = fingerprints(items)
        got = fingerprints((ds.classes[label], image) for image, label in zip(ours.images, ours.labels))
        if got != expected:
            differ = len(set(expected) ^ set(got))
            problems.append(f"{split}: {len(got)} images against the reference's {len(expected)}; {differ} "
                            "(class, pixels) pairs are in one decode and not the other")
    return problems


def bench_prepare(path) -> list[str]:
    """Time the reference decode, cnnlab's prepare and its cached reload; return what differs from the reference."""
    start = time.perf_counter()
    reference = typical_prepare(path)
    t_ref = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        ds = load_dataset(None, path, cache_dir=cache)
        t_prepare = time.perf_counter() - start
        start = time.perf_counter()
        again = load_dataset(None, path, cache_dir=cache)
        t_reload = time.perf_counter() - start
    n = sum(len(split) for split in ds.splits.values())
    print(f"{'step':<34} {'seconds':>8} {'target':>8} {'vs typical':>11}")
    print(f"{'typical: tarfile + PIL, 1 process':<34} {t_ref:>8.2f} {'':>8} {1.0:>10.2f}×")
    print(f"{'cnnlab prepare (first use)':<34} {t_prepare:>8.2f} {'≤ 10':>8} {t_ref / t_prepare:>10.2f}×")
    print(f"{'cnnlab reload (cached)':<34} {t_reload:>8.2f} {'≤ 1':>8} {t_ref / t_reload:>10.2f}×")
    print(f"{n} images; prepare {'meets' if t_prepare <= 10 else 'MISSES'} its target, "
          f"reload {'meets' if t_reload <= 1 else 'MISSES'} its target (timings: reported, not enforced)", flush=True)
    problems = pixel_problems(ds, reference)
    for name, split in ds.splits.items():
        if not (np.array_equal(again.splits[name].images, split.images)
                and np.array_equal(again.splits[name].labels, split.labels)):
            problems.append(f"the cached reload's {name} split differs from the first prepare")
    print(f"pixels and labels: {'WRONG, they differ from' if problems else 'identical to'} the reference decode "
          f"({sum(map(len, reference.values()))} images)", flush=True)
    return problems


def epoch_rate(batches, device, n):
    """Images/s of one pass over `batches` (an iterable of (x, y)), moving each batch to `device`."""
    sync(device)
    start = time.perf_counter()
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    sync(device)
    return n / (time.perf_counter() - start)


def bench_loader(train, device, batch_size, workers):
    """cnnlab's DeviceLoader against the typical DataLoader, both with CIFAR augmentation; prints the ratio and
    returns what is wrong with the loader's epoch (nothing, normally)."""
    images, labels = train.images, train.labels
    start = time.perf_counter()
    ours = DeviceLoader(images, labels, batch_size=batch_size, device=device, train=True,
                        augment=augment_preset("cifar10"), mean=CIFAR_MEAN, std=CIFAR_STD,
                        channels_last=device.type == "cuda", seed=0)
    sync(device)
    to_device = time.perf_counter() - start
    next(iter(ours))  # first-call overheads (kernel loading, allocator) outside the clock
    ours_ips = max(epoch_rate(ours, device, len(images)) for _ in range(2))
    reference, _ = typical_loaders(train, train, batch_size, workers, pin_memory=device.type == "cuda")
    ours_labels = torch.cat([y.cpu() for _, y in ours])  # one untimed epoch: each image once, with its label
    problems = [] if torch.equal(ours_labels.sort().values, torch.as_tensor(labels).sort().values) else \
        [f"{device}: an epoch of the DeviceLoader did not yield each of the {len(labels)} labels once"]
    ref_ips = epoch_rate(reference, device, len(images))  # worker start-up included, as in every typical epoch
    print(f"{str(device):<5} {'typical DataLoader, ' + str(workers) + ' workers':<34} {ref_ips:>10.0f} {1.0:>7.2f}×")
    print(f"{str(device):<5} {'cnnlab DeviceLoader':<34} {ours_ips:>10.0f} {ours_ips / ref_ips:>7.2f}×  "
          f"(moving the uint8 set to {device}: {to_device:.2f} s, once per run)", flush=True)
    return problems


def main():
    cli = parser(__doc__)
    cli.add_argument("--data", default=str(DEFAULT_CIFAR),
                     help="the CIFAR-10 JPEG tar.gz (default: ../shared/datasets/cifar10-jpeg.tar.gz)")
    cli.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                     help="cpu: the loader on the CPU only; auto/cuda: the CPU and the GPU")
    cli.add_argument("--quick", action="store_true", help="time the loaders on 20,000 training images, not 50,000")
    cli.add_argument("--batch-size", type=int, default=512)
    cli.add_argument("--workers", type=int, help="reference DataLoader workers (default: one per core, 8 on a GPU)")
    cli.add_argument("--skip-prepare", action="store_true", help="only the loader part")
    cli.add_argument("--cache-dir", help="cnnlab's prepared-dataset cache for the loader part")
    args = cli.parse_args()

    devices = [torch.device("cpu")]
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        devices.append(torch.device("cuda"))
    gpu = torch.cuda.get_device_name() if len(devices) > 1 else "none used"
    print(f"machine: {os.cpu_count()} CPU cores ({cpu_name()}); GPU: {gpu}; torch {torch.__version__}; "
          f"file: {args.data}")

    problems = []
    if not args.skip_prepare:
        print("\n== prepare and reload ==")
        problems += bench_prepare(args.data)

    ds = load_dataset("cifar10", args.data, cache_dir=args.cache_dir)
    n = 20_000 if args.quick else len(ds.train)
    keep = subset_indices(len(ds.train), n)
    train = Split(ds.train.images[keep], ds.train.labels[keep])
    print(f"\n== loader alone: {n} training images, batch {args.batch_size}, crop (pad 4) + flip + normalise ==")
    print(f"{'where':<5} {'loader':<34} {'images/s':>10} {'ratio':>8}")
    for device in devices:
        workers = args.workers if args.workers is not None else default_workers(device)
        problems += bench_loader(train, device, args.batch_size, workers)
    exit_if_wrong(problems)  # timings were only printed; wrong data fails


if __name__ == "__main__":
    main()
