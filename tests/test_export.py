"""`cnnlab eval --save-predictions`."""

import csv
import json

import numpy as np
import pytest

from cnnlab.cli import main
from cnnlab.evaluate import load_model
from data_fixtures import write_image_folder

MODELS = {"mlp": ["--hidden", "16"], "resnet18": [], "speednet": ["--hidden", "8,16,16"]}  # resnet18: CIFAR stem


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A CIFAR-10-named image folder of 32-px PNGs: 10 classes × 2 train and 2 test images."""
    root, _ = write_image_folder(tmp_path_factory.mktemp("tree"), per_class=2)
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tree):
    """One trained run folder per model, trained on first use (one epoch on the CPU)."""
    root, made = tmp_path_factory.mktemp("runs"), {}

    def run(model):
        if model not in made:
            assert main(["train", "--device", "cpu", "--cache-dir", str(root / "cache"), "--out", str(root / model),
                         "--model", model, *MODELS[model], "--data", str(tree), "--epochs", "1", "--batch-size",
                         "10", "--val-split", "0"]) == 0
            made[model] = root / model
        return made[model]

    return run


def test_saved_predictions_agree_with_the_reported_accuracy(runs, tmp_path, capsys):
    run = runs("mlp")
    capsys.readouterr()
    assert main(["eval", str(run), "--save-predictions"]) == 0
    assert f"predictions: {run / 'predictions_test.npz'}" in capsys.readouterr().out
    accuracy = json.loads((run / "eval_test.json").read_text())["acc"]
    saved = np.load(run / "predictions_test.npz")
    assert saved["logits"].shape == saved["probabilities"].shape == (20, 10)
    assert saved["predicted"].shape == saved["label"].shape == (20,)
    assert list(saved["classes"]) == load_model(run)[1]["classes"]
    np.testing.assert_allclose(saved["probabilities"].sum(1), 1, atol=1e-6)
    assert (saved["predicted"] == saved["logits"].argmax(1)).all()
    assert np.mean(saved["predicted"] == saved["label"]) == pytest.approx(accuracy, abs=1e-6)

    assert main(["eval", str(run), "--save-predictions", str(tmp_path / "p.csv")]) == 0
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["index", "label", "predicted", *(f"prob_{c}" for c in saved["classes"])]
    assert [int(r[0]) for r in rows[1:]] == list(range(20))
    assert [int(r[1]) for r in rows[1:]] == saved["label"].tolist()
    assert [int(r[2]) for r in rows[1:]] == saved["predicted"].tolist()
    np.testing.assert_allclose(np.array([r[3:] for r in rows[1:]], float), saved["probabilities"], atol=1e-5)
