"""Training inputs a new user hit (issue 12): batch norm and batches of one, regression vs classification models,
the method said in the seed's words, the seed's early-stopping rule, quick test passes, predict's preprocessing."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.cli import main
from cnnlab.config import TrainConfig
from cnnlab.data.loader import DeviceLoader
from cnnlab.early_stopping import EarlyStopping
from data_fixtures import write_train_test_tree


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A CIFAR-10-named image folder: 10 classes × 3 train images (30), 2 test images each."""
    return write_train_test_tree(tmp_path_factory.mktemp("tree"), 3, 2)


def train(tmp_path, *argv) -> tuple[int, str]:
    return main(["train", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run"),
                 *map(str, argv)])


def one_error(capsys, code) -> str:
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("cnnlab: error: ") and err.count("\n") == 1, (code, err)
    return err


def test_batch_norm_with_batches_of_one_is_refused_before_anything_is_written(tmp_path, tree, capsys):
    err = one_error(capsys, train(tmp_path, "--model", "mlp", "--batch-norm", "--data", tree, "--batch-size", "1"))
    assert "batch norm" in err and "--batch-size 2" in err
    assert not (tmp_path / "run").exists()


def test_a_last_batch_of_one_joins_the_batch_before_it(tmp_path, tree):
    # 30 training images, no validation split, batch 29: the second batch would hold 1 image.
    assert train(tmp_path, "--model", "mlp", "--batch-norm", "--hidden", "8", "--data", tree, "--val-split", "0",
                 "--batch-size", "29", "--epochs", "2") == 0
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "would hold 1 image" in log and "(30 images)" in log
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert rows[1].split(",")[rows[0].split(",").index("step")] == "1"  # one step per epoch, not two


def test_the_loader_merges_a_too_small_last_batch():
    loader = DeviceLoader(np.zeros((10, 2, 2, 3), np.uint8), np.arange(10), batch_size=3, train=True)
    assert len(loader) == 4 and [loader.bounds(b) for b in range(4)] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    loader.min_last = 2
    assert len(loader) == 3 and loader.bounds(2) == (6, 10) and loader.merged_rest == 1
    sizes = [len(y) for _, y in loader]
    assert sizes == [3, 3, 4] and sum(sizes) == 10
    whole = DeviceLoader(np.zeros((1, 2, 2, 3), np.uint8), np.arange(1), batch_size=3, train=True)
    whole.min_last = 2
    assert len(whole) == 1 and whole.merged_rest == 0  # nothing to merge into


def test_linreg_on_class_labels_is_refused(tmp_path, tree, capsys):
    err = one_error(capsys, train(tmp_path, "--model", "linreg", "--data", tree))
    assert "linreg is linear regression" in err and "softmax" in err and not (tmp_path / "run").exists()
    err = one_error(capsys, train(tmp_path, "--model", "softmax", "--dataset", "synthetic-linear"))
    assert "holds regression targets" in err and "linreg" in err


def test_the_log_names_the_method_with_its_momentum(tmp_path, tree):
    assert train(tmp_path, "--model", "softmax", "--data", tree, "--batch-size", "all", "--epochs", "1") == 0
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "method: full-batch gradient descent" in log and "with momentum 0.9 (--momentum 0: none)" in log
    assert train(tmp_path / "b", "--model", "softmax", "--data", tree, "--batch-size", "1", "--momentum", "0",
                 "--epochs", "1") == 0
    assert "stochastic gradient descent (one example per step) without momentum" in (
        tmp_path / "b" / "run" / "log.txt").read_text()


@pytest.mark.parametrize("rule, values, stops_after", [
    ("best", [1.0, 0.94, 0.88, 0.82, 0.76], None),  # slow steady fall: each 0.12 below the last improvement
    ("previous", [1.0, 0.94, 0.88, 0.82, 0.76], 3),  # the seed's rule: 0.06 per epoch is not more than 0.1
    ("best", [1.0, 0.5, 0.9, 0.7, 0.55], 4),  # a spike: 0.9 and 0.7 do not beat the best 0.5
    ("previous", [1.0, 0.5, 0.9, 0.7, 0.55], None),  # …but each beats the epoch before it by more than 0.1
])
def test_early_stopping_rules_on_worked_sequences(rule, values, stops_after):
    early = EarlyStopping("val_loss", delta=0.1, patience=2, rule=rule)
    stopped = next((epoch for epoch, v in enumerate(values, 1) if early.step(v, epoch)[0]), None)
    assert stopped == stops_after


def test_the_previous_rule_survives_a_resume():
    early = EarlyStopping("val_acc", delta=0.0, patience=2, rule="previous")
    early.step(0.5, 1)
    early.step(0.4, 2)
    restored = EarlyStopping("val_acc", delta=0.0, patience=2, rule="previous")
    restored.load_state_dict(early.state_dict())
    assert restored.step(0.45, 3) == (False, "")  # 0.45 beats the previous 0.4: patience resets
    assert restored.step(0.45, 4)[0] is False and restored.step(0.44, 5)[0] is True


def test_early_stop_rule_is_a_setting(tmp_path):
    config = TrainConfig.from_dict({"early_stop_rule": "previous", "early_stop_metric": "val_loss"})
    assert config.validate().early_stop_rule == "previous"
    with pytest.raises(ValueError, match="early-stop-rule"):
        TrainConfig.from_dict({"early_stop_rule": "last"}).validate()


def test_test_subset_tests_on_fewer_images_and_says_so(tmp_path, tree, capsys):
    assert train(tmp_path, "--model", "softmax", "--data", tree, "--test-subset", "7", "--epochs", "1") == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test_size"] == 7 and summary["test_subset"] == 7
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run")]) == 0  # eval reports the whole test split
    assert "test (20 images)" in capsys.readouterr().out


def test_onecycle_is_read_as_the_triangular_schedule_it_is():
    config = TrainConfig.from_dict({"schedule": "onecycle"}).validate()
    assert config.schedule == "triangular" and 'schedule = "triangular"' in config.to_toml()


def test_predict_preprocesses_a_streamed_run_as_its_evaluation_did():
    from cnnlab.data.stream import eval_transform
    from cnnlab.evaluate import _as_evaluated

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    config = {"dataset": "imagenet", "image_size": 224, "resize_size": 256}
    x = _as_evaluated(image, config, 224, 224, 3)
    assert x.shape == (1, 3, 224, 224)
    assert torch.equal(x, eval_transform(image, 224, 256)[None].float())  # resize 256, centre crop 224
    squashed = _as_evaluated(image, {"dataset": "cifar10"}, 224, 224, 3)
    assert not torch.equal(x, squashed)  # the in-memory path resizes the whole image instead


def test_out_of_memory_is_one_line_naming_a_smaller_batch_and_the_last_checkpoint_stays(tmp_path, tree, capsys,
                                                                                         monkeypatch):
    # A real OOM needs a GPU (tests/test_gpu.py makes one); here the second epoch's first forward raises it.
    import cnnlab.engine as engine

    real, calls = engine.forward_backward, []

    def forward_backward(setup, state, x, y, weight):
        calls.append(state.epoch)
        if state.epoch == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(setup, state, x, y, weight)

    monkeypatch.setattr(engine, "forward_backward", forward_backward)
    code = train(tmp_path, "--model", "mlp", "--data", tree, "--batch-size", "8", "--epochs", "3")
    err = one_error(capsys, code)
    assert "CPU out of memory at batch 8: try --batch-size 4" in err and "last.pt" in err and "epoch 1" in err
    run = tmp_path / "run"
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1
    assert "out of memory" in (run / "log.txt").read_text()
    assert len((run / "metrics.csv").read_text().splitlines()) == 2  # header + epoch 1
    assert calls.count(1) == 1  # the failing step was not retried
