"""The CUDA paths the CPU suite cannot reach: bf16 autocast, channels_last, fused SGD, torch.compile, CUDA graphs,
the resident loader on the device, speednet's whitening init there. Marked `gpu` (excluded by default; `pytest -m gpu`) and
skipped without CUDA."""

import copy
import csv
import json

import numpy as np
import pytest
import torch

from cnnlab.config import TrainConfig
from cnnlab.data.loader import DeviceLoader, augment_preset
from cnnlab.engine import fit
from cnnlab.graphs import WARMUP_STEPS, GraphedStep
from cnnlab.metrics import loss_fn
from cnnlab.models import create_model
from cnnlab.optim import build_optimizer, build_scheduler
from data_fixtures import write_image_folder

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_device_loader_on_cuda_matches_the_cpu_loader_without_augmentation():
    images = np.random.default_rng(0).integers(0, 256, (64, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(64)
    cpu = DeviceLoader(images, labels, batch_size=16, channels_last=False)
    gpu = DeviceLoader(images, labels, batch_size=16, device="cuda", channels_last=True)
    cpu_batches, gpu_batches = list(cpu), list(gpu)
    assert len(cpu_batches) == len(gpu_batches) == 4
    for (x1, y1), (x2, y2) in zip(cpu_batches, gpu_batches):
        assert x2.is_cuda and x2.is_contiguous(memory_format=torch.channels_last)
        assert torch.allclose(x1, x2.cpu(), atol=1e-6) and torch.equal(y1, y2.cpu())
    train = DeviceLoader(images, labels, batch_size=16, device="cuda", train=True, augment=augment_preset("speedrun"))
    seen = torch.cat([y for _, y in train]).cpu()
    assert sorted(seen.tolist()) == list(range(64))  # every image exactly once per epoch


def test_fused_sgd_matches_the_foreach_step():
    torch.manual_seed(0)
    model = create_model("speednet", hidden=[8, 16, 16]).cuda()
    twin = create_model("speednet", hidden=[8, 16, 16]).cuda()
    twin.load_state_dict(model.state_dict())
    config = TrainConfig(model="speednet", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
                         norm_lr_scale=64, decay_all=True)
    fused = build_optimizer(model, config)
    assert all(g["fused"] for g in fused.param_groups)
    plain = build_optimizer(twin, config)
    for group in plain.param_groups:  # the same groups, stepped by the multi-tensor (foreach) kernels instead
        group["fused"], group["foreach"] = False, True
    x, y = torch.randn(32, 3, 32, 32, device="cuda"), torch.randint(0, 10, (32,), device="cuda")
    start = [p.detach().clone() for p in model.parameters()]
    for m, opt in ((model, fused), (twin, plain)):
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    # two optimizers that both did nothing would agree too
    assert any(not torch.equal(a, s) for a, s in zip(model.parameters(), start) if a.requires_grad)


SPEEDRUN = {"hidden": [16, 32, 32], "augment": "speedrun", "lookahead_epoch": 2, "tta": "flip-translate",
            "norm_lr_scale": 64.0, "decay_all": True}


@pytest.mark.parametrize("model,extra,compile,precision", [
    ("speednet", SPEEDRUN, False, "bf16"), ("speednet", SPEEDRUN, True, "bf16"), ("resnet18", {}, False, "bf16"),
    ("vgg11_bn", {}, False, "bf16"), ("resnet18", {}, False, "fp16"),  # fp16: autocast + GradScaler, as on a T4
    ("speednet", {**SPEEDRUN, "static_shapes": True, "compile_mode": "reduce-overhead"}, True, "bf16")])  # CUDA graphs
def test_bf16_channels_last_runs_on_cuda(tmp_path, model, extra, compile, precision):
    folder, _ = write_image_folder(tmp_path / "tree", per_class=20)
    config = TrainConfig(model=model, dataset="cifar10", data=str(folder), cache_dir=str(tmp_path / "cache"),
                         epochs=3, batch_size=32, lr=0.05, momentum=0.9, precision=precision, compile=compile,
                         device="cuda", val_split=0.2, out=str(tmp_path / "run"), **extra)
    summary = json.loads((fit(config).path / "summary.json").read_text())
    assert summary["device"] == torch.cuda.get_device_name(0)
    assert np.isfinite(summary["test_loss"]) and summary["train_seconds"] > 0
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 4  # header + 3 epochs
    assert summary["precision"].startswith(precision), summary["precision"]
    if precision == "fp16":  # the loss scaler travels in the checkpoint, as resume needs
        assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["scaler"]["scale"] > 0


@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_a_graphed_step_updates_the_weights_as_the_eager_step(dtype):
    """Twelve steps of speednet under a warm-up schedule (which fills the graph's lr tensor before each replay; an lr
    stuck at the capture's would move the weights ~100× the tolerance): the graphed twin's losses and weights follow
    the eager one's, and it replays after its warm-up steps. A small lr keeps the two on one path: at the speedrun's
    (BN shifts at 64×) a capture's other cuDNN kernels, rounding differently, move fp32 weights apart by ~1e-4 in
    twelve steps (measured on an H200) while the losses still agree."""
    torch.manual_seed(0)
    model = create_model("speednet", hidden=[8, 16, 16]).cuda().to(memory_format=torch.channels_last)
    twin = copy.deepcopy(model)
    start = [p.detach().clone() for p in model.parameters()]
    config = TrainConfig(model="speednet", lr=0.02, momentum=0.85, nesterov=True, weight_decay=5e-4, norm_lr_scale=4,
                         decay_all=True, warmup_epochs=1, epochs=2, label_smoothing=0.2)
    criterion = loss_fn("classification", 0.2)
    graphed_opt, eager_opt = build_optimizer(model, config), build_optimizer(twin, config)
    schedules = [build_scheduler(opt, config, 6) for opt in (graphed_opt, eager_opt)]
    step = GraphedStep(model, graphed_opt, criterion, dtype)
    autocast = torch.autocast("cuda", dtype=dtype or torch.bfloat16, enabled=dtype is not None)
    tolerance = 1e-4 if dtype is None else 2e-2
    for i in range(12):
        x = torch.randn(32, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (32,), device="cuda")
        loss, out = step(x, y)
        eager_opt.zero_grad(set_to_none=True)
        with autocast:
            eager_out = twin(x)
            eager_loss = criterion(eager_out.float(), y)
        eager_loss.backward()
        eager_opt.step()
        for schedule in schedules:
            schedule.step()
        assert torch.allclose(loss, eager_loss, atol=tolerance, rtol=tolerance), (i, loss, eager_loss)
        assert torch.equal(out.argmax(1), eager_out.argmax(1)) or dtype is not None
    assert step.replays == 12 - WARMUP_STEPS and step.graph is not None
    assert any(not torch.equal(a, s) for a, s in zip(model.parameters(), start))  # the replays did step
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(a, b, atol=10 * tolerance, rtol=10 * tolerance)
    assert graphed_opt.param_groups[0]["lr"] == eager_opt.param_groups[0]["lr"]  # plain numbers outside the capture


def test_a_speedrun_shaped_run_graphs_its_step_and_trains_as_an_eager_one(tmp_path):
    """--cuda-graphs auto captures a static-shape speednet run's step (the log and summary say so) and trains as
    --cuda-graphs off does: the same losses, epoch by epoch, up to bf16's rounding."""
    folder, _ = write_image_folder(tmp_path / "tree", per_class=40)
    rows, summaries = {}, {}
    for graphs in ("auto", "off"):
        config = TrainConfig(model="speednet", dataset="cifar10", data=str(folder), cache_dir=str(tmp_path / "cache"),
                             epochs=3, batch_size=32, lr=0.2, momentum=0.85, nesterov=True, label_smoothing=0.2,
                             precision="bf16", device="cuda", val_split=0.2, static_shapes=True, cuda_graphs=graphs,
                             out=str(tmp_path / graphs), **SPEEDRUN)
        run = fit(config).path
        summaries[graphs] = json.loads((run / "summary.json").read_text())
        with open(run / "metrics.csv", newline="") as f:
            rows[graphs] = [float(row["train_loss"]) for row in csv.DictReader(f)]
        log = (run / "log.txt").read_text()
        assert ("CUDA graphs: the step is captured" in log) == (graphs == "auto"), log
    assert summaries["auto"]["cuda_graphs"] and not summaries["off"]["cuda_graphs"]
    print("train loss per epoch, graphed vs eager:", rows)
    assert np.allclose(rows["auto"], rows["off"], atol=0.05, rtol=0.05)
    assert rows["auto"][-1] < rows["auto"][0]


def test_whitening_init_on_cuda_matches_the_cpu():
    torch.manual_seed(0)
    mix = torch.tensor([[1.0, 0.8, 0.6], [0.0, 0.5, 0.3], [0.0, 0.0, 0.2]])
    images = torch.einsum("dc,nchw->ndhw", mix, torch.randn(500, 3, 16, 16))  # correlated channels
    cpu = create_model("speednet", hidden=[8, 8, 8])
    gpu = create_model("speednet", hidden=[8, 8, 8]).cuda()
    cpu.init_from_data(images)
    gpu.init_from_data(images.cuda())
    # Eigenvectors are defined up to sign and, for close eigenvalues, up to rotation; WᵀW = 2 (C + εI)⁻¹ is not.
    a, b = cpu.whiten.weight.flatten(1), gpu.whiten.weight.cpu().flatten(1)
    assert torch.allclose(a.T @ a, b.T @ b, rtol=1e-3, atol=1e-3)


def test_a_batch_too_large_for_the_card_is_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    """After epoch 1 a hog takes nearly all the card's free memory, so epoch 2's first step runs out of it."""
    import cnnlab.engine as engine

    folder, _ = write_image_folder(tmp_path / "tree", per_class=20)
    real, hog = engine.record_epoch, []

    def record_epoch(*args, **kwargs):
        row = real(*args, **kwargs)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info()
        hog.append(torch.empty(free - (64 << 20), dtype=torch.uint8, device="cuda"))
        return row

    monkeypatch.setattr(engine, "record_epoch", record_epoch)
    config = TrainConfig(model="resnet18", dataset="cifar10", data=str(folder), cache_dir=str(tmp_path / "cache"),
                         epochs=3, batch_size=128, precision="bf16", device="cuda", val_split=0.2,
                         out=str(tmp_path / "run"))
    try:
        with pytest.raises(engine.CnnlabError) as error:
            fit(config)
    finally:
        hog.clear()
        torch.cuda.empty_cache()
    message = str(error.value)
    assert message.startswith("CUDA out of memory at batch 128: try --batch-size 64"), message
    assert "\n" not in message and "last.pt" in message
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 1


def _sync_warnings(tmp_path, name, per_class, **settings):
    """Where the host waited for the GPU during one 2-epoch run: {file:line: count}, from sync-debug warnings."""
    import collections
    import warnings

    folder, _ = write_image_folder(tmp_path / f"tree-{per_class}", per_class=per_class)
    config = TrainConfig(model="speednet", hidden=[8, 16, 16], dataset="cifar10", data=str(folder),
                         cache_dir=str(tmp_path / "cache"), epochs=2, batch_size=16, lr=0.05, precision="bf16",
                         device="cuda", val_split=0.2, out=str(tmp_path / name), **settings)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit(config)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return collections.Counter(f"{w.filename.split('/src/')[-1]}:{w.lineno}" for w in caught
                               if "synchronizing" in str(w.message))


@pytest.mark.parametrize("settings", [{}, {"ema_decay": 0.99, "clip_grad_norm": 1.0},
                                      {"tensorboard": True, "tensorboard_every": 0},
                                      {"static_shapes": True, "ema_decay": 0.99}],
                         ids=["plain", "ema+clip", "tensorboard per epoch", "CUDA graphs+ema"])
def test_training_steps_do_not_wait_for_the_gpu(tmp_path, settings):
    """The host may wait per epoch (metrics, validation, checkpoints), never per step: twice the steps (10 → 20 an
    epoch), the same waits. EMA and clipping must keep it so (AveragedModel's own update reads n_averaged on the
    host each step; cnnlab's does not), and so must TensorBoard logging per epoch (per-step logging waits every N
    steps by design)."""
    fewer = _sync_warnings(tmp_path, "fewer", 25, **settings)   # 250 images: 200 train → 13 steps an epoch
    more = _sync_warnings(tmp_path, "more", 50, **settings)     # 500 images: 400 train → 25 steps an epoch
    grown = {where: more[where] - fewer.get(where, 0) for where in more if more[where] > fewer.get(where, 0)}
    print("sync points (2 epochs, 13 steps an epoch):", dict(fewer))
    print("grew with the steps:", grown)
    assert sum(grown.values()) < 2 * 12 / 2, grown  # a per-step wait would add ≥ 24 over the 2 epochs


def test_a_run_trained_on_cuda_is_evaluated_explained_and_exported(tmp_path):
    """What `cnnlab eval`, `explain` and `export` do with a bf16 channels_last run trained on the GPU: eval on the
    GPU repeats the run's test numbers and draws its pictures from the split's images held on the GPU."""
    from cnnlab.evaluate import evaluate_run
    from cnnlab.explain import explain_run
    from cnnlab.export import export_model

    folder, truth = write_image_folder(tmp_path / "tree", per_class=20)
    run = fit(TrainConfig(model="resnet18", dataset="cifar10", data=str(folder), cache_dir=str(tmp_path / "cache"),
                          epochs=2, batch_size=32, lr=0.05, device="cuda", val_split=0.2,
                          out=str(tmp_path / "run"))).path
    on_gpu = evaluate_run(run, device="cuda")
    on_cpu = evaluate_run(run, device="cpu", out_dir=tmp_path / "cpu")
    # on its own device and in its precision (bf16), eval repeats the run's test pass; the CPU computes it too
    assert on_gpu["acc"] == json.loads((run / "summary.json").read_text())["test_top1"]
    assert on_gpu["precision"] == on_cpu["precision"] == "bf16" and 0 <= on_cpu["acc"] <= 1
    assert len(on_gpu["mistakes"]) == len(on_cpu["mistakes"]) > 0
    for key in ("filters_png", "mistakes_png", "confusion_png", "reliability_png"):
        assert (run / on_gpu[key].split("/")[-1]).is_file()
    image = folder / next(name for name in truth if name.startswith("test/"))
    assert explain_run(run, [image], out_dir=tmp_path / "explain")[0].is_file()
    exported = export_model(run, "torchscript", out=tmp_path / "model.pt")  # checked against PyTorch ≤ 1e-4
    assert exported.path.is_file() and exported.max_diff <= 1e-4


def test_a_graphed_dropout_draws_a_fresh_mask_on_every_replay():
    """A captured dropout must not replay the capture's mask: PyTorch moves the CUDA generator's offset on each
    replay. With lr 0 the weights stay put, so the same batch gives other logits each step only through the masks."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 64), torch.nn.Dropout(0.5), torch.nn.Linear(64, 3)).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, fused=True)
    step = GraphedStep(model, optimizer, torch.nn.CrossEntropyLoss(), None)
    x, y = torch.randn(16, 12, device="cuda"), torch.randint(0, 3, (16,), device="cuda")
    outs = [step(x, y)[1].clone() for _ in range(WARMUP_STEPS + 4)]
    assert step.graphed and step.replays == 4
    replayed = outs[WARMUP_STEPS:]
    assert all(not torch.equal(a, b) for a, b in zip(replayed, replayed[1:]))
    model.eval()
    with torch.no_grad():
        plain = model(x)
    # each replay is an inverted-dropout estimate of the same logits: unbiased, so their mean nears the plain ones
    assert (torch.stack(replayed).mean(0) - plain).abs().mean() < plain.abs().mean()


def _graphed_and_eager(tmp_path, model="speednet", **settings):
    """The same static-shape run with --cuda-graphs auto and off: {graphs: (train losses per epoch, summary, log)}."""
    folder, _ = write_image_folder(tmp_path / "tree", per_class=40)
    runs = {}
    for graphs in ("auto", "off"):
        config = TrainConfig(**{**dict(model=model, dataset="cifar10", data=str(folder), epochs=3, batch_size=32,
                                       lr=0.05, momentum=0.9, precision="bf16", device="cuda", val_split=0.2,
                                       static_shapes=True, cache_dir=str(tmp_path / "cache"), cuda_graphs=graphs,
                                       out=str(tmp_path / graphs)), **settings})
        run = fit(config).path
        with open(run / "metrics.csv", newline="") as f:
            losses = [float(row["train_loss"]) for row in csv.DictReader(f)]
        runs[graphs] = losses, json.loads((run / "summary.json").read_text()), (run / "log.txt").read_text()
    return runs


@pytest.mark.parametrize("model,settings", [
    ("vgg11", {"dropout": 0.5}), ("speednet", {"hidden": [8, 16, 16], "mixup": 0.4, "cutmix": 1.0, "mix_prob": 0.5}),
    ("speednet", {"hidden": [8, 16, 16], "tensorboard": True, "tensorboard_every": 2}),
    ("speednet", {"hidden": [8, 16, 16], "ema_decay": 0.9, "lookahead_epoch": 2})],
    ids=["vgg dropout", "mixup+cutmix", "tensorboard per step", "ema+lookahead"])
def test_a_graphed_run_trains_as_the_eager_one_with(tmp_path, model, settings):
    """What rides on a graphed step: dropout's masks, soft targets of mixed batches, per-step TensorBoard reads of
    the replayed loss, EMA and Lookahead after each replay. Each run captures its step (log, summary) and its losses
    follow the eager run's epoch by epoch: not to the bit (other kernels, other dropout draws), but closely."""
    runs = _graphed_and_eager(tmp_path, model, **settings)
    (graphed, summary, log), (eager, plain, _) = runs["auto"], runs["off"]
    assert "CUDA graphs: the step is captured once and replayed" in log and summary["cuda_graphs"], log
    assert not plain["cuda_graphs"]
    print("train loss per epoch, graphed vs eager:", graphed, eager)
    assert np.allclose(graphed, eager, atol=0.1, rtol=0.1)
    assert graphed[-1] < graphed[0] and np.isfinite(summary["test_top1"])


def test_a_graphed_run_with_a_frozen_backbone_trains_only_its_head(tmp_path):
    """--freeze-backbone leaves the backbone's parameters without gradients: the captured fused step must skip
    them, so after a graphed run they are exactly the initial ones and only the classifier moved."""
    runs = _graphed_and_eager(tmp_path, "resnet18", freeze_backbone=True, epochs=2)
    assert runs["auto"][1]["cuda_graphs"]
    a = torch.load(tmp_path / "auto" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "off" / "last.pt", weights_only=True)["model"]
    for name, value in a.items():
        if name.startswith("fc."):
            assert torch.allclose(value, b[name], atol=2e-2, rtol=2e-2), name
        elif value.is_floating_point():  # the same seed builds the same initial backbone; the runs left it there
            assert torch.equal(value, b[name]), name
    assert runs["auto"][0][-1] < runs["auto"][0][0]


def test_a_graphed_run_resumed_mid_epoch_captures_again_and_ends_as_an_uninterrupted_one(tmp_path):
    """A graphed run stopped inside an epoch and resumed warms up and captures its step again (three eager steps
    from the checkpoint's state), and ends where the uninterrupted graphed run ends, up to kernel rounding."""
    folder, _ = write_image_folder(tmp_path / "tree", per_class=40)
    base = dict(model="speednet", hidden=[8, 16, 16], dataset="cifar10", data=str(folder), epochs=3, batch_size=32,
                lr=0.05, momentum=0.9, precision="bf16", device="cuda", val_split=0.2, static_shapes=True,
                cache_dir=str(tmp_path / "cache"), checkpoint_every=1)
    fit(TrainConfig(**base, out=str(tmp_path / "straight")))
    with pytest.raises(SystemExit):
        fit(TrainConfig(**base, out=str(tmp_path / "broken")), should_stop=lambda epoch, step: (epoch, step) == (2, 4))
    fit(None, resume=str(tmp_path / "broken"))
    log = (tmp_path / "broken" / "log.txt").read_text()
    assert log.count("CUDA graphs: the step is captured once and replayed") == 2, log
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "broken" / "last.pt", weights_only=True)["model"]
    for name in a:  # each tensor within a few % of its norm (a resume from the wrong place parts them by far more)
        if a[name].is_floating_point():
            assert (a[name] - b[name]).norm() <= 0.05 * a[name].norm() + 1e-3, name
    summary = json.loads((tmp_path / "broken" / "summary.json").read_text())
    assert summary["cuda_graphs"] and summary["epochs_run"] == 3


def test_a_streamed_run_with_loader_workers_graphs_its_step(tmp_path):
    """The streamed loader's pinned-memory thread allocates while the step is captured (thread_local capture mode
    allows it): a static-shape ImageNet-layout run with two workers captures its step and trains."""
    classes = ["n01440764", "n01443537", "n01484850"]
    write_image_folder(tmp_path / "imagenet", classes=classes, per_class=24, size=48, splits=("train", "val"),
                       fmt="JPEG")
    run = fit(TrainConfig(model="resnet18", dataset="imagenet", data=str(tmp_path / "imagenet"), image_size=32,
                          resize_size=40, workers=2, epochs=2, batch_size=8, lr=0.01, val_split=0.2,
                          static_shapes=True, device="cuda", precision="bf16", out=str(tmp_path / "run"))).path
    log = (run / "log.txt").read_text()
    assert "CUDA graphs: the step is captured once and replayed" in log, log
    summary = json.loads((run / "summary.json").read_text())
    assert summary["cuda_graphs"] and summary["test_top1"] is not None
