"""The machine a run lands on (issue 14): device and precision choice, fp16 loss scaling, threads, determinism,
channels_last on the CPU. GPUs and Apple's MPS are faked: only the choosing logic runs here."""

import csv
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnnlab import create_model, hardware
from cnnlab.build import bare_setup
from cnnlab.config import TrainConfig
from cnnlab.engine import fit, train_step
from cnnlab.errors import CnnlabError
from data_fixtures import write_image_folder

CPU = torch.device("cpu")


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_the_cpu_is_bf16_only_where_it_is_native(monkeypatch, native, expected):
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: native)
    chosen = hardware.resolve_precision("auto", CPU)
    assert chosen.name == expected and chosen.reason
    assert hardware.resolve_precision("fp32", CPU).name == "fp32"  # what is asked is what runs
    assert hardware.resolve_precision("fp16", CPU).name == "fp16"
    flat = hardware.resolve_precision("auto", CPU, convolutional=False)  # linreg, softmax, mlp stay exact
    assert flat.name == "fp32" and "without convolutions" in flat.reason


def test_the_cpu_check_matches_onednn_or_the_cpu_flags():
    flags = hardware._cpu_flags()
    if flags:  # Linux: the kernel's flags and oneDNN agree on this machine
        assert hardware.cpu_has_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})


def fake_gpu(monkeypatch, name, capability, bf16):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)


def test_auto_on_a_gpu_without_bf16_is_fp16_with_loss_scaling(monkeypatch):
    fake_gpu(monkeypatch, "Tesla T4", (7, 5), False)
    chosen = hardware.resolve_precision("auto", torch.device("cuda"))
    assert chosen.name == "fp16" and "Tesla T4" in chosen.reason and "7.5" in chosen.reason
    with pytest.raises(CnnlabError, match=r"T4, compute capability 7.5\) has no bf16; use --precision fp16"):
        hardware.resolve_precision("bf16", torch.device("cuda"))
    fake_gpu(monkeypatch, "NVIDIA H100 80GB HBM3", (9, 0), True)
    assert hardware.resolve_precision("auto", torch.device("cuda")).name == "bf16"


def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "mps_available", lambda: True)
    assert hardware.resolve_device("auto").type == "mps"
    assert hardware.resolve_precision("auto", torch.device("mps")).name == "fp32"
    monkeypatch.setattr(hardware, "mps_available", lambda: False)
    assert hardware.resolve_device("auto").type == "cpu"
    with pytest.raises(CnnlabError, match="no Apple GPU"):
        hardware.resolve_device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert hardware.resolve_device("auto").type == "cuda"


def test_an_overflowing_fp16_step_is_skipped_not_applied():
    torch.manual_seed(0)
    model = create_model("softmax", 3, in_channels=1, image_size=4)
    config = TrainConfig(model="softmax", precision="fp16", lr=0.1, momentum=0.0, schedule="constant")
    setup, state = bare_setup(config, model, CPU)
    assert state.scaler.is_enabled() and setup.precision.name == "fp16"
    x, y = torch.randn(8, 1, 4, 4), torch.randint(0, 3, (8,))
    state.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 30)  # scaled fp16 gradients overflow at once
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_step(setup, state, x, y, len(y))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing poisoned
    assert state.end_epoch() == 1 and state.skipped_steps == 1
    assert state.scaler.get_scale() == 2.0 ** 29  # backed off
    for _ in range(40):  # the scale backs off until steps go through
        train_step(setup, state, x, y, len(y))
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


def images(tmp_path) -> str:
    return str(write_image_folder(tmp_path / "tree", per_class=8)[0])


def rows(run) -> list[dict]:
    with open(Path(run) / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k not in ("epoch_seconds", "images_per_second", "elapsed_seconds")}
                for r in csv.DictReader(f)]


def test_fp16_runs_and_resumes_exactly(tmp_path):
    base = dict(model="mlp", dataset="cifar10", data=images(tmp_path), hidden=[32], batch_norm=True, epochs=2,
                batch_size=16, lr=0.05, cache_dir=str(tmp_path / "cache"), val_split=0.25, seed=3,
                precision="fp16", device="cpu")
    fit(TrainConfig(**base, out=str(tmp_path / "straight")))
    summary = json.loads((tmp_path / "straight" / "summary.json").read_text())
    assert summary["precision"] == "fp16" and summary["precision_reason"] == "asked for"
    assert "scaler" in torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    with pytest.raises(SystemExit):
        fit(TrainConfig(**base, out=str(tmp_path / "broken")), should_stop=lambda epoch, step: (epoch, step) == (2, 1))
    fit(None, resume=str(tmp_path / "broken"))
    assert rows(tmp_path / "broken") == rows(tmp_path / "straight")
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "broken" / "last.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]) and a["scaler"] == b["scaler"]


def test_threads_deterministic_and_channels_last_are_applied_and_reported(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        config = TrainConfig(model="resnet18", dataset="cifar10", data=images(tmp_path), epochs=1, batch_size=16,
                             lr=0.01, cache_dir=str(tmp_path / "cache"), threads=1, deterministic=True,
                             device="cpu", out=str(tmp_path / "run"), subset=32, test_subset=8)
        fit(config)
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
    finally:
        torch.set_num_threads(before)
        torch.use_deterministic_algorithms(False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["threads"] == 1 and summary["deterministic"] is True and summary["channels_last"] is True
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "1 CPU threads; channels_last; " in log and "; deterministic kernels" in log and "precision " in log


FAULTS_OF_REPEATED_ALLOCATIONS = """
import os, resource, torch
from cnnlab.hardware import reuse_freed_memory
done = reuse_freed_memory()
pages = (64 << 20) // os.sysconf("SC_PAGE_SIZE")
faults = []
for _ in range(16):  # what a training step does with its activations: the same sizes, allocated and freed again
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(16 << 20) + 1  # two 64 MB tensors
    del x
    faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / pages)
print(done, sum(faults[-6:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="glibc's mallopt: other C libraries are left as they are")
def test_a_cpu_run_reuses_freed_memory_and_the_users_own_allocator_settings_win():
    def run(**env):
        clean = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_MMAP_THRESHOLD_",
                                                                   "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")}
        out = subprocess.run([sys.executable, "-c", FAULTS_OF_REPEATED_ALLOCATIONS], env=clean | env, check=True,
                             capture_output=True, text=True).stdout.split()
        return out[0] != "None", float(out[-1])

    done, faults = run()
    # Kept: after a few rounds the blocks come back already mapped (measured in 36 processes: no round after the
    # seventh faulted); glibc's default maps them afresh every round (a fault per page: 2 per round here).
    assert done and faults < 0.5
    assert run(CNNLAB_REUSE_MEMORY="0")[0] is False
    assert run(MALLOC_TRIM_THRESHOLD_="131072")[0] is False  # the user's glibc setting stands


@pytest.mark.parametrize("model, expected", [("resnet18", "bf16"), ("mlp", "fp32")])
def test_a_run_on_a_cpu_with_native_bf16_trains_convolutions_in_bf16(tmp_path, monkeypatch, model, expected):
    # The choice a real run makes from the model it builds (resolve_precision alone is tested above). The CPU is
    # declared bf16-capable, so the test runs on any CPU: tiny bf16 convolutions run where bf16 is emulated too.
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: True)
    folder = write_image_folder(tmp_path / "tree", per_class=2, size=8)[0]
    fit(TrainConfig(model=model, dataset="cifar10", data=str(folder), epochs=1, batch_size=10, lr=0.01,
                    val_split=0.0, cache_dir=str(tmp_path / "cache"), device="cpu", out=str(tmp_path / "run")))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["precision"] == expected, summary["precision_reason"]
    assert ("natively" if expected == "bf16" else "without convolutions") in summary["precision_reason"]


def test_the_cpu_loader_hands_convolutional_models_channels_last_batches(tmp_path):
    from cnnlab.run_data import build_data

    config = TrainConfig(model="resnet18", dataset="cifar10", data=images(tmp_path), cache_dir=str(tmp_path / "c"))
    x, _ = next(iter(build_data(config, CPU).train))
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    config.model = "mlp"  # a flat model gets plain batches: no reordering to undo
    x, _ = next(iter(build_data(config, CPU).train))
    assert x.is_contiguous()


def test_two_deterministic_runs_agree_to_the_bit(tmp_path):
    base = dict(model="resnet18", dataset="cifar10", data=images(tmp_path), epochs=1, batch_size=16, lr=0.01,
                cache_dir=str(tmp_path / "cache"), deterministic=True, device="cpu", subset=48, test_subset=16)
    try:
        for name in ("a", "b"):
            fit(TrainConfig(**base, out=str(tmp_path / name)))
    finally:
        torch.use_deterministic_algorithms(False)
    assert rows(tmp_path / "a") == rows(tmp_path / "b")
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_eval_and_predict_on_the_cpu_keep_freed_memory_as_training_does(tmp_path, monkeypatch):
    import cnnlab.evaluate as evaluate

    folder, truth = write_image_folder(tmp_path / "tree", per_class=2, size=8)
    fit(TrainConfig(model="mlp", dataset="cifar10", data=str(folder), epochs=1, batch_size=10, val_split=0.0,
                    cache_dir=str(tmp_path / "cache"), device="cpu", out=str(tmp_path / "run")))
    calls = []
    monkeypatch.setattr(evaluate, "reuse_freed_memory", lambda: calls.append("kept"))
    evaluate.evaluate_run(tmp_path / "run", device="cpu")
    assert calls == ["kept"]
    image = folder / next(name for name in truth if name.startswith("test/"))
    assert len(evaluate.predict(tmp_path / "run", [image])) == 1 and calls == ["kept", "kept"]
