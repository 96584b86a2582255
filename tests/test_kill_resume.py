"""SIGKILL a training run at ≥ 10 random moments and resume it each time: it must end exactly as a run left alone."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "kill_resume.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("kill_resume", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_killed_and_resumed_run_matches_the_uninterrupted_one(tmp_path):
    result = load_benchmark().run_benchmark(kills=10, epochs=24, seed=0, workdir=tmp_path)
    assert not result.problems, result.problems
    assert len(result.kills) == 10 and result.missed == 0
    assert all(k.recovered for k in result.kills), [(k.moment, k.at, k.note) for k in result.kills]
    # the first two kills come before the first checkpoint: resume is refused and the run starts again
    assert [k.checkpoint_epoch for k in result.kills[:2]] == [None, None]
    assert all(k.epochs_lost <= 1 for k in result.kills)  # a checkpoint every epoch: at most one epoch redone
    assert result.metrics_equal and result.weights_equal and not result.leftovers
