"""Preparing and reloading CIFAR-10 (60,000 JPEGs in a tar.gz) against the typical pipeline, in the same run.

Reference ("typical"): tarfile reads each member and PIL decodes each image in one process — what a plain
Dataset/ImageFolder-style loop does. cnnlab: its ustar walk + forked decode into uint8 arrays, then the
.npy cache. Targets from the data issue: prepare ≤ 10 s on 2 cores, reload ≤ 1 s.

    python benchmarks/bench_data.py --data ../shared/datasets/cifar10-jpeg.tar.gz
"""

import argparse
import io
import os
import tarfile
import tempfile
import time

import numpy as np
from PIL import Image

from cnnlab.data import load_dataset


def typical(path):
    images, labels, classes = [], [], {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3:
                continue
            with Image.open(io.BytesIO(tar.extractfile(member).read())) as im:
                images.append(np.asarray(im.convert("RGB")))
            labels.append(classes.setdefault(parts[1], len(classes)))
    return np.stack(images), np.array(labels)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/datasets/cifar10-jpeg.tar.gz")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPU cores; file: {args.data}")

    start = time.perf_counter()
    ref_images, _ = typical(args.data)
    t_ref = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        ds = load_dataset(None, args.data, cache_dir=cache)
        t_prepare = time.perf_counter() - start
        start = time.perf_counter()
        again = load_dataset(None, args.data, cache_dir=cache)
        t_reload = time.perf_counter() - start
    n = len(ds.train) + len(ds.test)
    assert n == len(ref_images) and np.array_equal(again.train.images, ds.train.images)
    print(f"{'step':<34} {'seconds':>8} {'target':>8} {'vs typical':>11}")
    print(f"{'typical: tarfile + PIL, 1 process':<34} {t_ref:>8.2f} {'':>8} {1.0:>10.2f}×")
    print(f"{'cnnlab prepare (first use)':<34} {t_prepare:>8.2f} {'≤ 10':>8} {t_ref / t_prepare:>10.2f}×")
    print(f"{'cnnlab reload (cached)':<34} {t_reload:>8.2f} {'≤ 1':>8} {t_ref / t_reload:>10.2f}×")
    print(f"{n} images; prepare {'meets' if t_prepare <= 10 else 'MISSES'} its target, "
          f"reload {'meets' if t_reload <= 1 else 'MISSES'} its target")


if __name__ == "__main__":
    main()
