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
