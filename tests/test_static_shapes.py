"""--static-shapes: training batches all full (the rest of each epoch's order skipped, a different rest each epoch),
evaluation batches padded to one size with the padding left out of every metric."""

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from cnnlab import CnnlabError, runfiles
from cnnlab.config import TrainConfig
from cnnlab.data.loader import DeviceLoader
from cnnlab.engine import evaluate, fit, pad_batch
from cnnlab.evaluate import evaluate_run
from cnnlab.run_data import build_data
from cnnlab.models import create_model
from data_fixtures import write_image_folder


def images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), rng.integers(0, 10, n)


def test_a_static_training_loader_yields_full_batches_and_skips_a_different_rest_each_epoch():
    x, y = images(10)
    loader = DeviceLoader(x, y, batch_size=4, train=True, drop_last=True, seed=3)
    assert len(loader) == 2 and loader.skipped == 2 and loader.steps_per_epoch == 2
    seen = []
    for _ in range(6):
        batches = list(loader)
        assert [len(b[1]) for b in batches] == [4, 4]
        seen.append(frozenset(loader.order[8:].tolist()))  # the two images this epoch skipped
    assert len(set(seen)) > 1  # not the same two every epoch
    assert DeviceLoader(x, y, batch_size=4, train=True).skipped == 0  # without drop_last nothing is skipped


def test_pad_batch_appends_copies_of_the_last_image_and_keeps_the_memory_format():
    x = torch.randn(3, 3, 4, 4).to(memory_format=torch.channels_last)
    padded = pad_batch(x, 5)
    assert padded.shape == (5, 3, 4, 4) and padded.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(padded[:3], x) and torch.equal(padded[3], x[2]) and torch.equal(padded[4], x[2])
    assert pad_batch(x, 3) is x and pad_batch(x, 2) is x


@pytest.mark.parametrize("tta", ["none", "flip-translate"])
def test_padded_evaluation_gives_the_metrics_of_the_real_images_and_one_input_shape(tta):
    x, y = images(23, seed=1)
    torch.manual_seed(0)
    model = create_model("resnet18", 10, image_size=8).eval()  # batch norm: each image on its own in eval mode
    shapes = []
    model.register_forward_pre_hook(lambda _, args: shapes.append(tuple(args[0].shape)))
    plain = DeviceLoader(x, y, batch_size=8)
    padded = DeviceLoader(x, y, batch_size=8, mean=plain.mean.tolist(), std=plain.std.tolist())
    padded.pad_last = True
    expected, logits = evaluate(model, plain, "classification", 10, return_logits=True, tta=tta)
    assert {s[0] for s in shapes} == {8, 7}
    shapes.clear()
    got, padded_logits = evaluate(model, padded, "classification", 10, return_logits=True, tta=tta)
    assert {s[0] for s in shapes} == {8}  # the last batch of 7 was padded to 8
    assert got["n"] == 23 and padded_logits.shape == (23, 10)
    torch.testing.assert_close(padded_logits, logits)
    assert got["acc"] == expected["acc"] and got["loss"] == pytest.approx(expected["loss"], rel=1e-6)


def test_the_shard_size_is_this_processes_share_of_a_full_batch():
    x, y = images(10)
    shares = [DeviceLoader(x, y, batch_size=5, rank=r, world_size=2).shard_size for r in (0, 1)]
    assert shares == [3, 2]


@pytest.mark.parametrize("pad_last", [False, True])
def test_a_ranks_empty_share_of_the_last_batch_adds_nothing(pad_last):
    """9 images in batches of 8 over 2 ranks: rank 1's share of the last batch is empty. Its sums stay finite
    (they are added over ranks afterwards), and padding has nothing to copy."""
    x, y = images(9, seed=2)
    model = create_model("softmax", 10, in_features=8 * 8 * 3).eval()
    loader = DeviceLoader(x, y, batch_size=8, rank=1, world_size=2)
    loader.pad_last = pad_last
    assert [len(b) for _, b in loader] == [4, 0]
    result = evaluate(model, loader, "classification", 10)
    assert result["n"] == 4 and np.isfinite(result["loss"])


def test_a_static_run_trains_full_batches_says_what_it_skips_and_tests_every_image(tmp_path):
    folder, _ = write_image_folder(tmp_path / "tree", per_class=5, size=8)  # 50 train, 50 test
    config = TrainConfig(model="softmax", dataset="cifar10", data=str(folder), epochs=2, batch_size=16, lr=0.1,
                         augment="none", val_split=0.2, precision="fp32", device="cpu", static_shapes=True,
                         cache_dir=str(tmp_path / "cache"), out=str(tmp_path / "run"))
    run = fit(config).path
    log = (run / runfiles.LOG).read_text()
    assert "static shapes: every batch holds 16 images, so each epoch skips the last 8 of its shuffled order" in log
    assert "evaluation keeps its short last batch (padding it pays only on CUDA or with --compile)" in log
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    # The run's own test pass matches eval's, and both count all 50 test images.
    summary = json.loads((run / "summary.json").read_text())
    result = evaluate_run(run, "test")
    assert result["n"] == 50 and sum(map(sum, result["confusion"])) == 50
    assert summary["test_top1"] == pytest.approx(result["acc"]) and summary["test_loss"] == pytest.approx(result["loss"])
    assert evaluate_run(run, "val")["n"] == 10


def test_static_shapes_refuses_full_batch(tmp_path):
    with pytest.raises(CnnlabError, match="static"):
        TrainConfig(model="softmax", batch_size="all", static_shapes=True).validate()


def test_a_split_smaller_than_one_batch_trains_its_short_batch_and_says_static_shapes_are_off(tmp_path):
    """A preset tried on a small --subset is not refused by a speed setting the user never gave (issue 24's rule)."""
    folder, _ = write_image_folder(tmp_path / "tree", per_class=2, size=8)
    config = TrainConfig(model="softmax", dataset="cifar10", data=str(folder), epochs=1, batch_size=64,
                         val_split=0.0, precision="fp32", device="cpu", static_shapes=True,
                         cache_dir=str(tmp_path / "cache"), out=str(tmp_path / "run"))
    data = build_data(config, torch.device("cpu"))
    assert not data.train.drop_last and len(data.train) == 1 and data.train.skipped == 0
    fit(config)
    log = (tmp_path / "run" / "log.txt").read_text(encoding="utf-8")
    assert f"static shapes off: the training split's {data.n_train} images do not fill one batch of 64" in log
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        assert float(next(csv.DictReader(f))["train_loss"]) > 0  # it trained on them


def test_evaluation_pads_where_a_fixed_shape_pays(tmp_path):
    folder, _ = write_image_folder(tmp_path / "tree", per_class=5, size=8)
    base = TrainConfig(model="softmax", dataset="cifar10", data=str(folder), batch_size=16, val_split=0.2,
                       device="cpu", static_shapes=True, cache_dir=str(tmp_path / "cache"))
    for compiled in (False, True):  # build_data only reads --compile; nothing is compiled here
        data = build_data(replace(base, compile=compiled), torch.device("cpu"))
        assert data.train.drop_last and len(data.train) == 2
        assert data.val.pad_last == data.test.pad_last == compiled
    plain = build_data(replace(base, static_shapes=False, compile=True), torch.device("cpu"))
    assert not plain.train.drop_last and not plain.test.pad_last and len(plain.train) == 3


@pytest.mark.parametrize("mode,static,expected", [("default", False, (None, None)),
                                                  ("max-autotune", True, ("max-autotune", False)),
                                                  ("reduce-overhead", True, ("reduce-overhead", False))])
def test_compile_mode_and_fixed_shapes_reach_torch_compile(monkeypatch, mode, static, expected):
    import cnnlab.build as build

    seen = {}
    monkeypatch.setattr(build.torch, "compile", lambda model, **kw: seen.update(kw) or model)
    config = TrainConfig(model="mlp", dataset="mnist", compile=True, compile_mode=mode, static_shapes=static)
    model = torch.nn.Linear(2, 2)
    assert build._train_model(model, config, torch.device("cpu"), build.Dist()) is model
    assert (seen["mode"], seen["dynamic"]) == expected
    seen.clear()
    assert build._train_model(model, replace(config, compile=False, compile_mode="default"), torch.device("cpu"),
                              build.Dist()) is model and not seen  # no --compile: nothing compiled


def test_a_compile_mode_without_compile_is_one_line():
    with pytest.raises(CnnlabError, match="compile_mode|compile-mode") as error:
        TrainConfig(model="mlp", dataset="mnist", compile_mode="max-autotune").validate()
    assert "\n" not in str(error.value) and "--compile" in str(error.value)
