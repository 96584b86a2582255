"""The weights' EMA, gradient clipping and gradient accumulation, each checked against a computation by hand.

Their exact resume inside an epoch is checked with the other resume tests, in test_training.py.
"""

import copy
import csv
import json
from pathlib import Path

import pytest
import torch

from cnnlab import CnnlabError
from cnnlab.averaging import EMA
from cnnlab.config import TrainConfig
from cnnlab.data import load_dataset, split_train_val
from cnnlab.engine import fit, optimizer_step
from cnnlab.evaluate import evaluate_run
from cnnlab.models import create_model
from cnnlab.monitor import default_monitor
from cnnlab.optim import lr_multiplier
from cnnlab.recipes import apply_recipe
from cnnlab.state import TrainState
from data_fixtures import write_image_folder


def rows(run_dir) -> list[dict]:
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("ema")
    folder, _ = write_image_folder(root / "tree", per_class=8)  # 80 train images: 60 after a 25 % hold-out
    return {"data": str(folder), "cache_dir": str(root / "cache"), "dataset": "cifar10", "val_split": 0.25}


# -- EMA ------------------------------------------------------------------------------------------------------------
def test_ema_follows_the_warmed_up_decay_and_averages_batch_norm_statistics_too():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = EMA(model, decay=0.7)
    average = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}  # starts at the init
    decays = []
    for t in range(30):  # (1 + t) / (10 + t) reaches 0.7 at t = 20: both sides of the cap
        with torch.no_grad():
            model[0].weight.add_(torch.randn(4, 3))
        model(torch.randn(8, 3))  # training mode: moves the running statistics and counts a batch
        ema.update(model)
        decays.append(min(0.7, (1 + t) / (10 + t)))
        for k, v in model.state_dict().items():
            if k in average:
                average[k] = decays[-1] * average[k] + (1 - decays[-1]) * v
    assert decays[0] == pytest.approx(0.1) and decays[-1] == 0.7 and decays[10] < 0.7
    averaged = ema.module.state_dict()
    for k, v in average.items():
        torch.testing.assert_close(averaged[k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert not torch.allclose(averaged["1.running_mean"], model[1].running_mean)  # averaged, not copied
    assert averaged["1.num_batches_tracked"] == model[1].num_batches_tracked == 30  # a counter: copied
    restored = EMA(model, 0.7)
    restored.load_state_dict(ema.state_dict())
    assert restored.state_dict() == {"n_averaged": 30} and restored.decay_at(30) == 0.7


def test_an_ema_run_validates_tests_and_saves_for_eval_the_averaged_weights(tree, tmp_path):
    # lr 0.5: weights that move well away from the average within 8 steps, so the raw ones are told apart below
    run = fit(TrainConfig(model="mlp", hidden=[16], batch_norm=True, epochs=2, batch_size=16, lr=0.5,
                          ema_decay=0.9, seed=1, out=str(tmp_path / "run"), **tree)).path
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["ema"] == {"n_averaged": 8}  # 4 steps per epoch
    assert any(not torch.equal(best["model"][k], best["raw_model"][k]) for k in best["model"])
    # `cnnlab eval` knows nothing of EMA: it loads "model", and finds the loss the run validated with.
    logged = float(rows(run)[best["epoch"] - 1]["val_loss"])
    assert evaluate_run(run, split="val")["loss"] == pytest.approx(logged, rel=1e-5)
    summary = json.loads((run / "summary.json").read_text())
    assert evaluate_run(run, split="test")["loss"] == pytest.approx(summary["test_loss"], rel=1e-6)
    # …which the raw weights would not give: the check above tells the two apart.
    torch.save(dict(best, model=best["raw_model"]), tmp_path / "raw.pt")
    raw = evaluate_run(tmp_path / "raw.pt", split="val")["loss"]
    assert raw != pytest.approx(logged, rel=1e-4), (raw, logged)  # eval repeats the logged one to 1e-5


# -- gradient clipping ----------------------------------------------------------------------------------------------
def clipping_state(model, clip: float, scaler=None) -> TrainState:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return TrainState(model, optimizer, scheduler, None, default_monitor("classification"), scaler=scaler,
                      clip_grad_norm=clip)


def huge_gradient_loss(model):
    x = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.0, -1.0]])
    return 1e4 * model(x).square().sum()


def test_a_huge_gradient_is_clipped_to_exactly_the_norm_before_the_step():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    by_hand = copy.deepcopy(model)
    state = clipping_state(model, clip=0.5)
    huge_gradient_loss(model).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    norm = torch.sqrt(sum(g.square().sum() for g in grads))
    assert norm > 1e3
    returned = optimizer_step(state)
    assert returned == pytest.approx(float(norm), rel=1e-6)  # the norm before clipping
    clipped = torch.sqrt(sum(p.grad.square().sum() for p in model.parameters()))
    assert clipped == pytest.approx(0.5, rel=1e-5)
    for p, g in zip(model.parameters(), grads):  # same direction, scaled by 0.5/‖g‖
        torch.testing.assert_close(p.grad, g * 0.5 / norm)
    huge_gradient_loss(by_hand).backward()
    torch.nn.utils.clip_grad_norm_(by_hand.parameters(), 0.5)
    torch.optim.SGD(by_hand.parameters(), lr=0.1).step()
    for p, q in zip(model.parameters(), by_hand.parameters()):
        assert torch.equal(p, q)


def test_under_fp16_loss_scaling_the_true_gradients_are_clipped():
    torch.manual_seed(0)
    plain, scaled = torch.nn.Linear(3, 2), None
    scaled = copy.deepcopy(plain)
    plain_state = clipping_state(plain, clip=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    scaled_state = clipping_state(scaled, clip=0.5, scaler=scaler)
    huge_gradient_loss(plain).backward()
    scaler.scale(huge_gradient_loss(scaled)).backward()
    # Clipping the loss-scaled gradients instead would report a norm 4096 times larger.
    assert optimizer_step(scaled_state) == pytest.approx(float(optimizer_step(plain_state)), rel=1e-6)
    for p, q in zip(plain.parameters(), scaled.parameters()):
        torch.testing.assert_close(p, q)
    assert scaled_state.skipped_this_epoch() == 0


def linreg_by_hand(batch: int, epochs: int = 1, lr: float = 0.1, momentum: float = 0.0, clip: float = 0.0,
                   lr_factor=lambda step: 1.0):
    """A synthetic-linear run's linear regression trained by hand in float64, from the run's split, initial weights
    and shuffles: each step's gradient is that of ½(ŷ − y)² averaged over its `batch` examples (the epoch's last
    step: what is left), clipped to `clip` (0: not), then momentum and lr·lr_factor(step).
    Returns (w, b, each step's gradient norm before clipping)."""
    ds = load_dataset("synthetic-linear")
    train_idx, _ = split_train_val(ds.train.labels, 0.1, 0)
    x = torch.from_numpy(ds.train.images[train_idx]).double()
    y = torch.from_numpy(ds.train.labels[train_idx]).double()
    torch.manual_seed(0)
    init = create_model("linreg", 1, in_features=2)
    w, b = init.linear.weight.detach().double(), init.linear.bias.detach().double()
    vw, vb = torch.zeros_like(w), torch.zeros_like(b)
    shuffle, norms = torch.Generator().manual_seed(0), []
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=shuffle)
        for start in range(0, len(x), batch):
            xb, yb = x[order[start:start + batch]], y[order[start:start + batch]]
            residual = xb @ w.T + b - yb
            gw, gb = (residual * xb).mean(0, keepdim=True), residual.mean(0)
            norms.append(float(torch.sqrt(gw.square().sum() + gb.square().sum())))
            scale = min(1.0, clip / (norms[-1] + 1e-6)) if clip else 1.0
            vw, vb = momentum * vw + scale * gw, momentum * vb + scale * gb
            step_lr = lr * lr_factor(len(norms) - 1)
            w, b = w - step_lr * vw, b - step_lr * vb
    return w, b, norms


def weights(run_dir) -> tuple[torch.Tensor, torch.Tensor]:
    state = torch.load(Path(run_dir) / "last.pt", weights_only=True)["model"]
    return state["linear.weight"].double(), state["linear.bias"].double()


LINREG = dict(model="linreg", dataset="synthetic-linear", weight_decay=0.0, label_smoothing=0.0)


def test_the_logged_grad_norm_is_the_epochs_mean_norm_before_clipping_by_hand(tmp_path):
    run = fit(TrainConfig(batch_size=100, epochs=1, lr=0.1, momentum=0.0, schedule="constant", clip_grad_norm=5.5,
                          out=str(tmp_path / "run"), **LINREG))
    w, b, norms = linreg_by_hand(100, lr=0.1, clip=5.5)
    assert len(norms) == 9 and max(norms) > 5.5 > min(norms)  # both clipped and unclipped steps
    assert float(rows(run.path)[0]["grad_norm"]) == pytest.approx(sum(norms) / len(norms), rel=1e-5)
    run_w, run_b = weights(run.path)
    torch.testing.assert_close(run_w, w, rtol=0, atol=1e-5)
    torch.testing.assert_close(run_b, b, rtol=0, atol=1e-5)


# -- gradient accumulation ------------------------------------------------------------------------------------------
def test_accumulating_k_batches_is_one_step_on_the_k_times_batch_the_short_last_one_included(tmp_path):
    # 900 examples: 23 batches of 40 make steps of 5, 5, 5, 5 and 3 batches (the last batch holds 20), i.e. of
    # 200, 200, 200, 200 and 100 examples — the batches of 200, the short last one included. Every step is the mean
    # over its own examples, as one step on that batch is.
    common = dict(epochs=2, lr=0.03, momentum=0.9, schedule="cosine", **LINREG)
    small = fit(TrainConfig(batch_size=40, accumulate=5, out=str(tmp_path / "small"), **common)).path
    large = fit(TrainConfig(batch_size=200, out=str(tmp_path / "large"), **common)).path
    a, b = rows(small), rows(large)
    assert [r["step"] for r in a] == [r["step"] for r in b] == ["5", "10"]  # the schedule counts optimizer steps
    for x, y in zip(a, b):
        for key in ("train_loss", "val_loss", "lr"):
            assert float(x[key]) == pytest.approx(float(y[key]), rel=1e-6), (key, x, y)
    for p, q in zip(weights(small), weights(large)):
        assert float((p - q).abs().max()) < 1e-6
    by_hand = linreg_by_hand(200, epochs=2, lr=0.03, momentum=0.9,
                             lr_factor=lr_multiplier(TrainConfig(epochs=2, schedule="cosine"), steps_per_epoch=5))
    for p, q in zip(weights(small), by_hand[:2]):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-5)
    assert "the gradients of 5 batches of 40 added up per step" in (small / "log.txt").read_text()


def test_the_recipe_scales_the_lr_to_the_accumulated_batch():
    accumulated, large = TrainConfig(batch_size=32, accumulate=4), TrainConfig(batch_size=128)
    (accumulated, _), (large, _) = apply_recipe(accumulated), apply_recipe(large)
    assert accumulated.lr == large.lr and accumulated.step_batch == 128


@pytest.mark.parametrize("settings, flag", [
    ({"accumulate": 0}, "--accumulate"),
    ({"accumulate": 2, "batch_size": "all"}, "--accumulate"),
    ({"clip_grad_norm": -1.0}, "--clip-grad-norm"),
    ({"clip_grad_norm": float("inf")}, "--clip-grad-norm"),
    ({"ema_decay": 1.0}, "--ema-decay"),
    ({"ema_decay": -0.5}, "--ema-decay"),
])
def test_impossible_settings_are_one_line_errors_naming_the_flag(settings, flag):
    with pytest.raises(CnnlabError, match=flag) as error:
        TrainConfig(**settings).validate()
    assert "\n" not in str(error.value)
