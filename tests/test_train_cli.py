"""`cnnlab train / eval / predict` as a user runs them: on a tiny fixture whose classes are colours (always), and on
the real shared MNIST and CIFAR-10 (skipped where they are absent)."""

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.cli import main
from cnnlab.models import create_model
from data_fixtures import CIFAR10
from test_data_real import shared

@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def train(tmp_path, cache, *argv):
    out = tmp_path / "run"
    assert main(["train", *map(str, argv), "--cache-dir", cache, "--out", str(out)]) == 0
    return out, json.loads((out / "summary.json").read_text())


# One colour per class, far apart, so that a correct pipeline cannot miss and a wrong one cannot guess.
COLOURS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (250, 250, 250), (10, 10, 10)]


def colour_folder(root: Path, per_class=(6, 2), size=8) -> Path:
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "test"), per_class):
        for cls, colour in zip(CIFAR10, COLOURS):
            (root / split / cls).mkdir(parents=True)
            for k in range(n):
                noise = rng.integers(-12, 13, (size, size, 3))
                Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)).save(
                    root / split / cls / f"{k}.png")
    return root


def test_train_then_predict_names_the_right_class_with_the_models_probabilities(tmp_path, capsys):
    data = colour_folder(tmp_path / "colours")
    out = tmp_path / "run"
    assert main(["train", "--model", "softmax", "--dataset", "cifar10", "--data", str(data), "--augment", "none",
                 "--epochs", "4", "--batch-size", "10", "--lr", "0.1", "--momentum", "0.9", "--val-split", "0",
                 "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["test_top1"] == 1.0
    # Images as a user has them: other sizes, a JPEG, an RGBA PNG
    images = []
    for cls, size, fmt in (("cat", (20, 14), "PNG"), ("ship", (40, 40), "JPEG"), ("truck", (8, 8), "PNG")):
        colour = COLOURS[CIFAR10.index(cls)]
        path = tmp_path / f"my {cls}.{fmt.lower()}"
        Image.new("RGBA" if cls == "truck" else "RGB", size, colour).save(path, format=fmt)
        images.append((path, cls))
    # Between two classes the probabilities are far from 0 and 1, so a preprocessing slip would show in them.
    mix = tuple((a + b) // 2 for a, b in zip(COLOURS[CIFAR10.index("cat")], COLOURS[CIFAR10.index("dog")]))
    Image.new("RGB", (12, 12), mix).save(tmp_path / "cat or dog.png")
    images.append((tmp_path / "cat or dog.png", ("cat", "dog")))
    capsys.readouterr()
    assert main(["predict", str(out), *(str(p) for p, _ in images), "--topk", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(images)
    # The reference: the checkpoint's weights applied by hand to the image preprocessed as training saw it.
    checkpoint = torch.load(out / "best.pt", weights_only=True)
    model = create_model(**checkpoint["model_options"])
    model.load_state_dict(checkpoint["model"])
    mean, std = torch.tensor(checkpoint["mean"]), torch.tensor(checkpoint["std"])
    for line, (path, cls) in zip(lines, images):
        prefix, _, rest = line.partition(": ")
        assert prefix == str(path)
        top = [(name, float(p)) for name, p in (item.rsplit(" ", 1) for item in rest.split(", "))]
        assert len(top) == 3 and (top[0][0] == cls or {top[0][0], top[1][0]} == set(cls)), line
        assert [p for _, p in top] == sorted((p for _, p in top), reverse=True) and sum(p for _, p in top) <= 1.001
        with Image.open(path) as im:
            pixels = np.asarray(im.convert("RGB").resize((8, 8), Image.BILINEAR), np.float32) / 255
        x = ((torch.from_numpy(pixels) - mean) / std).permute(2, 0, 1)[None]
        with torch.no_grad():
            probs = torch.softmax(model.eval()(x), 1)[0]
        # the three most probable classes, each with its probability as printed (ties may print in any order)
        assert all(abs(p - float(probs[CIFAR10.index(name)])) <= 5e-4 + 1e-6 for name, p in top), (line, probs)
        assert min(p for _, p in top) >= float(probs.sort(descending=True).values[3]) - 5e-4, (line, probs)

    # Folders (hidden files and non-images skipped) and globs, streamed into a CSV: the same predictions.
    folder = tmp_path / "mine"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(images[0][0], folder / "a.png")
    shutil.copy(images[1][0], folder / "sub" / "b.jpeg")
    shutil.copy(images[0][0], folder / ".hidden.png")
    (folder / "notes.txt").write_text("not an image")
    assert main(["predict", str(out), str(folder), str(tmp_path / "my *.png"), "--topk", "2", "--out",
                 str(tmp_path / "p.csv")]) == 0
    assert capsys.readouterr().out == f"4 predictions → {tmp_path / 'p.csv'}\n"
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    paths = [folder / "a.png", folder / "sub" / "b.jpeg", tmp_path / "my cat.png", tmp_path / "my truck.png"]
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    assert list(rows[0]) == ["path", "top1", "p1", "top2", "p2"]
    assert main(["predict", str(out), *map(str, paths), "--topk", "2"]) == 0
    for row, line in zip(rows, capsys.readouterr().out.splitlines()):
        printed = [item.rsplit(" ", 1) for item in line.partition(": ")[2].split(", ")]
        assert [name for name, _ in printed] == [row["top1"], row["top2"]]
        assert [float(p) for _, p in printed] == pytest.approx([float(row["p1"]), float(row["p2"])], abs=5e-4)
    assert main(["predict", str(out), str(tmp_path / "none*.png"), "--out", str(tmp_path / "q.csv")]) == 2
    assert "names no image files" in capsys.readouterr().err and not (tmp_path / "q.csv").exists()


def test_softmax_regression_on_mnist_reaches_90_percent(tmp_path, cache):
    out, summary = train(tmp_path, cache, "--model", "softmax", "--dataset", "mnist", "--data",
                         shared("mnist-png.tar.gz"), "--epochs", "2", "--lr", "0.1", "--batch-size", "256")
    assert summary["test_top1"] >= 0.90, summary
    for name in ("config.toml", "metrics.csv", "last.pt", "best.pt", "curves.png", "summary.json", "log.txt"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert list(rows[0]) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds",
                             "images_per_second", "step", "elapsed_seconds", "grad_norm"]
    assert int(rows[1]["step"]) == 2 * int(rows[0]["step"])
    assert summary["device"].startswith("CPU") and summary["torch"] and summary["best_epoch"] in (1, 2)


def test_mlp_on_mnist_reaches_97_percent(tmp_path, cache):
    _, summary = train(tmp_path, cache, "--config", "demo-mnist-mlp", "--data",
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
    assert re.match(r"val( \(\d+ images\))?: loss", text) and "airplane" in text, text
    assert (out / "confusion_val.png").is_file() and (out / "reliability_val.png").is_file()
    assert "calibration: expected calibration error" in text
    evaluation = json.loads((out / "eval_val.json").read_text())
    assert 0 <= evaluation["ece"] <= 1 and sum(b["count"] for b in evaluation["calibration"]) == evaluation["n"]
    image = tmp_path / "cat.png"
    from PIL import Image
    import numpy as np

    Image.fromarray(np.full((40, 30, 3), 128, np.uint8)).save(image)
    assert main(["predict", str(out), str(image), "--topk", "3"]) == 0
    path, _, rest = capsys.readouterr().out.strip().partition(": ")
    top = [(name, float(p)) for name, p in (item.rsplit(" ", 1) for item in rest.split(", "))]
    assert path == str(image) and len(top) == 3 and {name for name, _ in top} <= set(CIFAR10), rest
    assert [p for _, p in top] == sorted((p for _, p in top), reverse=True) and 0 < sum(p for _, p in top) <= 1.001
