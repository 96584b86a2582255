"""`cnnlab train / eval / predict` on the real shared MNIST and CIFAR-10 (skipped where they are absent)."""

import csv
import json
from pathlib import Path

import pytest

from cnnlab.cli import main
from test_data_real import shared

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def train(tmp_path, cache, *argv):
    out = tmp_path / "run"
    assert main(["train", *map(str, argv), "--cache-dir", cache, "--out", str(out)]) == 0
    return out, json.loads((out / "summary.json").read_text())


def test_softmax_regression_on_mnist_reaches_90_percent(tmp_path, cache):
    out, summary = train(tmp_path, cache, "--model", "softmax", "--dataset", "mnist", "--data",
                         shared("mnist-png.tar.gz"), "--epochs", "2", "--lr", "0.1", "--batch-size", "256")
    assert summary["test_top1"] >= 0.90, summary
    for name in ("config.toml", "metrics.csv", "last.pt", "best.pt", "curves.png", "summary.json", "log.txt"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert list(rows[0]) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds",
                             "images_per_second", "step", "elapsed_seconds"]
    assert int(rows[1]["step"]) == 2 * int(rows[0]["step"])
    assert summary["device"].startswith("CPU") and summary["torch"] and summary["best_epoch"] in (1, 2)


def test_mlp_on_mnist_reaches_97_percent(tmp_path, cache):
    _, summary = train(tmp_path, cache, "--config", CONFIGS / "demo-mnist-mlp.toml", "--data",
                       shared("mnist-png.tar.gz"), "--epochs", "4")
    assert summary["test_top1"] >= 0.97, summary


def test_cifar10_subset_with_augmentation(tmp_path, cache):
    _, summary = train(tmp_path, cache, "--model", "mlp", "--dataset", "cifar10", "--data",
                       shared("cifar10-jpeg.tar.gz"), "--subset", "2000", "--epochs", "2", "--lr", "0.01",
                       "--cutout", "8")
    assert summary["dataset"] == "cifar10" and 0.15 < summary["test_top1"] < 0.6  # above chance, honest for an MLP


@pytest.mark.slow
def test_vgg_on_a_cifar10_subset_then_eval_and_predict(tmp_path, cache, capsys):
    data = shared("cifar10-jpeg.tar.gz")
    out, summary = train(tmp_path, cache, "--model", "vgg11_bn", "--dataset", "cifar10", "--data", data,
                         "--subset", "256", "--epochs", "1", "--batch-size", "64", "--lr", "0.01")
    assert summary["model"] == "vgg11_bn" and summary["test_top1"] is not None
    capsys.readouterr()
    assert main(["eval", str(out), "--split", "val"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("val: loss") and "airplane" in text and (out / "confusion_val.png").is_file()
    image = tmp_path / "cat.png"
    from PIL import Image
    import numpy as np

    Image.fromarray(np.full((40, 30, 3), 128, np.uint8)).save(image)
    assert main(["predict", str(out), str(image), "--topk", "3"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(image)) and line.count(",") == 2
