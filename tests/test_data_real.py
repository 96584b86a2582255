"""The real files in ../shared/datasets (skipped where they are absent).

The fast tests read each real archive's listing with cnnlab's own reader and decode a few of its images through
the whole pipeline (a small archive of the real members), checking labels against the known class names and pixels
against PIL; the `slow` ones decode everything.
"""

import io
import os
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.cli import main
from cnnlab.data import load_dataset
from cnnlab.data.official import checksum_status
from cnnlab.data.source import open_source
from data_fixtures import CIFAR10

SHARED = Path(os.environ.get("CNNLAB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "datasets"))


def shared(name):
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


def info(capsys, tmp_path, path, *extra):
    assert main(["data", "info", str(path), "--cache-dir", str(tmp_path), *extra]) == 0
    return capsys.readouterr().out


def real_subset(path: Path, per_class: int, out: Path):
    """List a real `split/class/file` archive with cnnlab's reader. Returns the image count per (split, class), the
    first `per_class` members of each split and class with their bytes, and a tar.gz of just those members."""
    source = open_source(path)
    names = [n for n in source.names() if n.count("/") == 2]
    counts = Counter(tuple(n.split("/")[:2]) for n in names)
    picked, taken = {}, Counter()
    for name in names:
        key = tuple(name.split("/")[:2])
        if taken[key] < per_class:
            taken[key] += 1
            picked[name] = source.read(name)
    with tarfile.open(out, "w:gz") as tar:
        for name, data in picked.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return counts, picked, out


def check_images_and_labels(ds, picked: dict, mode: str) -> None:
    """Each picked member is in its split once, decoded as PIL decodes it, labelled with its folder's class."""
    for name, data in picked.items():
        split, cls, _ = name.split("/")
        with Image.open(io.BytesIO(data)) as im:
            expected = np.asarray(im.convert(mode)).reshape(ds.image_shape)
        images = ds.splits[split].images
        where = np.flatnonzero((images == expected).all(axis=(1, 2, 3)))
        assert len(where) == 1, (name, where)
        assert ds.classes[ds.splits[split].labels[where[0]]] == cls, name


def test_cifar10_jpeg_listing_and_a_decoded_subset(tmp_path):
    path = shared("cifar10-jpeg.tar.gz")
    counts, picked, subset = real_subset(path, 2, tmp_path / "subset.tar.gz")
    assert counts == {(split, c): n for split, n in (("train", 5000), ("test", 1000)) for c in CIFAR10}
    assert checksum_status(path).startswith("not an official archive")  # the JPEG re-encoding, not the python one
    ds = load_dataset(None, subset, cache_dir=tmp_path / "cache")
    assert (ds.name, ds.classes, ds.image_shape) == ("cifar10", CIFAR10, (32, 32, 3))
    assert len(ds.train) == len(ds.test) == 20 and sorted(ds.train.labels.tolist()) == sorted(list(range(10)) * 2)
    check_images_and_labels(ds, picked, "RGB")


def test_mnist_png_listing_and_a_decoded_subset(tmp_path):
    path = shared("mnist-png.tar.gz")
    counts, picked, subset = real_subset(path, 2, tmp_path / "subset.tar.gz")
    assert sorted({c for _, c in counts}) == [str(d) for d in range(10)]
    assert sum(n for (split, _), n in counts.items() if split == "train") == 60000
    assert sum(n for (split, _), n in counts.items() if split == "test") == 10000
    assert counts["train", "1"] == 6742 and counts["test", "5"] == 892  # MNIST's published class sizes
    ds = load_dataset(None, subset, cache_dir=tmp_path / "cache")
    assert (ds.name, ds.classes, ds.image_shape) == ("mnist", [str(d) for d in range(10)], (28, 28, 1))
    assert len(ds.train) == len(ds.test) == 20
    check_images_and_labels(ds, picked, "L")


def test_tinyimagenet_sample_labels_follow_the_annotations(tmp_path):
    path = shared("tiny-imagenet-200-sample.tar.gz")
    with tarfile.open(path) as tar:  # read independently of cnnlab: the metadata files and the val images
        files = {m.name.removeprefix("tiny-imagenet-200/"): tar.extractfile(m).read() for m in tar
                 if m.isfile() and (m.name.endswith(".txt") and "_boxes" not in m.name or "/val/images/" in m.name)}
    words = dict(line.split("\t", 1) for line in files["words.txt"].decode().splitlines())
    wnids = sorted(files["wnids.txt"].decode().split())
    annotations = dict(line.split("\t")[:2] for line in files["val/val_annotations.txt"].decode().splitlines())
    ds = load_dataset(None, path, cache_dir=tmp_path / "cache")
    assert ds.name == "tinyimagenet" and len(ds.classes) == len(wnids) == 200
    assert ds.classes == [words[w].split(",")[0].strip() for w in wnids]  # the first synonym, wnids sorted
    assert ds.classes[wnids.index("n01443537")] == "goldfish"
    # every labelled val image (cnnlab's test split), found by its pixels, carries its annotation's class
    label_of = {image.tobytes(): int(label) for image, label in zip(ds.test.images, ds.test.labels)}
    assert len(ds.test) == len(label_of) == len(annotations) == 1000
    for name, wnid in annotations.items():
        with Image.open(io.BytesIO(files[f"val/images/{name}"])) as im:
            assert wnids[label_of[np.asarray(im.convert("RGB")).tobytes()]] == wnid, name


def test_tinyimagenet_sample_info(capsys, tmp_path):
    out = info(capsys, tmp_path, shared("tiny-imagenet-200-sample.tar.gz"))
    assert "format:     tinyimagenet" in out
    assert "classes:    200 (goldfish" in out
    assert "image size: 64×64, 3 channels" in out
    assert "train:" in out and " 2000 images, 10 per class" in out
    assert "test (official val):" in out and " 1000 images" in out
    assert "unlabelled:" in out and " 100 images" in out


@pytest.mark.slow
def test_cifar10_jpeg_info(capsys, tmp_path):
    out = info(capsys, tmp_path, shared("cifar10-jpeg.tar.gz"))
    assert "dataset:    cifar10" in out
    assert "classes:    10 (airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck)" in out
    assert "50000 images, 5000 per class" in out and "10000 images, 1000 per class" in out
    assert "not an official archive" in out


@pytest.mark.slow
def test_mnist_png_info(capsys, tmp_path):
    out = info(capsys, tmp_path, shared("mnist-png.tar.gz"))
    assert "dataset:    mnist" in out and "28×28, 1 channel" in out
    assert "60000 images" in out and "10000 images" in out
