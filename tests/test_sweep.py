"""`cnnlab sweep`: planning, and a sweep stopped part-way that is started again."""

import json

import pytest

import cnnlab.engine as engine
from cnnlab import CnnlabError
from cnnlab.sweep import plan, run_sweep

SWEEP = """
[sweep]
out = "{out}"
seeds = [0, 1]
[base]
model = "linreg"
dataset = "synthetic-linear"
batch_size = 50
epochs = 3
momentum = 0.0
[[variant]]
name = "slow"
lr = 0.01
[[variant]]
name = "fast"
lr = 0.1
[grid]
weight_decay = [0.0, 0.001]
"""


def write(tmp_path, text=SWEEP):
    path = tmp_path / "sweep.toml"
    path.write_text(text.format(out=tmp_path / "out"))
    return path


def test_plan_is_variants_times_grid_times_seeds(tmp_path):
    out, runs = plan(write(tmp_path))
    names = [n for n, _ in runs]
    assert len(runs) == 2 * 2 * 2 and out == tmp_path / "out"
    assert names[:2] == ["slow-weight_decay=0.0-seed0", "slow-weight_decay=0.0-seed1"]
    config = dict(runs)["fast-weight_decay=0.001-seed1"]
    assert (config.lr, config.weight_decay, config.seed, config.model) == (0.1, 0.001, 1, "linreg")


@pytest.mark.parametrize("text,needle", [
    ("[sweep]\nseeds = []\n", "non-empty list of integers"),
    ("[grid]\nlr = 0.1\n", "must be a non-empty list"),
    ("[base]\nlrr = 0.1\n", "unknown setting 'lrr'"),
    ("[base]\nmomentum = 2.0\n", "--momentum"),
    ("[sweeps]\n", "unknown table [sweeps]"),
    ("[[variant]]\nlr = 0.1\n[[variant]]\nlr = 0.2\n", "share a folder name"),
])
def test_bad_sweep_files(tmp_path, text, needle):
    with pytest.raises(CnnlabError) as info:
        plan(write(tmp_path, text))
    assert needle in str(info.value)


def test_an_interrupted_sweep_skips_finished_runs_and_resumes_the_broken_one(tmp_path, monkeypatch):
    path = write(tmp_path)
    real_fit = engine.fit
    calls, interrupted = [], []

    def flaky_fit(config, resume=None, should_stop=None):
        calls.append(resume or config.out)
        if len(calls) == 3 and not interrupted:  # the third run is stopped inside its second epoch, as by Ctrl-C
            interrupted.append(True)
            return real_fit(config, resume, should_stop=lambda epoch, step: epoch == 2 and step == 3)
        return real_fit(config, resume, should_stop)

    monkeypatch.setattr(engine, "fit", flaky_fit)
    with pytest.raises(SystemExit):
        run_sweep(path, report=False, log=lambda _: None)
    finished = sorted(p.parent.name for p in (tmp_path / "out").glob("*/summary.json"))
    assert len(finished) == 2
    calls.clear()
    run_sweep(path, report=False, log=lambda _: None)
    assert len(calls) == 6  # 8 runs − 2 finished and skipped: the broken one resumed, then 5 new
    assert calls[0].endswith("slow-weight_decay=0.001-seed0")  # the broken one, resumed first
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "out").glob("*/summary.json")]
    assert len(summaries) == 8 and all(s["epochs_run"] == 3 for s in summaries)


@pytest.mark.parametrize("name,count", [("seed-report.toml", 4), ("ablation-regularization.toml", 30),
                                        ("optimizers.toml", 8)])
def test_the_shipped_presets_plan_and_validate(name, count):
    from pathlib import Path

    out, runs = plan(Path(__file__).resolve().parents[1] / "configs" / name)
    assert len(runs) == count and all(config.out.startswith(str(out)) for _, config in runs)
