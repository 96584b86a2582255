"""The helpers the benchmark scripts share (benchmarks/common.py): what counts as a wrong result, the subset draw
the reference pipeline trains on, and the alternating timer."""

import importlib.util
import json
import re
import sys
from pathlib import Path
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from cnnlab.run_data import _subset

COMMON = Path(__file__).resolve().parents[1] / "benchmarks" / "common.py"


@pytest.fixture(scope="module")
def common():
    # The scripts import it as a top-level module from their own folder; tests load it by path instead of
    # putting benchmarks/ on sys.path for the whole session.
    spec = importlib.util.spec_from_file_location("benchmarks_common", COMMON)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("n, k", [(50_000, 8000), (10_000, 2000), (100, None), (100, 100), (100, 500)])
def test_subset_is_the_one_cnnlab_trains_on(common, n, k):
    np.testing.assert_array_equal(common.subset_indices(n, k), _subset(n, k))


def test_loss_problem_accepts_a_falling_loss_and_names_the_rest(common):
    assert common.loss_problem([2.3, 2.1, 1.9]) is None
    assert common.loss_problem([2.3]) is None
    assert "did not fall" in common.loss_problem([2.3, 2.4])
    assert "not finite" in common.loss_problem([2.3, float("nan"), 1.0])
    assert "missing" in common.loss_problem([])
    # Dropout makes single steps jump: with a window the means decide, not the two ends.
    jumpy = [2.0, 2.3, 2.2, 1.9, 1.8, 2.05]
    assert common.loss_problem(jumpy) is not None
    assert common.loss_problem(jumpy, window=3) is None


def test_result_problems(common):
    assert common.result_problems("x", 0.5, [2.0, 1.5], 0.2) == []
    low, flat = common.result_problems("x", 0.1, [2.0, 2.0], 0.2)
    assert "below 20%" in low and "did not fall" in flat
    assert "not finite" in common.result_problems("x", 0.5, [2.0, float("inf")], 0.2)[0]
    assert "below" in common.result_problems("x", None, [2.0, 1.0], 0.2)[0]


def test_exit_if_wrong(common, capsys):
    common.exit_if_wrong([])
    with pytest.raises(SystemExit) as e:
        common.exit_if_wrong(["a loss is not finite"])
    assert e.value.code == 1
    assert "WRONG RESULT" in capsys.readouterr().err


def test_alternate_takes_turns_and_keeps_every_loss(common):
    import torch

    calls = []

    def side(name):
        def step():
            calls.append(name)
            return torch.tensor(float(len(calls)))
        return step

    median, best, losses = common.alternate({"a": side("a"), "b": side("b")}, batch=8, rounds=4, steps_per_round=2,
                                            device=torch.device("cpu"))
    # Each round one side goes first, the next round the other: a burst of load cannot favour one side.
    assert calls == ["a", "a", "b", "b", "b", "b", "a", "a"] * 2
    assert losses["a"] == [1, 2, 7, 8, 9, 10, 15, 16] and len(losses["b"]) == 8
    assert set(median) == set(best) == {"a", "b"} and all(best[k] >= median[k] > 0 for k in "ab")


def test_the_recipe_grid_fails_on_a_wrong_result_even_in_its_quick_form(common, monkeypatch, tmp_path, capsys):
    """seed_recipe_grid.py --quick trains one epoch, so a falling loss cannot be asked of it: a NaN loss or a test
    top-1 below its floor must still end it with exit status 1. cnnlab's fit is replaced by one that writes the
    run folder's two files with the numbers given."""
    monkeypatch.setitem(sys.modules, "common", common)  # the script's `from common import …`
    spec = importlib.util.spec_from_file_location("seed_recipe_grid", COMMON.parent / "seed_recipe_grid.py")
    grid = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(grid)

    def fake_fit(loss, top1):
        def fit(config):
            run = Path(config.out)
            run.mkdir(parents=True)
            (run / "summary.json").write_text(json.dumps({"test_top1": top1}))
            (run / "metrics.csv").write_text(f"epoch,train_loss,epoch_seconds\n1,{loss},0.5\n")
            return SimpleNamespace(file=lambda name: run / name)
        return fit

    monkeypatch.setattr(sys, "argv", ["seed_recipe_grid.py", "--device", "cpu", "--quick", "--data", str(tmp_path)])
    monkeypatch.setattr(grid, "fit", fake_fit(2.1, 0.12))  # near chance, as one epoch leaves it: not wrong
    grid.main()
    for loss, top1 in [(float("nan"), 0.12), (2.1, 0.0), (float("nan"), 0.0)]:
        monkeypatch.setattr(grid, "fit", fake_fit(loss, top1))
        with pytest.raises(SystemExit) as e:
            grid.main()
        assert e.value.code == 1
        assert "WRONG RESULT" in capsys.readouterr().err


def test_make_bench_names_every_benchmark_it_skips_without_the_cifar_archive():
    makefile = (COMMON.parents[1] / "Makefile").read_text()
    recipe = makefile.split("\nbench: ", 1)[1].split("\n\n", 1)[0]
    needs_cifar, skipped = recipe.split("if [ -f $(CIFAR) ]; then", 1)[1].split("else echo", 1)
    skipped = skipped.split("; fi", 1)[0]
    scripts = re.findall(r"benchmarks/(\w+\.py)", needs_cifar)
    assert len(scripts) >= 5 and "data.py" in scripts
    assert [s for s in scripts if s not in skipped] == [], skipped


def load_script(name: str):
    """A benchmark script as a module; its folder goes on sys.path for its own `import common`."""
    sys.path.insert(0, str(COMMON.parent))
    try:
        spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", COMMON.parent / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(COMMON.parent))


def test_step_ops_counts_each_operator_once_under_the_part_it_ran_in():
    import torch

    step_ops = load_script("step_ops")
    counter = step_ops.Counter()
    a = torch.ones(3)
    with counter:
        with counter.labelled("loader"):
            b = a + 1
        (b * 2).sum()
    assert counter.ops == {"loader": 1, "bookkeeping": 2}


def test_step_ops_counts_cnnlabs_real_loop_and_leaves_it_unpatched(tmp_path):
    import cnnlab.engine as engine
    from cnnlab.averaging import Lookahead
    from cnnlab.data.loader import DeviceLoader

    step_ops = load_script("step_ops")
    originals = (engine.train_one_epoch, engine.forward_backward, engine.optimizer_step, Lookahead.step,
                 DeviceLoader.__iter__)
    root = step_ops.write_images(tmp_path / "images")
    config = step_ops.CONFIGS["speedrun-cifar10"](root, tmp_path)
    ops, parts, summary = step_ops.cnnlab_count(replace(config, hidden=[4, 8, 8]))
    assert (engine.train_one_epoch, engine.forward_backward, engine.optimizer_step, Lookahead.step,
            DeviceLoader.__iter__) == originals
    assert set(parts) == {"loader", "forward + backward", "optimizer + schedule", "Lookahead", "bookkeeping"}
    assert ops == pytest.approx(sum(parts.values())) and parts["forward + backward"] > 50
    minimal, minimal_parts, loss = step_ops.minimal_count(replace(config, hidden=[4, 8, 8]), summary)
    assert np.isfinite(loss) and minimal_parts["loader"] == 2  # one gather of images, one of labels


def test_step_profile_fits_the_fixed_cost_and_sums_overlapping_kernels_once():
    import torch

    profile = load_script("step_profile")
    fixed, per_image = profile.line_fit([256, 512, 1024], [3.0 + 0.01 * b for b in (256, 512, 1024)])
    assert fixed == pytest.approx(3.0) and per_image == pytest.approx(0.01)

    def kernel(start, end, name):
        return SimpleNamespace(time_range=SimpleNamespace(start=start, end=end), name=name,
                               device_type=torch.autograd.DeviceType.CUDA)

    host = SimpleNamespace(time_range=SimpleNamespace(start=0, end=500), name="aten::conv2d",
                           device_type=torch.autograd.DeviceType.CPU)
    # µs, over 2 steps: [0, 100] and [50, 150] overlap (150 busy), a 10 µs gap (not idle), [160, 200], then a
    # 300 µs gap before [500, 600]
    events = [kernel(500, 600, "sgd"), kernel(0, 100, "conv"), kernel(50, 150, "conv"), kernel(160, 200, "relu"),
              host]
    summary = profile.kernel_summary(SimpleNamespace(events=lambda: events), steps=2)
    assert summary["busy_ms"] == pytest.approx(0.290 / 2) and summary["kernels"] == 2
    assert summary["gaps"] == 0.5 and summary["gap_ms"] == pytest.approx(0.300 / 2)
    assert summary["top"][0] == ("conv", pytest.approx(0.200 / 2))
    assert profile.kernel_summary(SimpleNamespace(events=lambda: [host]), steps=2) is None


def test_pool_cost_compares_two_pools_that_agree_on_speednets_shapes():
    """The amax pool pool_cost.py times against max_pool2d is the same function: the same forward on speednet's odd
    sizes (the last row and column dropped) in any memory format, the same gradient where no window holds a tie."""
    import torch
    import torch.nn.functional as F

    pool_cost = load_script("pool_cost")
    assert pool_cost.pooled_shapes(8) == [(8, 64, 31, 31), (8, 256, 15, 15), (8, 256, 7, 7)]
    x = torch.randn(2, 3, 7, 9, dtype=torch.float64)  # continuous values: no ties
    for fmt in (torch.contiguous_format, torch.channels_last):
        a = x.clone(memory_format=fmt).requires_grad_()
        b = x.clone().requires_grad_()
        assert torch.equal(pool_cost.amax_pool(a), F.max_pool2d(b, 2))
        grad = torch.randn(2, 3, 3, 4, dtype=torch.float64)
        pool_cost.amax_pool(a).backward(grad)
        F.max_pool2d(b, 2).backward(grad)
        assert torch.equal(a.grad, b.grad)
