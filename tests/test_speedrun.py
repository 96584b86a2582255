"""The speedrun's parts, each against a reference: speednet's layers, the whitening init, reflect-padded shifts,
alternating flips, the batch-norm lr groups, Lookahead averaging, test-time augmentation and the shipped preset."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnlab import CnnlabError
from cnnlab.averaging import DECAY_BASE, EVERY, Lookahead
from cnnlab.config import TrainConfig
from cnnlab.data.loader import DeviceLoader, augment_preset, random_crop
from cnnlab.engine import fit
from cnnlab.tta import tta_logits
from cnnlab.models import count_params, create_model
from cnnlab.models.speednet import Conv
from cnnlab.optim import build_optimizer
from cnnlab.presets import preset_path
from data_fixtures import write_image_folder
from test_data_real import shared

PRESET = preset_path("speedrun-cifar10")


def test_speednet_parameter_count_adds_up_layer_by_layer():
    whiten = 24 * 3 * 2 * 2 + 24
    convs = 9 * (24 * 64 + 64 * 64 + 64 * 256 + 256 * 256 + 256 * 256 + 256 * 256)
    norms = 2 * 2 * (64 + 256 + 256)  # γ and β of two BN layers per group (γ frozen, still a parameter)
    head = 256 * 10
    model = create_model("speednet")
    assert count_params(model) == whiten + convs + norms + head == 1_972_792
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "whiten.weight" in frozen and all(n == "whiten.weight" or n.endswith("norm1.weight")
                                             or n.endswith("norm2.weight") for n in frozen)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert create_model("speednet", 200, image_size=64)(torch.randn(2, 3, 64, 64)).shape == (2, 200)


def test_speednet_convs_start_as_identity_on_their_first_channels():
    conv = Conv(8, 16)
    x = torch.randn(2, 8, 6, 6)
    assert torch.allclose(conv(x)[:, :8], x, atol=1e-6)


def test_whitening_filters_decorrelate_patches():
    torch.manual_seed(0)
    mix = torch.tensor([[1.0, 0.8, 0.6], [0.0, 0.5, 0.3], [0.0, 0.0, 0.2]])
    images = torch.einsum("dc,nchw->ndhw", mix, torch.randn(200, 3, 16, 16))
    images = images + 0.5 * torch.roll(images, 1, dims=3)  # neighbouring pixels correlate too
    model = create_model("speednet")
    model.init_from_data(images, eps=1e-8)
    out = F.conv2d(images, model.whiten.weight[:12])  # the + half; the − half is its negative
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12)
    covariance = flat.T @ flat / len(flat)
    assert torch.allclose(covariance, torch.eye(12), atol=2e-3)
    assert torch.equal(model.whiten.weight[12:], -model.whiten.weight[:12])


def test_reflect_shift_is_a_window_of_the_mirror_padded_image():
    x = torch.randint(0, 256, (30, 8, 8, 3), dtype=torch.uint8)
    out = random_crop(x, 2, torch.Generator().manual_seed(0), reflect=True)
    padded = F.pad(x.permute(0, 3, 1, 2).float(), (2, 2, 2, 2), mode="reflect").permute(0, 2, 3, 1).to(torch.uint8)
    offsets = set()
    for i in range(30):
        matches = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(out[i], padded[i, dy:dy + 8, dx:dx + 8])]
        assert matches, i
        offsets.add(matches[0])
    assert len(offsets) > 5
    with pytest.raises(CnnlabError, match="needs images larger"):
        random_crop(x[:, :2, :2], 2, torch.Generator(), reflect=True)


def test_alternating_flips_show_each_image_both_ways_every_two_epochs_and_survive_a_resume():
    n = 64
    images = np.zeros((n, 4, 4, 3), dtype=np.uint8)
    images[:, :, 0] = 255  # bright left column: a mirrored image has it on the right
    augment = augment_preset("speedrun", crop_padding=0)

    def flipped_per_epoch(loader, epochs):
        seen = []
        for _ in range(epochs):
            flags = torch.zeros(n, dtype=torch.bool)
            for x, y in loader:
                flags[y] = x[:, 0, 0, 3] > x[:, 0, 0, 0]
            seen.append(flags)
        return seen

    loader = DeviceLoader(images, np.arange(n), batch_size=16, train=True, augment=augment, seed=3)
    e1, e2, e3 = flipped_per_epoch(loader, 3)
    assert 16 < int(e1.sum()) < 48  # about half mirrored in the first epoch
    assert torch.equal(e2, ~e1) and torch.equal(e3, e1)

    resumed = DeviceLoader(images, np.arange(n), batch_size=16, train=True, augment=augment, seed=3)
    flipped_per_epoch(resumed, 1)
    state = resumed.state_dict()
    fresh = DeviceLoader(images, np.arange(n), batch_size=16, train=True, augment=augment, seed=3)
    fresh.load_state_dict(state)
    assert torch.equal(flipped_per_epoch(fresh, 1)[0], e2)


def test_norm_lr_scale_gives_batch_norm_parameters_a_faster_group_with_the_same_decay_per_step():
    model = create_model("speednet", hidden=[8, 8, 8])
    config = TrainConfig(model="speednet", lr=0.5, weight_decay=0.01, decay_all=True, norm_lr_scale=64)
    groups = build_optimizer(model, config).param_groups
    norm = [g for g in groups if g["lr"] != 0.5]
    assert len(norm) == 1 and norm[0]["lr"] == 32.0 and norm[0]["weight_decay"] == pytest.approx(0.01 / 64)
    shifts = {id(m.bias) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert {id(p) for p in norm[0]["params"]} == shifts
    plain = build_optimizer(model, TrainConfig(model="speednet", lr=0.1, weight_decay=0.01)).param_groups
    assert [g["lr"] for g in plain] == [0.1, 0.1]  # scale 1: the usual decay / no-decay pair


def test_lookahead_pulls_weights_to_their_moving_average():
    model = torch.nn.Linear(2, 1, bias=False)
    look = Lookahead(model, start_step=5, total_steps=100)
    with torch.no_grad():
        model.weight.fill_(1.0)
    look.step(5)  # not after the start yet: nothing
    assert look.average is None
    look = Lookahead(model, start_step=4, total_steps=100)
    look.step(5)  # first due step after the start: the average starts at the current weights
    with torch.no_grad():
        model.weight.fill_(3.0)
    look.step(7)  # not a multiple of EVERY
    assert torch.all(model.weight == 3.0)
    look.step(10)
    decay = DECAY_BASE ** EVERY * (10 / 100) ** 3
    expected = decay * 1.0 + (1 - decay) * 3.0
    assert torch.allclose(model.weight, torch.full((1, 2), expected)) and torch.equal(model.weight, look.average["weight"])
    restored = Lookahead(model, 4, 100)
    restored.load_state_dict(look.state_dict())
    assert torch.equal(restored.average["weight"], look.average["weight"])


def test_tta_averages_the_views():
    # A fixed linear map of the whole image: unlike a spatial mean it gives every view (mirror, shifts, shifted
    # mirrors) its own logits, so a dropped, repeated or misplaced view changes the average.
    torch.manual_seed(0)
    n, c, h, w = 2, 3, 5, 6
    weights = torch.randn(c * h * w, 7)
    x = torch.randn(n, c, h, w)
    calls = []

    def f(v):
        return v.flatten(1) @ weights

    def model(v):
        calls.append(v.clone())
        return f(v)

    def mirror(v):
        return v[..., torch.arange(w - 1, -1, -1)]

    def shift(v, dy, dx):
        """The image moved by (dy, dx) pixels, the uncovered border filled by reflection (no edge repeat)."""
        def reflect(i, size):
            i = i.abs()
            return torch.where(i > size - 1, 2 * (size - 1) - i, i)
        return v[:, :, reflect(torch.arange(h) - dy, h)][:, :, :, reflect(torch.arange(w) - dx, w)]

    down_right, up_left = shift(x, 1, 1), shift(x, -1, -1)
    assert torch.equal(down_right[:, :, 1:, 1:], x[:, :, :-1, :-1]) and torch.equal(down_right[..., 0, 0], x[..., 1, 1])
    assert torch.equal(up_left[:, :, :-1, :-1], x[:, :, 1:, 1:]) and torch.equal(up_left[..., -1, -1], x[..., -2, -2])

    assert torch.equal(tta_logits(model, x, "none"), f(x))
    calls.clear()
    torch.testing.assert_close(tta_logits(model, x, "flip"), (f(x) + f(mirror(x))) / 2)
    assert len(calls) == 2 and torch.equal(calls[0], x) and torch.equal(calls[1], mirror(x))

    # flip-translate: the image and its mirror weigh 1/4 each; each 1-pixel shift (down-right and up-left,
    # borders mirrored) and the mirror of each shifted image weigh 1/8 each
    views = [x, mirror(x), down_right, mirror(down_right), up_left, mirror(up_left)]
    assert len({tuple(f(v)[0].tolist()) for v in views}) == 6  # the stand-in tells all six views apart
    expected = ((f(x) + f(mirror(x))) / 4
                + (f(down_right) + f(mirror(down_right)) + f(up_left) + f(mirror(up_left))) / 8)
    calls.clear()
    out = tta_logits(model, x, "flip-translate")
    assert len(calls) == 6 and all(sum(torch.equal(call, v) for call in calls) == 1 for v in views)
    torch.testing.assert_close(out, expected)


def test_speedrun_features_resume_exactly(tmp_path):
    """Alternating flips, reflect shifts, Lookahead, the BN lr group and TTA through a mid-epoch interrupt."""
    data, _ = write_image_folder(tmp_path / "tree", per_class=10)
    base = dict(TrainConfig.from_toml(PRESET).__dict__, data=str(data), cache_dir=str(tmp_path / "cache"),
                hidden=[4, 8, 8], epochs=4, batch_size=16, lookahead_epoch=2, precision="fp32", checkpoint_every=1,
                device="cpu")
    fit(TrainConfig(**dict(base, out=str(tmp_path / "straight"))))
    with pytest.raises(SystemExit):
        fit(TrainConfig(**dict(base, out=str(tmp_path / "broken"))),
            should_stop=lambda epoch, step: epoch == 3 and step == 2)
    fit(None, resume=str(tmp_path / "broken"))
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "broken" / "last.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["lookahead"]["average"] is not None
    summary = json.loads((tmp_path / "broken" / "summary.json").read_text())
    assert summary["tta"] == "flip-translate" and summary["val_size"] == 0 and summary["train_seconds"] > 0


def test_the_speedrun_preset_validates_and_trains_on_the_real_cifar10(tmp_path):
    config = TrainConfig.from_toml(PRESET).validate()
    assert (config.model, config.val_split, config.batch_size, config.tta) == ("speednet", 0.0, 1024, "flip-translate")
    small = dict(config.__dict__, data=shared("cifar10-jpeg.tar.gz"), subset=3000, hidden=[16, 32, 32], epochs=2, warmup_epochs=0.5,
                 batch_size=256, precision="fp32", device="cpu", out=str(tmp_path / "run"))
    summary = json.loads((fit(TrainConfig(**small)).path / "summary.json").read_text())
    assert 0.25 < summary["test_top1"] < 0.8, summary  # learns well above chance (10 %) in two small epochs
