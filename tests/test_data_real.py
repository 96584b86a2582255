"""The real files in ../shared/datasets (skipped where they are absent)."""

import os
from pathlib import Path

import pytest

from cnnlab.cli import main

SHARED = Path(os.environ.get("CNNLAB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "datasets"))


def shared(name):
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


def info(capsys, tmp_path, path, *extra):
    assert main(["data", "info", str(path), "--cache-dir", str(tmp_path), *extra]) == 0
    return capsys.readouterr().out


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
