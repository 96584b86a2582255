"""The comparison report, checked on real tiny runs: 2 configs × 2 seeds of an MLP on a CIFAR-like folder."""

import base64
import csv
import io
import json
import re
import shutil
import statistics
from pathlib import Path

import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from PIL import Image

from cnnlab.cli import main
from cnnlab.config import TrainConfig
from cnnlab.engine import fit
from cnnlab.errors import CnnlabError
from cnnlab.report.command import report_main
from cnnlab.report.compare import best_run, factors, group_runs, grouped_table, primary_metric, results_table
from cnnlab.report.page import write_report
from cnnlab.report.plots import factor_figures, plot_runs
from cnnlab.report.curves import save_curves
from cnnlab.report.records import Run, load_run
from data_fixtures import write_image_folder

CONFIGS = {"a": {"hidden": [16], "lr": 0.05}, "b": {"hidden": [32], "lr": 0.1}}
SEEDS = (0, 1)


def make_sweep(root: Path) -> Path:
    """root/sweep/<config>-s<seed>: four finished runs; the best of each config (by validation) also evaluated."""
    from cnnlab.evaluate import evaluate_run

    tree, _ = write_image_folder(root / "tree", per_class=4)
    sweep = root / "sweep"
    for name, options in CONFIGS.items():
        for seed in SEEDS:
            fit(TrainConfig(model="mlp", dataset="cifar10", data=str(tree), cache_dir=str(root / "cache"),
                            epochs=2, batch_size=16, val_split=0.25, seed=seed, out=str(sweep / f"{name}-s{seed}"),
                            **options))
    for group in group_runs([sweep]):  # the best run of each group, evaluated as the report's hint asks
        evaluate_run(best_run(group.runs).path)  # writes eval_test.json, confusion_test.png, filters.png …
    return sweep


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return make_sweep(tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("linreg") / "run"
    fit(TrainConfig(model="linreg", dataset="synthetic-linear", batch_size=50, epochs=3, lr=0.05, momentum=0.0,
                    seed=3, out=str(out)))
    return out


def summaries(sweep: Path) -> dict:
    return {p.name: json.loads((p / "summary.json").read_text()) for p in sorted(sweep.iterdir())}


def best_val_acc(run: Path) -> float:
    with open(run / "metrics.csv", newline="") as f:
        return max(float(r["val_acc"]) for r in csv.DictReader(f))


def test_results_table_has_the_differing_hyperparameters_and_the_summaries_numbers(sweep):
    rows = results_table([sweep])
    assert [r["run"] for r in rows] == ["a-s0", "a-s1", "b-s0", "b-s1"]
    keys = list(rows[0])
    # out, data and cache_dir differ or could, but say where things live, not what was trained
    assert keys[keys.index("dataset") + 1:keys.index("parameters")] == ["hidden", "lr", "seed"]
    assert [(r["hidden"], r["lr"], r["seed"]) for r in rows] == [([16], 0.05, 0), ([16], 0.05, 1),
                                                                  ([32], 0.1, 0), ([32], 0.1, 1)]
    for row in rows:
        s = summaries(sweep)[row["run"]]
        assert (row["model"], row["dataset"], row["parameters"], row["test_top1"], row["epochs"]) == \
            ("mlp", "cifar10", s["parameters"], s["test_top1"], s["epochs_run"])
        assert (row["wall_seconds"], row["images_per_second"], row["device"]) == \
            (s["wall_seconds"], s["images_per_second"], s["device"])
        assert row["best_val_acc"] == pytest.approx(best_val_acc(sweep / row["run"]))


def test_seed_groups_give_mean_and_sample_std_by_hand(sweep):
    groups = group_runs([sweep])
    assert [[r.name for r in g.runs] for g in groups] == [["a-s0", "a-s1"], ["b-s0", "b-s1"]]
    assert factors(groups) == ["hidden", "lr"]
    table = grouped_table([sweep])
    s = summaries(sweep)
    assert len(table) == 2
    for row, name in zip(table, "ab"):
        assert (row["hidden"], row["lr"], row["n"], row["seeds"]) == (CONFIGS[name]["hidden"], CONFIGS[name]["lr"],
                                                                      2, [0, 1])
        for metric, values in (("test_top1", [s[f"{name}-s{k}"]["test_top1"] for k in SEEDS]),
                               ("wall_seconds", [s[f"{name}-s{k}"]["wall_seconds"] for k in SEEDS]),
                               ("best_val_acc", [best_val_acc(sweep / f"{name}-s{k}") for k in SEEDS])):
            mean = (values[0] + values[1]) / 2
            std = ((values[0] - mean) ** 2 + (values[1] - mean) ** 2) ** 0.5  # √(Σ(x − x̄)² / (n − 1)), n = 2
            assert (row[metric].mean, row[metric].std, row[metric].n) == pytest.approx((mean, std, 2)), metric
        assert row["test_top5"] is None  # 10 classes: no top-5 column anywhere


def test_plot_runs_draws_one_line_per_run_and_split(sweep, regression_run):
    fig = plot_runs([sweep])
    assert isinstance(fig, Figure)
    accuracy, loss = fig.axes
    for ax in (accuracy, loss):
        assert len(ax.lines) == 4 * 2
        assert sorted(line.get_linestyle() for line in ax.lines) == ["-"] * 4 + ["--"] * 4
        assert len({line.get_color() for line in ax.lines}) == 4  # one colour per run
    assert accuracy.get_ylabel() == "accuracy" and loss.get_ylabel() == "loss"
    assert fig._repr_png_().startswith(b"\x89PNG")  # what Jupyter calls to show it inline, whatever the backend
    # regression: no accuracy panel, only the loss
    (ax,) = plot_runs([regression_run]).axes
    assert ax.get_ylabel() == "loss" and len(ax.lines) == 2


def test_write_report_is_self_contained(sweep, tmp_path):
    index = write_report([sweep], tmp_path / "report")
    assert index == tmp_path / "report" / "index.html"
    text = index.read_text()
    assert not re.search(r"https?://", text, re.I)
    assert not re.search(r"<script|<link|<iframe|url\(|@import|src=\"(?!data:)", text, re.I)
    sources = re.findall(r'<img src="([^"]*)"', text)
    # curves, one factor chart for hidden and lr (changed together: the same dots), then for the best run and the
    # other group's best: confusion matrix, reliability diagram, first-layer weights, most confident mistakes
    assert len(sources) == 1 + 1 + 2 * 4
    assert text.count("expected calibration error") == 2 and text.count("most confident mistakes") == 2
    assert "Best run: " in text and re.search(r"Best of its group: \w-s\d<", text)
    assert re.search(r"the best of the 2 runs with hidden=(16|32), lr=0\.(05|1), by best val acc", text)
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            assert im.format == "PNG" and min(im.size) > 100
    assert "Mean ± std over seeds" in text and "airplane" in text  # the grouped table, per-class accuracy

    md = (tmp_path / "report" / "results.md").read_text()
    assert "| run | model | dataset | hidden | lr | seed | parameters | best val acc |" in md
    assert "| model | dataset | hidden | lr | n | seeds |" in md
    assert re.search(r"\| mlp \| cifar10 \| 16 \| 0.05 \| 2 \| 0, 1 \| [\d,]+ \| "
                     r"\d\.\d{4} ± \d\.\d{4} \[-?\d\.\d{4}, \d\.\d{4}\] \|", md), md
    linked = re.findall(r"\]\(([^)]+\.png)\)", md)  # the Markdown links the PNGs written beside it
    assert len(linked) == len(sources), linked
    for name in linked:
        assert (tmp_path / "report" / name).is_file()


def test_single_seeds_regression_and_missing_eval_files_are_reported_with_notes(sweep, regression_run, tmp_path):
    # A folder name that needs escaping, and a best run without confusion_test.png or eval_test.json.
    odd = tmp_path / 'x<b>&"y'
    shutil.copytree(sweep / "a-s0", odd, ignore=shutil.ignore_patterns("*.pt", "confusion_*", "eval_*"))
    text = write_report([odd, regression_run], tmp_path / "report").read_text()
    assert "x&lt;b&gt;&amp;&quot;y" in text and "<b>" not in text
    assert "Mean ± std over seeds" not in text  # every group holds one run
    assert "No confusion matrix" in text and "No per-class accuracy" in text
    # The curves (per epoch, and per step and per second as the batch sizes differ); bar charts belong to groups.
    assert len(re.findall(r"<img ", text)) == 3 and "factor_" not in text
    assert best_run([regression_run]).name == "run" and primary_metric([regression_run]) == "best_val_loss"
    rows = results_table([regression_run])
    assert rows[0]["best_val_acc"] is None and rows[0]["test_top1"] is None and rows[0]["test_loss"] > 0


def test_cli_command_expands_a_sweep_folder_and_skips_unfinished_runs(sweep, tmp_path, capsys):
    runs = tmp_path / "runs"
    for name in ("a-s0", "b-s1"):
        shutil.copytree(sweep / name, runs / name, ignore=shutil.ignore_patterns("*.pt"))
    (runs / "still-running").mkdir()
    shutil.copy(sweep / "a-s0" / "config.toml", runs / "still-running")
    assert main(["report", str(runs), "-o", str(tmp_path / "out")]) == 0
    assert "index.html" in capsys.readouterr().out
    text = (tmp_path / "out" / "index.html").read_text()
    assert "2 runs" in text and "skipped" in text and "still-running" in text
    assert report_main([runs / "a-s0"], tmp_path / "one") == tmp_path / "one"


def test_curves_only_writes_one_small_png_per_run_and_nothing_else(sweep, tmp_path, capsys):
    assert main(["report", str(sweep), "-o", str(tmp_path / "docs"), "--curves-only"]) == 0
    names = sorted(p.name for p in sweep.iterdir())
    assert sorted(p.name for p in (tmp_path / "docs").iterdir()) == [f"{n}.png" for n in names]
    assert capsys.readouterr().out.count("curves: ") == len(names) == 4
    for name in names:
        with Image.open(tmp_path / "docs" / f"{name}.png") as image:
            assert image.format == "PNG" and image.width <= 640 and image.height <= 256


def test_a_folder_that_is_not_a_run_is_one_clear_error(sweep, tmp_path):
    with pytest.raises(CnnlabError, match="neither a cnnlab run folder"):
        report_main([tmp_path], tmp_path / "out")
    with pytest.raises(CnnlabError, match="does not exist"):
        report_main([tmp_path / "nowhere"], tmp_path / "out")
    (tmp_path / "a-file").write_text("")
    with pytest.raises(CnnlabError, match="is a file"):
        report_main([sweep / "a-s0"], tmp_path / "a-file")
    run = tmp_path / "run"
    shutil.copytree(sweep / "a-s0", run, ignore=shutil.ignore_patterns("*.pt", "summary.json"))
    with pytest.raises(CnnlabError, match="not a cnnlab run folder: no summary.json.*still going"):
        load_run(run)
    with pytest.raises(CnnlabError, match="not a cnnlab run folder: no summary.json"):
        report_main([run], tmp_path / "out")
    shutil.copy(sweep / "a-s0" / "summary.json", run)
    metrics = run / "metrics.csv"
    good = metrics.read_text()
    metrics.write_text(good[:-25])  # killed in the middle of writing a row
    with pytest.raises(CnnlabError, match=r"metrics.csv line 3 has \d+ fields, expected \d+: .*truncated"):
        load_run(run)
    metrics.write_text(good.replace("0.05", "0.o5"))
    with pytest.raises(CnnlabError, match="not a number"):
        load_run(run)
    metrics.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    with pytest.raises(CnnlabError, match="metrics.csv"):
        load_run(run)
    metrics.write_text(good)
    (run / "summary.json").write_text('{"model": "mlp"')
    with pytest.raises(CnnlabError, match="summary.json is not valid JSON"):
        load_run(run)
    with pytest.raises(CnnlabError) as error:
        load_run(run)
    assert "\n" not in str(error.value)  # the CLI prints it as one line


def fake_run(name, seed, lr, hidden, acc):
    """A Run record without training: enough for grouping and bar charts."""
    config = {"model": "mlp", "hidden": hidden, "lr": lr, "seed": seed, "out": f"runs/{name}"}
    return Run(path=Path("runs") / name, config=config, summary={"model": "mlp", "dataset": "cifar10"},
               metrics=[{"epoch": 1.0, "val_acc": acc / 2, "val_loss": 1.0}, {"epoch": 2.0, "val_acc": acc,
                                                                               "val_loss": 0.5}])


def test_a_dot_and_interval_chart_per_factor_with_95_percent_t_intervals_on_a_zoomed_axis():
    # a 2 × 2 factorial (lr × hidden), two seeds each; accuracies chosen so the means and stds are easy
    runs, expected = [], {}
    for lr in (0.1, 0.01):
        for hidden in ([64], [8]):
            accs = [0.5 + lr + hidden[0] / 1000, 0.52 + lr + hidden[0] / 1000]
            expected[(lr, hidden[0])] = (statistics.mean(accs), statistics.stdev(accs))
            runs += [fake_run(f"{lr}-{hidden[0]}-{s}", s, lr, hidden, a) for s, a in enumerate(accs)]
    charts = dict(factor_figures(runs))
    assert list(charts) == ["hidden", "lr"]
    ax = charts["lr"].axes[0]
    assert not ax.patches  # no bars
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.01\nhidden=8", "0.01\nhidden=64",
                                                             "0.1\nhidden=8", "0.1\nhidden=64"]
    errorbars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert [c.lines[0].get_ydata()[0] for c in errorbars] == pytest.approx(
        [expected[k][0] for k in ((0.01, 8), (0.01, 64), (0.1, 8), (0.1, 64))])
    # the intervals: mean ± t(0.975, 1) · sd / √2, and sd of two runs is |a − b| / √2, so ± 12.706 · 0.01
    for c in errorbars:
        (segment,) = c.lines[2][0].get_segments()
        assert segment[1][1] - segment[0][1] == pytest.approx(2 * 12.706 * 0.01)
    assert ax.get_ylim()[0] > 0.1  # zoomed on the data, not from 0
    assert [t.get_text() for t in ax.texts] == ["n=2"] * 4


@pytest.mark.parametrize("df,t", [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042), (50, 2.009),
                                  (1000, 1.962)])
def test_student_t_percentiles_match_the_tables(df, t):
    from cnnlab.report.compare import t975

    assert t975(df) == pytest.approx(t, abs=1e-3)


def test_a_stat_gives_the_95_percent_interval_of_the_mean_by_hand():
    from cnnlab.report.compare import Stat
    from cnnlab.report.page import format_cell

    s = Stat.of([0.9048, 0.9047, 0.9063])  # the CPU speedrun's three seeds
    sd = statistics.stdev([0.9048, 0.9047, 0.9063])
    assert s.half_width == pytest.approx(4.303 * sd / 3 ** 0.5)
    assert s.ci95 == pytest.approx((s.mean - s.half_width, s.mean + s.half_width))
    assert format_cell("best_val_acc", s) == f"{s.mean:.4f} ± {sd:.4f} [{s.ci95[0]:.4f}, {s.ci95[1]:.4f}]"
    assert format_cell("best_val_acc", Stat.of([0.5, 0.5])) == "0.5000"  # no spread, no interval to show
    one = Stat.of([0.5])
    assert one.half_width is None and one.ci95 is None and format_cell("best_val_acc", one) == "0.5000"


def test_the_report_draws_the_grad_norm_where_runs_have_it_and_old_runs_still_plot(tmp_path):
    def run(name, grad_norm):
        metrics = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "train_acc": None, "val_acc": None,
                    **({"grad_norm": 2.0 * e} if grad_norm else {})} for e in (1.0, 2.0)]
        return Run(tmp_path / name, {}, metrics, {})

    old = plot_runs([run("old", False)], "val_loss")
    assert [ax.get_ylabel() for ax in old.axes] == ["loss"]
    both = plot_runs([run("old", False), run("clipped", True)], "val_loss")
    assert [ax.get_ylabel() for ax in both.axes] == ["loss", "gradient norm before clipping"]
    assert [list(line.get_ydata()) for line in both.axes[1].lines] == [[2.0, 4.0]]  # the clipped run's alone
    # A run's own curves.png gets the panel too: three panels instead of two.
    rows = [{"epoch": "1", "train_loss": "1", "val_loss": "1", "train_acc": "0.5", "val_acc": "0.5",
              "grad_norm": ""}]
    width_without = Image.open(save_curves(rows, tmp_path / "a.png", small=True)).width
    rows[0]["grad_norm"] = "2.5"
    assert Image.open(save_curves(rows, tmp_path / "b.png", small=True)).width > 1.3 * width_without


def test_the_most_confused_pairs_by_hand():
    from cnnlab.report.records import confused_pairs

    confusion = [[8, 2, 0],   # cat: 2 taken for dog
                 [5, 4, 1],   # dog: 5 taken for cat, 1 for fox
                 [0, 0, 10]]  # fox: all right
    pairs = confused_pairs(confusion, ["cat", "dog", "fox"])
    assert pairs == [{"true": "dog", "predicted": "cat", "count": 5, "share of true class": 0.5},
                     {"true": "cat", "predicted": "dog", "count": 2, "share of true class": 0.2},
                     {"true": "dog", "predicted": "fox", "count": 1, "share of true class": 0.1}]
    assert confused_pairs([[3, 0], [0, 4]], ["a", "b"]) == []  # no mistakes, no table
    assert len(confused_pairs([[0, 1, 1], [1, 0, 1], [1, 1, 0]], list("abc"), top=2)) == 2


def test_many_groups_show_only_the_best_run_in_detail_with_a_note(sweep, tmp_path, monkeypatch):
    import cnnlab.report.page as page

    monkeypatch.setattr(page, "MAX_GROUP_SECTIONS", 1)  # the sweep's 2 groups are "many" here
    text = write_report([sweep], tmp_path / "report").read_text()
    assert "Best run: " in text and "Best of its group" not in text
    assert "The runs form 2 seed groups: only the best run overall is shown in detail" in text
    assert text.count("most confident mistakes") == 1


def test_choosing_a_groups_best_run_keeps_the_names_given_among_all_runs():
    from cnnlab.report.records import load_runs

    runs = load_runs([fake_run("sweepA/seed0", 0, 0.1, [8], 0.6), fake_run("sweepB/seed0", 0, 0.2, [8], 0.7),
                      fake_run("sweepB/seed1", 1, 0.2, [8], 0.8)])
    names = [r.name for r in runs]
    assert names == ["sweepA/seed0", "sweepB/seed0", "sweepB/seed1"]  # unique only with the parent folder
    assert best_run(runs[1:]) is runs[2] and best_run(iter(runs)) is runs[2]
    assert [r.name for r in runs] == names  # a group's best is chosen without renaming its runs to seed0, seed1


def test_only_the_pictures_the_evaluation_drew_are_shown(sweep, tmp_path):
    evaluated = next(p for p in sorted(sweep.iterdir()) if (p / "eval_test.json").is_file())
    copy = tmp_path / "copy"
    shutil.copytree(evaluated, copy, ignore=shutil.ignore_patterns("*.pt"))
    run = load_run(copy)  # a copied folder: the JSON names the original's paths, the pictures sit beside it
    assert run.filters_png == copy / "filters.png" and run.mistakes_png == copy / "mistakes_test.png"
    evaluation = json.loads((copy / "eval_test.json").read_text())
    del evaluation["filters_png"]  # e.g. an evaluation before the gallery existed, next to a stale filters.png
    (copy / "eval_test.json").write_text(json.dumps(evaluation))
    assert load_run(copy).filters_png is None and load_run(copy).mistakes_png == copy / "mistakes_test.png"
