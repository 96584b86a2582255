"""Mixup and CutMix: the mixed batches and targets, the loss and accuracy on soft targets, exact resume."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnlab import CnnlabError
from cnnlab.config import TrainConfig
from cnnlab.data.loader import DeviceLoader, augment_preset
from cnnlab.data.mix import Mixer
from cnnlab.metrics import Sums, loss_fn

CLASSES = 7


def constant_images(n=16, size=8):
    """Image i is filled with the value 10·i + 5 (float, NCHW): any pixel tells which image it came from."""
    return (torch.arange(n, dtype=torch.float32) * 10 + 5).view(n, 1, 1, 1).expand(n, 3, size, size).clone()


def labels(n=16):
    return torch.arange(n) % CLASSES


def test_cross_entropy_of_mixed_and_smoothed_targets_matches_a_hand_computation():
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0], [0.1, 0.2, 3.0, -2.0]])
    lam, eps, k = 0.3, 0.1, 4
    soft = torch.tensor([[lam, 1 - lam, 0, 0], [0, 0, 1 - lam, lam]])  # (image's label, neighbour's label)
    # By hand: the smoothed mixed target (1 - ε)·soft + ε/k against log-softmax, averaged over the batch.
    expected = 0.0
    for row, target in zip(logits.tolist(), soft.tolist()):
        log_z = np.log(sum(np.exp(v) for v in row))
        expected += -sum(((1 - eps) * t + eps / k) * (v - log_z) for v, t in zip(row, target))
    expected /= 2
    loss = loss_fn("classification", eps)(logits, soft)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # the same as mixing the two smoothed losses of the labels, as timm and torchvision compute it
    a, b = torch.tensor([0, 3]), torch.tensor([1, 2])
    mixed = (lam * F.cross_entropy(logits, a, label_smoothing=eps, reduction="none")
             + (1 - lam) * F.cross_entropy(logits, b, label_smoothing=eps, reduction="none")).mean()
    assert loss.item() == pytest.approx(mixed.item(), rel=1e-6)


def test_mixup_blends_each_image_with_its_neighbour_and_its_target_by_one_lambda():
    x, y = constant_images(), labels()
    mixed, targets = Mixer(CLASSES, mixup=0.4, seed=3)(x, y)
    lam = targets[0, y[0]].item()  # y[0] and its neighbour y[15] differ
    assert 0 < lam < 1 and torch.allclose(targets.sum(1), torch.ones(16))
    expected = torch.stack([lam * x[i] + (1 - lam) * x[i - 1] for i in range(16)])
    torch.testing.assert_close(mixed, expected)
    for i in range(16):
        assert targets[i, y[i]].item() == pytest.approx(lam) and targets[i, y[i - 1]].item() == pytest.approx(1 - lam)


def test_cutmix_pastes_one_box_and_lambda_is_the_share_of_pixels_kept():
    x, y = constant_images(size=10), labels()
    mixer, clipped = Mixer(CLASSES, cutmix=1.0, seed=0), 0
    for _ in range(60):
        mixed, targets = mixer(x, y)
        pasted = mixed != x  # where image i shows its neighbour's value
        assert torch.equal(mixed[pasted], x.roll(1, 0)[pasted])
        box = pasted[0, 0]
        assert (pasted == box).all()  # the same box in every image and channel
        rows, cols = box.any(1).nonzero().flatten(), box.any(0).nonzero().flatten()
        if len(rows):
            assert box.sum() == len(rows) * len(cols) == (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
            clipped += bool(rows[0] == 0 or cols[0] == 0 or rows[-1] == 9 or cols[-1] == 9)
        kept = 1 - box.float().mean().item()
        assert targets[0, y[0]].item() == pytest.approx(kept) and targets[0, y[15]].item() == pytest.approx(1 - kept)
    assert clipped > 5  # boxes cut by the border were among them, and λ followed what they kept


def test_mix_prob_and_the_choice_between_mixup_and_cutmix():
    x, y = constant_images(), labels()
    mixer = Mixer(CLASSES, mixup=1.0, cutmix=1.0, prob=0.5, seed=1)
    kinds = {"none": 0, "mixup": 0, "cutmix": 0}
    for _ in range(400):
        mixed, targets = mixer(x, y)
        if torch.equal(targets, F.one_hot(y, CLASSES).float()):
            kinds["none"] += torch.equal(mixed, x)
        elif ((mixed == x) | (mixed == x.roll(1, 0))).all():
            kinds["cutmix"] += 1
        else:
            kinds["mixup"] += 1
    assert sum(kinds.values()) == 400
    assert 160 < kinds["none"] < 240 and 60 < kinds["cutmix"] < 140 and 60 < kinds["mixup"] < 140


def test_accuracy_of_mixed_batches_counts_the_dominant_label():
    soft = torch.tensor([[0.7, 0.3, 0.0], [0.2, 0.0, 0.8], [0.0, 0.6, 0.4], [0.45, 0.55, 0.0]])
    out = torch.tensor([[5.0, 0, 0], [0, 0, 5.0], [0, 0, 5.0], [5.0, 0, 0]])  # dominant, dominant, minor, minor
    sums = Sums("cpu", "classification", 3)
    sums.add(torch.tensor(1.0), out, soft)
    assert sums.result()["acc"] == 0.5


def test_only_training_batches_are_mixed():
    x = np.random.default_rng(0).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    augment = augment_preset("cifar10", mixup=0.2, cutmix=1.0)
    train = DeviceLoader(x, np.arange(40) % CLASSES, batch_size=16, train=True, augment=augment,
                         num_classes=CLASSES)
    evaluation = DeviceLoader(x, np.arange(40) % CLASSES, batch_size=16, augment=augment, num_classes=CLASSES)
    assert all(yb.shape == (len(xb), CLASSES) for xb, yb in train)
    assert torch.equal(torch.cat([yb for _, yb in evaluation]), torch.arange(40) % CLASSES)
    with pytest.raises(CnnlabError, match="num_classes"):
        DeviceLoader(x, np.arange(40) % CLASSES, batch_size=16, train=True, augment=augment)


def test_a_resumed_loader_mixes_and_augments_as_the_uninterrupted_one():
    x = np.random.default_rng(0).integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)
    augment = augment_preset("cifar10", mixup=0.4, cutmix=1.0, mix_prob=0.7, auto_augment="trivialaugment")

    def loader(seed):
        return DeviceLoader(x, np.arange(50) % CLASSES, batch_size=10, train=True, augment=augment,
                            num_classes=CLASSES, seed=seed)

    first = loader(0)
    list(first)
    state = first.state_dict()
    expected = list(first)
    other = loader(99)
    other.load_state_dict(state)
    resumed = list(other)
    assert len(resumed) == len(expected) == 5
    for (x1, y1), (x2, y2) in zip(expected, resumed):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


@pytest.mark.parametrize("flags, match", [
    (dict(mix_prob=0.0), "--mix-prob"), (dict(mixup=-0.2), "--mixup"), (dict(cutmix=float("nan")), "--cutmix"),
    (dict(randaugment_m=31), "--randaugment-m"), (dict(randaugment_n=0), "--randaugment-n"),
    (dict(auto_augment="autoaugment"), "--auto-augment"),
])
def test_bad_mixing_and_auto_augment_settings_are_one_line_errors(flags, match):
    with pytest.raises(CnnlabError, match=match):
        TrainConfig(**flags).validate()


def test_a_run_with_mixing_and_auto_augment_resumes_exactly_and_says_how_it_measures(tmp_path):
    from data_fixtures import write_image_folder

    from cnnlab.engine import fit

    folder, _ = write_image_folder(tmp_path / "tree", per_class=8)
    base = dict(model="mlp", dataset="cifar10", data=str(folder), hidden=[32], epochs=2, batch_size=16, lr=0.05,
                cache_dir=str(tmp_path / "cache"), val_split=0.25, seed=5, label_smoothing=0.1, mixup=0.4,
                cutmix=1.0, mix_prob=0.8, auto_augment="randaugment")
    fit(TrainConfig(**base, out=str(tmp_path / "straight")))
    with pytest.raises(SystemExit):
        fit(TrainConfig(**base, out=str(tmp_path / "broken")), should_stop=lambda epoch, step: (epoch, step) == (1, 2))
    fit(None, resume=str(tmp_path / "broken"))
    rows = [(tmp_path / run / "metrics.csv").read_text().splitlines() for run in ("straight", "broken")]
    columns = rows[0][0].split(",")
    kept = [i for i, c in enumerate(columns) if c not in ("epoch_seconds", "images_per_second", "elapsed_seconds")]
    assert [[r.split(",")[i] for i in kept] for r in rows[0]] == [[r.split(",")[i] for i in kept] for r in rows[1]]
    log = (tmp_path / "broken" / "log.txt").read_text()
    assert log.count("train acc against each image's dominant label") == 1
    assert "as timm does" in log


def test_mixing_and_auto_augment_refuse_data_they_cannot_work_on(tmp_path, monkeypatch):
    from data_fixtures import wnids, write_image_folder

    from cnnlab.engine import fit

    with pytest.raises(CnnlabError, match="--mixup augments images, but synthetic-linear holds feature vectors"):
        fit(TrainConfig(model="linreg", dataset="synthetic-linear", mixup=0.2, out=str(tmp_path / "a")))
    folder, _ = write_image_folder(tmp_path / "imagenet", classes=wnids(2), per_class=2, splits=("train", "val"))
    with pytest.raises(CnnlabError, match="--auto-augment works on datasets held in memory; imagenet is streamed"):
        fit(TrainConfig(model="mlp", dataset="imagenet", data=str(folder), auto_augment="trivialaugment",
                        out=str(tmp_path / "b")))
    monkeypatch.setattr("cnnlab.build._device", lambda config, d: torch.device("mps"))  # no float64 there
    with pytest.raises(CnnlabError, match="Apple's MPS lacks; use --device cpu"):
        fit(TrainConfig(model="mlp", dataset="imagenet", data=str(folder), auto_augment="trivialaugment",
                        out=str(tmp_path / "c")))
    assert not any((tmp_path / run).exists() for run in "abc")
