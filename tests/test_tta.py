"""Test-time augmentation as a run, `eval` and `predict` apply it (the formula itself: test_speedrun.py).

Softmax regression is a fixed linear map of the whole image, so it gives every view (mirror, shifts) its own logits:
averaging them moves the loss and the probabilities, and a path that skips the views shows.
"""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnlab.config import TrainConfig
from cnnlab.engine import fit
from cnnlab.evaluate import evaluate_run, predict
from cnnlab.models import create_model
from cnnlab.tta import tta_logits
from data_fixtures import CIFAR10, write_image_folder


@pytest.fixture(scope="module")
def tta_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tta")
    folder, truth = write_image_folder(root / "tree", per_class=4, size=8)
    run = fit(TrainConfig(model="softmax", dataset="cifar10", data=str(folder), epochs=1, batch_size=10, lr=0.1,
                          augment="none", val_split=0.5, tta="flip-translate", precision="fp32", device="cpu",
                          cache_dir=str(root / "cache"), out=str(root / "run"))).path
    return run, folder, truth


def by_hand(run: Path, images: list[np.ndarray], tta: str) -> torch.Tensor:
    """best.pt's logits for uint8 (H, W, C) images, normalised as training saw them, averaged over `tta`'s views."""
    checkpoint = torch.load(run / "best.pt", weights_only=True)
    model = create_model(**checkpoint["model_options"])
    model.load_state_dict(checkpoint["model"])
    mean, std = torch.tensor(checkpoint["mean"]), torch.tensor(checkpoint["std"])
    x = ((torch.from_numpy(np.stack(images)).float() / 255 - mean) / std).permute(0, 3, 1, 2)
    with torch.no_grad():
        return tta_logits(model.eval(), x, tta)


def test_the_run_and_eval_test_with_the_runs_tta(tta_run):
    run, _, truth = tta_run
    names = sorted(n for n in truth if n.startswith("test/"))
    labels = torch.tensor([CIFAR10.index(n.split("/")[1]) for n in names])
    tested = F.cross_entropy(by_hand(run, [truth[n] for n in names], "flip-translate"), labels).item()
    plain = F.cross_entropy(by_hand(run, [truth[n] for n in names], "none"), labels).item()
    assert abs(tested - plain) > 1e-3  # the views move the loss: a pass without them cannot match
    summary = json.loads((run / "summary.json").read_text())
    assert summary["tta"] == "flip-translate"
    assert summary["test_loss"] == pytest.approx(tested, abs=1e-5), (summary["test_loss"], tested, plain)
    assert evaluate_run(run, "test")["loss"] == pytest.approx(tested, abs=1e-5)
    # Validation averages the views too: eval's val pass (which reads tta from the run's config) repeats the
    # loss the run logged for its one epoch.
    with open(run / "metrics.csv", newline="") as f:
        (row,) = csv.DictReader(f)
    assert evaluate_run(run, "val")["loss"] == pytest.approx(float(row["val_loss"]), abs=1e-5)


def test_predict_gives_the_probabilities_of_the_runs_tta(tta_run):
    run, folder, truth = tta_run
    names = sorted(n for n in truth if n.startswith("test/"))[:6]
    averaged = torch.softmax(by_hand(run, [truth[n] for n in names], "flip-translate"), 1)
    plain = torch.softmax(by_hand(run, [truth[n] for n in names], "none"), 1)
    assert (averaged - plain).abs().max() > 1e-3
    for (path, top), expected in zip(predict(run, [folder / n for n in names], topk=10), averaged):
        assert len(top) == 10
        got = torch.tensor([dict(top)[c] for c in CIFAR10])
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
