"""benchmarks/stream.py's wrong-result checks: they pass on cnnlab's real output and catch what is wrong."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    pytest.importorskip("torchvision")
    # The script imports `common` from its own folder, as it runs; load both by path for this module only
    import sys

    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("benchmarks_stream", BENCH / "stream.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    module.root = tmp_path_factory.mktemp("synthetic")
    # no Tiny ImageNet here: the script's own fallback content (smooth random fields)
    module.line = module.write_folder(module.root, 12, 3, module.root / "missing.tar.gz")
    return module


def test_the_synthetic_folder_is_imagenet_shaped(bench):
    files = sorted((bench.root / "train").glob("n*/*.JPEG"))
    assert len(files) == 12 and len({f.parent for f in files}) == 3 and "not found" in bench.line
    sizes = [bench.Image.open(f).size for f in files]
    assert all(300 <= w <= 500 and 300 <= h <= 500 for w, h in sizes)


def test_checks_pass_on_cnnlab_and_the_reference(bench):
    assert bench.decode_problems(bench.root, 4) == []
    pipelines = bench.build_pipelines(bench.root, 5, 0, torch.device("cpu"))
    assert sorted(pipelines) == ["cnnlab", "gpu host", "reference"]  # no CUDA here: no GPU-decoding pipeline
    assert bench.epoch_checks(pipelines, torch.device("cpu"), np.arange(12) % 3) == []


def test_checks_catch_wrong_epochs(bench):
    device = torch.device("cpu")
    xs, ys = bench.epoch(bench.cnnlab_loader(bench.root, 5, 0, device), device)
    targets = np.arange(12) % 3
    assert "each once" in bench.epoch_problems("x", xs, ys[:-1], targets)[0]  # an image missing
    assert "outside [0, 1]" in bench.epoch_problems("x", [x * 2 for x in xs], ys, targets)[0]  # not normalised so
    assert "not (N, 3, 224, 224)" in bench.epoch_problems("x", [x[:, :, :100] for x in xs], ys, targets)[0]


def test_the_colour_check_allows_the_chance_difference_of_a_few_images_and_catches_a_real_one(bench):
    rng = np.random.default_rng(0)
    few = [rng.normal(0, 0.6, (12, 3)) for _ in range(2)]  # a dozen images' means: chance differences of ~0.25
    assert bench.colour_problem("x", few[0], few[1]) is None  # the fixed 0.15 failed a clean clone's run on these
    assert bench.colour_problem("x", few[0] + 2.0, few[1]) is not None  # ~8 standard errors: not chance
    many = [rng.normal(0, 0.6, (400, 3)) for _ in range(2)]
    assert bench.colour_problem("x", many[0], many[1]) is None
    assert "mean normalised colour" in bench.colour_problem("x", many[0] + 0.3, many[1])  # 7 standard errors


def test_a_timed_epoch_runs_in_a_process_of_its_own_and_counts_every_image(bench):
    """The timed rounds: each pipeline's epoch in a fresh process (`--measure-one`), which reports its CPU and
    wall seconds; measure() turns them into rates for all 12 images."""
    import types

    args = types.SimpleNamespace(workers=0, batch_size=5)
    rates = bench.measure(["cnnlab", "reference"], 1, torch.device("cpu"), 12, args, bench.root)
    for name in ("cnnlab", "reference"):
        assert all(v > 0 and np.isfinite(v) for v in rates[name]["core"] + rates[name]["wall"]), rates


def test_gpu_utilisation_is_nvidia_smis_mean_and_nothing_without_a_gpu(bench, tmp_path, monkeypatch):
    with bench.gpu_utilisation(torch.device("cpu")) as busy:
        pass
    assert busy == {}
    fake = tmp_path / "nvidia-smi"  # prints two samples, as `-lms 100` would, then waits to be stopped
    fake.write_text("#!/bin/sh\necho 40\necho 60\nexec sleep 30\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{__import__('os').environ['PATH']}")
    with bench.gpu_utilisation(torch.device("cuda")) as busy:
        __import__("time").sleep(0.5)
    assert busy["mean"] == 50
