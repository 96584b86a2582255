"""--cuda-graphs: which runs may have their step captured as a CUDA graph, and what a user is told. The capture and
replay themselves need a GPU: test_gpu.py checks them against the eager step."""

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from cnnlab import CnnlabError
from cnnlab.config import TrainConfig
from cnnlab.engine import fit
from cnnlab.graphs import refusal
from data_fixtures import write_image_folder

CUDA = torch.device("cuda")
SAFE = TrainConfig(model="speednet", static_shapes=True)
FULL_BATCHES = SimpleNamespace(drop_last=True, batches_per_step=1)


def test_a_single_cuda_process_with_static_shapes_and_sgd_is_safe_to_graph():
    assert refusal(SAFE, CUDA, 1, FULL_BATCHES, "bf16") is None
    assert refusal(SAFE, CUDA, 1, FULL_BATCHES, "fp32") is None
    assert refusal(replace(SAFE, ema_decay=0.99, lookahead_epoch=2), CUDA, 1, FULL_BATCHES, "bf16") is None


@pytest.mark.parametrize("change,expected", [
    ({"device": torch.device("cpu")}, "a cpu run"),
    ({"config": replace(SAFE, compile=True)}, "torch.compile makes its own"),
    ({"world_size": 2}, "under torchrun"),
    ({"config": replace(SAFE, static_shapes=False)}, "batches change shape"),
    ({"loader": SimpleNamespace(drop_last=False, batches_per_step=1)}, "batches change shape"),
    ({"loader": SimpleNamespace(drop_last=True, batches_per_step=4)}, "--accumulate"),
    ({"precision": "fp16"}, "fp16 loss scaling"),
    ({"config": replace(SAFE, clip_grad_norm=1.0)}, "clipping"),
    ({"config": replace(SAFE, optimizer="adamw")}, "adamw"),
])
def test_each_unsafe_run_is_refused_with_its_reason(change, expected):
    args = {"config": SAFE, "device": CUDA, "world_size": 1, "loader": FULL_BATCHES, "precision": "bf16", **change}
    why = refusal(args["config"], args["device"], args["world_size"], args["loader"], args["precision"])
    assert why is not None and expected in why, why


def test_cuda_graphs_on_where_they_cannot_run_is_one_line_before_anything_is_written(tmp_path):
    folder, _ = write_image_folder(tmp_path / "tree", per_class=4)
    base = TrainConfig(model="speednet", hidden=[8, 8, 8], dataset="cifar10", data=str(folder), epochs=1,
                       cache_dir=str(tmp_path / "cache"), out=str(tmp_path / "run"), cuda_graphs="on")
    for config, expected in ((replace(base, device="cpu"), "CUDA graphs need --device cuda, not cpu"),
                             (replace(base, compile=True), "torch.compile makes its own CUDA graphs")):
        with pytest.raises(CnnlabError, match="--cuda-graphs 'on' is not allowed") as error:
            config.validate()
        assert expected in str(error.value) and "\n" not in str(error.value)
    if not torch.cuda.is_available():  # auto picks the CPU here: the refusal comes once the device is known
        with pytest.raises(CnnlabError, match="--cuda-graphs on cannot capture this run's step: a cpu run"):
            fit(base)
        assert not (tmp_path / "run").exists()


def test_a_cpu_run_trains_eagerly_and_says_nothing_of_cuda_graphs(tmp_path):
    folder, _ = write_image_folder(tmp_path / "tree", per_class=4)
    run = fit(TrainConfig(model="speednet", hidden=[8, 8, 8], dataset="cifar10", data=str(folder), epochs=1,
                          batch_size=8, static_shapes=True, device="cpu", cache_dir=str(tmp_path / "cache"),
                          out=str(tmp_path / "run"))).path
    assert '"cuda_graphs": false' in (run / "summary.json").read_text()
    assert "CUDA graphs" not in (run / "log.txt").read_text()


def _cpu_graphed_step(monkeypatch, must=False):
    """A GraphedStep over a CPU model whose eager step and capture are stand-ins (no CUDA here): what it decides."""
    from cnnlab.graphs import GraphedStep
    from cnnlab.metrics import loss_fn
    from cnnlab.models import create_model
    from cnnlab.optim import build_optimizer

    model = create_model("mlp", 10, in_channels=1, image_size=4)
    said = []
    step = GraphedStep(model, build_optimizer(model, TrainConfig(model="mlp", lr=0.1)), loss_fn("classification"),
                       None, say=said.append, must=must)
    monkeypatch.setattr(step, "_eager", lambda x, y: ("eager", len(y)))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    return step, said


def test_a_capture_that_fails_is_said_once_and_the_run_goes_on_eagerly(monkeypatch):
    step, said = _cpu_graphed_step(monkeypatch)

    def capture(x, y):
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    monkeypatch.setattr(step, "_capture", capture)
    x, y = torch.zeros(4, 1, 4, 4), torch.zeros(4, dtype=torch.long)
    results = [step(x, y) for _ in range(6)]
    assert results == [("eager", 4)] * 6 and not step.graphed
    assert said == ["CUDA graphs: capturing the step failed (operation not permitted when stream is capturing); "
                    "training on eagerly"]


def test_under_cuda_graphs_on_a_failed_capture_is_one_line(monkeypatch):
    step, _ = _cpu_graphed_step(monkeypatch, must=True)
    monkeypatch.setattr(step, "_capture", lambda x, y: (_ for _ in ()).throw(RuntimeError("CUDA error: busy")))
    x, y = torch.zeros(4, 1, 4, 4), torch.zeros(4, dtype=torch.long)
    for _ in range(3):
        step(x, y)
    with pytest.raises(CnnlabError, match=r"^--cuda-graphs on: capturing the step failed \(CUDA error: busy\)"):
        step(x, y)


def test_a_batch_of_another_shape_never_reaches_a_captured_step(monkeypatch):
    step, _ = _cpu_graphed_step(monkeypatch)
    step.graph = object()  # as after a capture for batches of 4
    step.x, step.y = torch.zeros(4, 1, 4, 4), torch.zeros(4, dtype=torch.long)
    with pytest.raises(CnnlabError, match=r"a batch of shape \(1, 1, 4, 4\).*captured for \(4, 1, 4, 4\)"):
        step(torch.zeros(1, 1, 4, 4), torch.zeros(1, dtype=torch.long))


def test_the_graphed_step_needs_the_fused_optimizer():
    from cnnlab.graphs import GraphedStep
    from cnnlab.models import create_model

    model = create_model("mlp", 10, in_channels=1, image_size=4)
    with pytest.raises(ValueError, match="fused"):
        GraphedStep(model, torch.optim.SGD(model.parameters(), lr=0.1), None, None)
