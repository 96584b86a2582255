"""The seed's training methods, checked against hand-computed values, and the loop's guarantees."""

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnnlab import CnnlabError
from cnnlab.config import TrainConfig
from cnnlab.data import load_dataset, split_train_val
from cnnlab.early_stopping import EarlyStopping
from cnnlab.engine import fit
from cnnlab.models import create_model
from cnnlab.optim import build_optimizer, lr_multiplier, parameter_groups
from data_fixtures import write_image_folder


def test_momentum_step_matches_the_formula():
    # v_t = β v_{t−1} + g, W = W − α v_t
    model = torch.nn.Linear(1, 1, bias=False)
    model.weight.data.fill_(1.0)
    opt = build_optimizer(model, TrainConfig(lr=0.1, momentum=0.9, weight_decay=0.0))
    w, v = 1.0, 0.0
    for x in (2.0, -1.0, 3.0):
        opt.zero_grad()
        (model(torch.tensor([[x]])) ** 2 / 2).sum().backward()  # g = w·x²
        g = w * x * x
        v = 0.9 * v + g
        w = w - 0.1 * v
        opt.step()
        assert model.weight.item() == pytest.approx(w, rel=1e-6)


def test_weight_decay_is_the_gradient_of_the_l2_penalty_on_weights_only():
    model = torch.nn.Linear(2, 1)
    model.weight.data = torch.tensor([[1.0, -2.0]])
    model.bias.data = torch.tensor([0.5])
    opt = build_optimizer(model, TrainConfig(lr=0.1, momentum=0.0, weight_decay=0.01))
    opt.zero_grad()
    model(torch.zeros(1, 2)).sum().backward()  # data gradient: w 0, b 1
    opt.step()
    # w ← w − α(λw): the gradient of λ/2‖w‖²; b ← b − α·1, no decay
    assert torch.allclose(model.weight, torch.tensor([[1.0 - 0.1 * 0.01 * 1.0, -2.0 + 0.1 * 0.01 * 2.0]]))
    assert model.bias.item() == pytest.approx(0.5 - 0.1)
    groups = parameter_groups(create_model("mlp", 10, in_features=4, batch_norm=True), 5e-4)
    assert [len(g["params"]) for g in groups] == [2, 4]  # two weight matrices; biases + BN γ, β
    assert len(parameter_groups(create_model("mlp", in_features=4), 5e-4, decay_all=True)) == 1


def test_full_batch_gd_step_is_the_mean_gradient_over_the_training_set(tmp_path):
    config = TrainConfig(model="linreg", dataset="synthetic-linear", batch_size="all", epochs=1, lr=0.5,
                         momentum=0.0, val_split=0.1, out=str(tmp_path / "run"))
    fit(config)
    ds = load_dataset("synthetic-linear")
    train_idx, _ = split_train_val(ds.train.labels, 0.1, 0)
    x = torch.from_numpy(ds.train.images[train_idx]).double()
    y = torch.from_numpy(ds.train.labels[train_idx]).double()
    torch.manual_seed(0)
    model = create_model("linreg", 1, in_features=2).double()
    residual = model(x) - y
    w = model.linear.weight.detach() - 0.5 * (residual * x).mean(0, keepdim=True)
    b = model.linear.bias.detach() - 0.5 * residual.mean(0)
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    assert torch.allclose(state["linear.weight"].double(), w, atol=1e-6)
    assert torch.allclose(state["linear.bias"].double(), b, atol=1e-6)


def test_linear_regression_recovers_w_and_b(tmp_path):
    run = fit(TrainConfig(model="linreg", dataset="synthetic-linear", batch_size=10, epochs=3, lr=0.03,
                          momentum=0.0, out=str(tmp_path / "run")))
    # The weights themselves, not the engine's own w_error: an engine that learned nothing and reported 0 would
    # pass a check of the summary alone.
    for name in ("last.pt", "best.pt"):
        state = torch.load(run.path / name, weights_only=True)["model"]
        assert state["linear.weight"].shape == (1, 2) and state["linear.bias"].shape == (1,), name
        assert torch.allclose(state["linear.weight"][0], torch.tensor([2.0, -3.4]), atol=0.01), (name, state)
        assert abs(state["linear.bias"].item() - 4.2) < 0.01, (name, state)
    summary = json.loads((run.path / "summary.json").read_text())
    w, b = state["linear.weight"][0].tolist(), state["linear.bias"].item()  # best.pt's, which the summary reports
    assert summary["w_error"] == pytest.approx(max(abs(w[0] - 2), abs(w[1] + 3.4)), abs=1e-6), summary
    assert summary["b_error"] == pytest.approx(abs(b - 4.2), abs=1e-6), summary


def test_schedules():
    step = lr_multiplier(TrainConfig(epochs=10, schedule="step", milestones=[3, 6], gamma=0.1), 2)
    assert [round(step(s), 6) for s in (0, 5, 6, 11, 12, 19)] == [1, 1, 0.1, 0.1, 0.01, 0.01]
    cos = lr_multiplier(TrainConfig(epochs=4, schedule="cosine"), 10)
    assert cos(0) == 1 and cos(20) == pytest.approx(0.5) and cos(40) == pytest.approx(0)
    one = lr_multiplier(TrainConfig(epochs=10, schedule="triangular"), 10)
    assert one(0) < 0.05 and one(29) == pytest.approx(1) and one(99) < 0.02


def test_early_stopping_needs_more_than_delta():
    # A worked sequence, δ = 0.1, patience 2: an epoch improves only if it beats the BEST so far (not the last
    # epoch) by more than δ.
    es = EarlyStopping("val_loss", delta=0.1, patience=2)
    assert es.step(1.0, 1) == (False, "") and (es.best, es.best_epoch, es.bad_epochs) == (1.0, 1, 0)
    # 0.9 is exactly δ below the best 1.0: not an improvement
    assert es.step(0.9, 2) == (False, "") and (es.best, es.best_epoch, es.bad_epochs) == (1.0, 1, 1)
    # 0.85 beats the best 1.0 by 0.15 > δ (though only 0.05 below the last epoch): an improvement, patience resets
    assert es.step(0.85, 3) == (False, "") and (es.best, es.best_epoch, es.bad_epochs) == (0.85, 3, 0)
    # 0.76 is below the best, but only by 0.09 ≤ δ
    assert es.step(0.76, 4) == (False, "") and (es.best, es.bad_epochs) == (0.85, 1)
    # NaN is never an improvement: the second bad epoch in a row stops the run
    stop, reason = es.step(float("nan"), 5)
    assert stop is True and (es.best, es.best_epoch, es.bad_epochs) == (0.85, 3, 2)
    assert "val_loss did not improve by more than 0.1" in reason and "best 0.8500 at epoch 3" in reason, reason
    acc = EarlyStopping("val_acc", delta=0.1, patience=2)
    assert acc.step(0.5, 1) == (False, "")
    assert acc.step(0.6, 2) == (False, "") and acc.bad_epochs == 1  # exactly δ better: not an improvement
    assert acc.step(0.65, 3) == (False, "") and (acc.best, acc.bad_epochs) == (0.65, 0)
    acc = EarlyStopping("val_acc", delta=0.0, patience=1)
    acc.step(0.5, 1)
    assert acc.step(0.5, 2)[0] is True  # a tie is not an improvement
    restored = EarlyStopping("val_acc", 0.0, 1)
    restored.load_state_dict(EarlyStopping("val_acc").state_dict() | {"best": 0.7, "best_epoch": 3})
    assert restored.improved(0.71) and not restored.improved(float("nan"))
    assert restored.step(0.7, 4)[0] is True  # the restored best, not a fresh start, is what 0.7 must beat


def test_early_stopping_ends_a_run_and_says_why(tmp_path):
    run = fit(TrainConfig(model="linreg", dataset="synthetic-linear", batch_size=50, epochs=30, lr=0.1,
                          momentum=0.0, early_stop_metric="val_loss", early_stop_delta=1e-3,
                          early_stop_patience=2, out=str(tmp_path / "run")))
    summary = json.loads((run.path / "summary.json").read_text())
    assert summary["epochs_run"] < 30 and "early stopping" in summary["stop_reason"]


def test_a_run_resumed_between_epochs_stops_early_at_the_same_epoch(tmp_path):
    # ε larger than any fall of the loss: epoch 1 sets the reference, every later epoch counts against the
    # patience of 3, so the run stops after epoch 4. The stop after epoch 2 leaves one bad epoch in the count; a
    # resume that forgot it would start counting again and stop after epoch 6.
    base = dict(model="linreg", dataset="synthetic-linear", batch_size=50, epochs=10, lr=0.1, momentum=0.0,
                early_stop_metric="val_loss", early_stop_delta=10.0, early_stop_patience=3)
    fit(TrainConfig(**base, out=str(tmp_path / "straight")))
    with pytest.raises(SystemExit):
        fit(TrainConfig(**base, out=str(tmp_path / "broken")), should_stop=lambda epoch, step: (epoch, step) == (2, None))
    assert torch.load(tmp_path / "broken" / "last.pt", weights_only=True)["early_stopping"]["bad_epochs"] == 1
    fit(None, resume=str(tmp_path / "broken"))
    straight, resumed = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("straight", "broken"))
    assert straight["epochs_run"] == 4 and "early stopping after epoch 4" in straight["stop_reason"]
    assert (resumed["epochs_run"], resumed["stop_reason"]) == (straight["epochs_run"], straight["stop_reason"])
    assert metrics(tmp_path / "broken") == metrics(tmp_path / "straight")


def cifar_like(tmp_path):
    folder, _ = write_image_folder(tmp_path / "tree", per_class=8)
    return str(folder)


def metrics(run_dir):
    with open(Path(run_dir) / "metrics.csv") as f:
        return [{k: v for k, v in row.items()
                 if k not in ("epoch_seconds", "images_per_second", "elapsed_seconds")}
                for row in csv.DictReader(f)]


def test_augmentation_changes_what_a_run_trains_on(tmp_path):
    # Two runs of one seed without augmentation agree to the bit, so a run with it must differ from them: one
    # that trained on the plain images (augmentation dropped on its way to the loader) would not.
    folder, _ = write_image_folder(tmp_path / "tree", per_class=3, size=8)
    base = dict(model="softmax", dataset="cifar10", data=str(folder), epochs=1, batch_size=10, lr=0.1,
                val_split=0.0, precision="fp32", device="cpu", cache_dir=str(tmp_path / "cache"), augment="none")

    def weights(name, **changes):
        fit(TrainConfig(**dict(base, out=str(tmp_path / name), **changes)))
        return torch.load(tmp_path / name / "last.pt", weights_only=True)["model"]["linear.weight"]

    plain = weights("plain")
    assert torch.equal(weights("plain again"), plain)
    assert not torch.equal(weights("crop and flip", augment=None), plain)  # the dataset's preset
    assert not torch.equal(weights("cutout", cutout=4), plain)


def test_resume_mid_epoch_gives_exactly_the_uninterrupted_metrics(tmp_path):
    base = dict(model="mlp", dataset="cifar10", data=cifar_like(tmp_path), hidden=[32], dropout=0.3,
                batch_norm=True, epochs=3, batch_size=16, lr=0.05, cache_dir=str(tmp_path / "cache"),
                val_split=0.25, seed=7)
    fit(TrainConfig(**base, out=str(tmp_path / "straight")))
    with pytest.raises(SystemExit) as stopped:
        fit(TrainConfig(**base, out=str(tmp_path / "broken")), should_stop=lambda epoch, step: epoch == 2 and step == 2)
    assert stopped.value.code == 130
    assert len(metrics(tmp_path / "broken")) == 1
    fit(None, resume=str(tmp_path / "broken"))
    assert metrics(tmp_path / "broken") == metrics(tmp_path / "straight")
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "broken" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ema_clipping_and_accumulation_resume_exactly_inside_an_epoch(tmp_path):
    # 60 images in batches of 8 (the last of 4), two per optimizer step: 4 steps an epoch. Lookahead (from the
    # 5th step) pulls the weights the EMA averages; the stop comes after the 1st step of epoch 2.
    base = dict(model="mlp", dataset="cifar10", data=cifar_like(tmp_path), hidden=[32], dropout=0.3,
                batch_norm=True, epochs=3, batch_size=8, accumulate=2, clip_grad_norm=0.5, ema_decay=0.9,
                lookahead_epoch=2, lr=0.05, cache_dir=str(tmp_path / "cache"), val_split=0.25, seed=7)
    fit(TrainConfig(**base, out=str(tmp_path / "straight")))
    with pytest.raises(SystemExit):
        fit(TrainConfig(**base, out=str(tmp_path / "broken")), should_stop=lambda epoch, step: epoch == 2 and step == 2)
    stopped = torch.load(tmp_path / "broken" / "last.pt", weights_only=True)
    assert stopped["position"]["batch"] == 2 and stopped["position"]["sums"]["grad_norm_steps"] == 1
    fit(None, resume=str(tmp_path / "broken"))
    straight = metrics(tmp_path / "straight")
    assert metrics(tmp_path / "broken") == straight and all(float(row["grad_norm"]) > 0 for row in straight)
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "broken" / "last.pt", weights_only=True)
    assert a["ema"] == b["ema"] == {"n_averaged": 12} and a["scheduler"]["last_epoch"] == 12
    for weights in ("model", "raw_model"):  # the average, and the weights training goes on from
        assert all(torch.equal(a[weights][k], b[weights][k]) for k in a[weights]), weights
    assert not all(torch.equal(a["model"][k], a["raw_model"][k]) for k in a["model"])


def test_a_stop_between_epochs_writes_last_pt_even_between_checkpoint_epochs(tmp_path):
    base = dict(model="mlp", dataset="cifar10", data=cifar_like(tmp_path), hidden=[16], epochs=3, batch_size=16,
                lr=0.05, cache_dir=str(tmp_path / "cache"), val_split=0.25, seed=3, checkpoint_every=5)
    fit(TrainConfig(**base, out=str(tmp_path / "straight")))
    with pytest.raises(SystemExit):
        fit(TrainConfig(**base, out=str(tmp_path / "broken")), should_stop=lambda epoch, step: (epoch, step) == (2, None))
    assert torch.load(tmp_path / "broken" / "last.pt", weights_only=True)["epoch"] == 2
    fit(None, resume=str(tmp_path / "broken"))
    assert metrics(tmp_path / "broken") == metrics(tmp_path / "straight")


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    run = fit(TrainConfig(model="linreg", dataset="synthetic-linear", batch_size=10, epochs=20, lr=2.5,
                          momentum=0.0, out=str(tmp_path / "run")))
    summary = json.loads((run.path / "summary.json").read_text())
    assert "NaN or infinite" in summary["stop_reason"] and "lower the learning rate" in summary["stop_reason"]
    assert "NaN or infinite" in capsys.readouterr().err
    last = torch.load(run.path / "last.pt", weights_only=True)
    assert 1 <= last["epoch"] < 20 and all(torch.isfinite(t).all() for t in last["model"].values())


def test_bad_config_values_are_one_line_errors(tmp_path):
    with pytest.raises(CnnlabError, match="--momentum"):
        TrainConfig(momentum=1.5).validate()
    with pytest.raises(CnnlabError, match="unknown setting 'lrr'"):
        (tmp_path / "c.toml").write_text("lrr = 0.1\n")
        TrainConfig.from_toml(tmp_path / "c.toml")
    with pytest.raises(CnnlabError, match="not valid TOML"):
        (tmp_path / "d.toml").write_text("lr = = 0.1\n")
        TrainConfig.from_toml(tmp_path / "d.toml")


def test_config_round_trips_through_toml(tmp_path):
    config = TrainConfig(model="vgg11", hidden=[3, 4], batch_size="all", milestones=[2], nesterov=True)
    (tmp_path / "c.toml").write_text(config.to_toml())
    assert TrainConfig.from_toml(tmp_path / "c.toml") == config


def start_long_run(out, until: str) -> subprocess.Popen:
    """`cnnlab train` for 200 slow epochs in a subprocess, returned once its output shows a line starting `until`."""
    cmd = [sys.executable, "-m", "cnnlab", "train", "--model", "linreg", "--dataset", "synthetic-linear",
           "--batch-size", "1", "--epochs", "200", "--lr", "0.001", "--momentum", "0", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    for line in proc.stdout:
        if line.startswith(until):
            break
    return proc


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigint_saves_a_checkpoint_and_prints_the_resume_command(tmp_path):
    out = tmp_path / "run"
    proc = start_long_run(out, until="epoch 2/200")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert f"Resume with: cnnlab train --resume {out}" in err and "Traceback" not in err
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] >= 1
    finish = subprocess.run([sys.executable, "-m", "cnnlab", "train", "--resume", str(out), "--epochs",
                             str(state["epoch"] + 1)], capture_output=True, text=True, timeout=120)
    assert finish.returncode == 0, finish.stderr
    assert len(metrics(out)) == state["epoch"] + 1 and (out / "summary.json").is_file()


@pytest.mark.parametrize("workers", [0, 2])
def test_imagenet_style_folders_train_through_the_streaming_loader(tmp_path, workers):
    classes = ["n01440764", "n01443537", "n01484850"]
    write_image_folder(tmp_path / "imagenet", classes=classes, per_class=6, size=48, splits=("train", "val"),
                       fmt="JPEG")
    run = fit(TrainConfig(model="resnet18", dataset="imagenet", data=str(tmp_path / "imagenet"), image_size=32,
                          resize_size=40, workers=workers, epochs=2, batch_size=4, lr=0.01, val_split=0.2,
                          out=str(tmp_path / "run")))
    summary = json.loads((run.path / "summary.json").read_text())
    rows = metrics(run.path)
    assert len(rows) == 2 and summary["test_top1"] is not None and summary["val_size"] == 3
    checkpoint = torch.load(run.path / "best.pt", weights_only=True)
    assert checkpoint["model_options"]["stem"] == "cifar"  # 32 px crops get the CIFAR stem
    assert checkpoint["classes"] == classes


def test_a_second_process_on_the_same_run_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    first = start_long_run(out, until="epoch 1/200")
    try:
        second = subprocess.run([sys.executable, "-m", "cnnlab", "train", "--resume", str(out)],
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 2 and "in use by another cnnlab process" in second.stderr
        assert second.stderr.count("\n") == 1
    finally:
        first.kill()
        first.wait()
