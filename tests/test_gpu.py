"""The CUDA paths the CPU suite cannot reach: bf16 autocast, channels_last, fused SGD, torch.compile, the resident
loader on the device, speednet's whitening init there. Marked `gpu` (excluded by default; `pytest -m gpu`) and
skipped without CUDA."""

import json

import numpy as np
import pytest
import torch

from cnnlab.config import TrainConfig
from cnnlab.data.loader import DeviceLoader, augment_preset
from cnnlab.engine import fit
from cnnlab.models import create_model
from cnnlab.optim import build_optimizer
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


@pytest.mark.parametrize("model,extra,compile", [("speednet", SPEEDRUN, False), ("speednet", SPEEDRUN, True),
                                                 ("resnet18", {}, False), ("vgg11_bn", {}, False)])
def test_bf16_channels_last_runs_on_cuda(tmp_path, model, extra, compile):
    folder, _ = write_image_folder(tmp_path / "tree", per_class=20)
    config = TrainConfig(model=model, dataset="cifar10", data=str(folder), cache_dir=str(tmp_path / "cache"),
                         epochs=3, batch_size=32, lr=0.05, momentum=0.9, precision="bf16", compile=compile,
                         device="cuda", val_split=0.2, out=str(tmp_path / "run"), **extra)
    summary = json.loads((fit(config).path / "summary.json").read_text())
    assert summary["device"] == torch.cuda.get_device_name(0)
    assert np.isfinite(summary["test_loss"]) and summary["train_seconds"] > 0
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 4  # header + 3 epochs


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
