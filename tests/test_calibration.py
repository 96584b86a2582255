"""Expected calibration error and the reliability diagram, checked by hand."""

import numpy as np
import pytest
from PIL import Image

from cnnlab.calibration import calibration, save_reliability


def test_ece_by_hand():
    # two examples at confidence 0.9 (one right: accuracy 0.5), two at 0.6 (both right: accuracy 1.0)
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    result = calibration(probabilities, np.array([0, 1, 0, 0]))
    # ECE = 2/4 · |0.5 − 0.9| + 2/4 · |1.0 − 0.6| = 0.4
    assert result["ece"] == pytest.approx(0.4)
    filled = [b for b in result["bins"] if b["count"]]
    assert [(b["count"], b["confidence"], b["accuracy"]) for b in filled] == [(2, 0.6, 1.0), (2, 0.9, 0.5)]
    assert filled[0]["hi"] == pytest.approx(0.6)  # bins are (lo, hi]: 0.6 belongs to the bin ending at 0.6
    assert len(result["bins"]) == 15 and sum(b["count"] for b in result["bins"]) == 4


def test_a_calibrated_model_has_a_small_ece_and_an_overconfident_one_a_large_one():
    rng = np.random.default_rng(0)
    n, k = 20000, 10
    confidence = rng.uniform(0.1, 1.0, n)
    predicted = rng.integers(0, k, n)
    probabilities = np.full((n, k), 0.0)
    probabilities[np.arange(n), predicted] = confidence
    rest = (1 - confidence) / (k - 1)  # spread the rest so the predicted class stays the top one
    probabilities += np.where(probabilities == 0, rest[:, None], 0)
    right = rng.uniform(size=n) < confidence  # right exactly as often as the confidence says
    labels = np.where(right, predicted, (predicted + 1) % k)
    calibrated = calibration(probabilities, labels)["ece"]
    assert calibrated < 0.02
    sharpened = probabilities ** 4 / (probabilities ** 4).sum(1, keepdims=True)  # same ranking, overconfident
    assert calibration(sharpened, labels)["ece"] > 0.1 + calibrated


def test_the_reliability_diagram_is_a_png(tmp_path):
    probabilities = np.array([[0.9, 0.1], [0.7, 0.3], [0.55, 0.45]])
    path = save_reliability(calibration(probabilities, np.array([0, 1, 0])), tmp_path / "r.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 300 and im.height > 300
