"""--tensorboard, read back from the event files: metrics.csv's numbers at its steps, the training loss and lr of
every Nth optimizer step, one value per step across resumes, one line without the package, nothing without the flag."""

import csv
import sys
import time
from pathlib import Path

import pytest

from cnnlab.cli import main
from cnnlab.config import TrainConfig
from cnnlab.engine import fit
from cnnlab.optim import lr_multiplier
from cnnlab.report.compare import GROUP_IGNORED, differing_fields
from cnnlab.runfolder import RunFolder
from data_fixtures import write_image_folder

pytest.importorskip("tensorboard", reason="reading event files needs the tensorboard package: "
                                          "pip install 'cnnlab[tensorboard]' (it is in the test extra)")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.custom_scalar import layout_pb2  # noqa: E402

# metrics.csv's columns and the tags they are logged under (step is the x-axis of all of them).
TAGS = {"epoch": "epoch", "train_loss": "loss/train", "train_acc": "accuracy/train", "val_loss": "loss/val",
        "val_acc": "accuracy/val", "lr": "lr", "epoch_seconds": "epoch_seconds",
        "images_per_second": "images_per_second", "elapsed_seconds": "elapsed_seconds", "grad_norm": "grad_norm",
        "train_top5": "top5/train", "val_top5": "top5/val"}
STEPS_PER_EPOCH = 4  # 60 training images (80 less a quarter for validation) in steps of 16, 16, 16 and 12


def config(tmp_path, classes=10, **settings) -> TrainConfig:
    """A small MLP on an image folder of 80 training images in `classes` classes; the run goes to tmp_path/run."""
    tree = tmp_path / f"tree{classes}"
    if not tree.exists():
        write_image_folder(tree, classes=[f"c{k:02d}" for k in range(classes)], per_class=80 // classes, size=8)
    dataset = "cifar10" if classes == 10 else "cifar100"  # cifar100's coarse labels: 20 classes, so top-5 is kept
    base = dict(model="mlp", hidden=[16], dataset=dataset, data=str(tree), epochs=3, batch_size=16, lr=0.05,
                val_split=0.25, seed=3, device="cpu", cache_dir=str(tmp_path / "cache"), out=str(tmp_path / "run"),
                tensorboard=True)
    return TrainConfig(**{**base, **settings})


def scalars(run) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of the run's event files as [(step, value)], in the order TensorBoard shows them."""
    events = EventAccumulator(str(Path(run) / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def charts(run) -> dict[str, list[str]]:
    """The custom-scalars layout: chart title → the tags it overlays."""
    events = EventAccumulator(str(Path(run) / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    layout = layout_pb2.Layout.FromString(events.Tensors("custom_scalars__config__")[-1].tensor_proto.string_val[0])
    return {chart.title: list(chart.multiline.tag) for category in layout.category for chart in category.chart}


def metrics(run) -> list[dict]:
    with open(Path(run) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def at_step(column: str, row: dict) -> int:
    """Where a metrics.csv number is logged: the row's step (the epoch's last), the lr at the epoch's first."""
    return int(row["step"]) - (STEPS_PER_EPOCH - 1 if column == "lr" else 0)


def approx(pairs):
    # Event files hold float32, metrics.csv six significant digits.
    return [(step, pytest.approx(value, rel=1e-5, abs=1e-7)) for step, value in pairs]


def next_second():
    """TensorBoard reads a folder's event files in name order, which begins with the second each was opened in. A
    resume in a new process is always later; here it shares the test's process and could share its second, where
    the name's per-process counter decides, compared as text (…9 after …10)."""
    time.sleep(1.01 - time.time() % 1)


def test_every_metrics_csv_column_has_a_tag():
    from cnnlab.runfolder import METRIC_COLUMNS, TOP5_COLUMNS
    from cnnlab.tensorboard import TAGS as LOGGED

    assert set(LOGGED) == set(TAGS) == set(METRIC_COLUMNS + TOP5_COLUMNS) - {"step"}  # a new column gets a tag


@pytest.mark.parametrize("classes", [10, 20])
def test_every_metrics_csv_number_is_logged_at_its_step(tmp_path, classes):
    run = fit(config(tmp_path, classes, clip_grad_norm=5.0, tensorboard_every=0)).path
    rows, logged = metrics(run), scalars(run)
    assert [int(row["step"]) for row in rows] == [4, 8, 12]
    columns = [c for c in rows[0] if c != "step"]
    assert len(columns) == (12 if classes == 20 else 10) and all(rows[0][c] != "" for c in columns)
    assert set(logged) == {TAGS[c] for c in columns}  # every step tag absent: --tensorboard-every 0
    for column in columns:
        assert logged[TAGS[column]] == approx((at_step(column, row), float(row[column])) for row in rows), column
    assert logged["epoch"] == [(4, 1), (8, 2), (12, 3)] and [s for s, _ in logged["lr"]] == [1, 5, 9]
    # The curves a user watches: train and validation overlaid, one chart per metric.
    expected = {"loss": ["loss/train", "loss/val"], "accuracy": ["accuracy/train", "accuracy/val"]}
    if classes == 20:
        expected["top5"] = ["top5/train", "top5/val"]
    assert charts(run) == expected


def test_a_regression_run_charts_its_loss_only_and_logs_no_accuracy(tmp_path):
    run = fit(TrainConfig(model="linreg", dataset="synthetic-linear", batch_size=100, epochs=2, lr=0.03,
                          momentum=0.0, out=str(tmp_path / "run"), tensorboard=True, tensorboard_every=5)).path
    rows, logged = metrics(run), scalars(run)
    assert charts(run) == {"loss": ["loss/train", "loss/val"]}
    assert not any(tag.startswith("accuracy") for tag in logged)
    assert logged["loss/val"] == approx((int(row["step"]), float(row["val_loss"])) for row in rows)
    steps = [int(row["step"]) for row in rows]  # 900 training examples: 9 steps an epoch
    assert steps == [9, 18] and [s for s, _ in logged["step/loss"]] == [5, 10, 15]


@pytest.mark.parametrize("settings", [dict(batch_size=16), dict(batch_size=8, accumulate=2)])
def test_each_steps_loss_and_lr_add_up_to_the_epochs(tmp_path, settings):
    # Four optimizer steps an epoch either way; with --accumulate 2 each step's loss is the mean of two batches'.
    run = fit(config(tmp_path, tensorboard_every=1, **settings)).path
    rows, logged, resolved = metrics(run), scalars(run), RunFolder(run).config()
    assert [s for s, _ in logged["step/loss"]] == [s for s, _ in logged["step/lr"]] == list(range(1, 13))
    sizes = [16, 16, 16, 12]
    for epoch, row in enumerate(rows):
        losses = [value for _, value in logged["step/loss"][4 * epoch:4 * epoch + 4]]
        # Each step's mean loss, weighted by its examples, is the epoch's training loss.
        assert sum(n * loss for n, loss in zip(sizes, losses)) / 60 == pytest.approx(float(row["train_loss"]),
                                                                                    rel=1e-5)
        # metrics.csv's lr is the one the epoch started with: its first step's.
        assert logged["step/lr"][4 * epoch][1] == pytest.approx(float(row["lr"]), rel=1e-5)
    assert logged["lr"] == [pair for pair in logged["step/lr"] if pair[0] % STEPS_PER_EPOCH == 1]  # on the curve
    schedule = lr_multiplier(resolved, STEPS_PER_EPOCH)  # step k trains with the schedule's lr after k − 1 steps
    assert logged["step/lr"] == approx((k, resolved.lr * schedule(k - 1)) for k in range(1, 13))
    assert len({value for _, value in logged["step/lr"]}) > 6  # a schedule that moves (the mlp recipe's triangle)


def test_step_scalars_come_every_n_steps_and_do_not_change_training(tmp_path):
    every_step = scalars(fit(config(tmp_path, tensorboard_every=1, out=str(tmp_path / "every"))).path)
    run = fit(config(tmp_path, tensorboard_every=3)).path
    logged = scalars(run)
    assert [s for s, _ in logged["step/loss"]] == [s for s, _ in logged["step/lr"]] == [3, 6, 9, 12]
    assert logged["step/loss"] == [pair for pair in every_step["step/loss"] if pair[0] % 3 == 0]
    assert logged["step/lr"] == [pair for pair in every_step["step/lr"] if pair[0] % 3 == 0]
    off = fit(config(tmp_path, tensorboard=False, out=str(tmp_path / "off"))).path
    timeless = [[{k: v for k, v in row.items() if "second" not in k} for row in metrics(r)]
                for r in (run, tmp_path / "every", off)]
    assert timeless[0] == timeless[1] == timeless[2] and len(timeless[0]) == 3


def test_a_resumed_run_logs_each_step_once(tmp_path):
    first = config(tmp_path, epochs=1, tensorboard_every=2)
    fit(first)
    next_second()
    run = fit(TrainConfig(epochs=3), resume=first.out).path
    logged, rows = scalars(run), metrics(run)
    # The first epoch's row sits at step 4, the resume's purge step (4 + 1) keeps it.
    for column in ("train_loss", "val_acc", "lr", "epoch"):
        assert logged[TAGS[column]] == approx((at_step(column, row), float(row[column])) for row in rows), column
    assert [s for s, _ in logged["loss/train"]] == [4, 8, 12]
    assert [s for s, _ in logged["step/loss"]] == [2, 4, 6, 8, 10, 12]


def test_a_resume_hides_what_the_killed_run_logged_after_its_checkpoint(tmp_path):
    straight = scalars(fit(config(tmp_path, epochs=4, tensorboard_every=1, out=str(tmp_path / "straight"))).path)

    def kill(epoch, step):
        if (epoch, step) == (4, 2):
            raise RuntimeError("killed")
        return False

    # last.pt every 2 epochs: the kill in epoch 4 leaves epoch 2's, after epoch 3's row and steps 9–14 were logged.
    killed = config(tmp_path, epochs=4, tensorboard_every=1, checkpoint_every=2)
    with pytest.raises(RuntimeError, match="killed"):
        fit(killed, should_stop=kill)
    before = scalars(killed.out)
    assert [s for s, _ in before["loss/train"]] == [4, 8, 12] and before["step/loss"][-1][0] == 14
    next_second()
    logged = scalars(fit(None, resume=killed.out).path)
    assert [s for s, _ in logged["loss/train"]] == [4, 8, 12, 16]
    assert [s for s, _ in logged["step/loss"]] == list(range(1, 17))
    # The resume is exact on the CPU: the same numbers as a run never killed.
    for tag in ("loss/train", "loss/val", "accuracy/val", "lr", "epoch", "step/loss", "step/lr"):
        assert logged[tag] == straight[tag], tag


def test_without_the_package_it_is_one_line_and_leaves_no_run_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` of it now fails
    out = tmp_path / "run"
    assert main(["train", "--model", "linreg", "--dataset", "synthetic-linear", "--epochs", "1", "--tensorboard",
                 "--out", str(out)]) == 2
    assert capsys.readouterr().err == ("cnnlab: error: --tensorboard needs the tensorboard package: "
                                       "pip install 'cnnlab[tensorboard]'\n")
    assert not out.exists()


def test_off_by_default_it_writes_no_event_files(tmp_path):
    run = fit(TrainConfig(model="linreg", dataset="synthetic-linear", batch_size=100, epochs=1, lr=0.03,
                          out=str(tmp_path / "run"))).path
    assert RunFolder(run).config().tensorboard is False and len(metrics(run)) == 1
    assert not (run / "tensorboard").exists()


def test_tensorboard_every_must_not_be_negative(capsys):
    assert main(["train", "--model", "linreg", "--dataset", "synthetic-linear", "--tensorboard-every", "-1"]) == 2
    assert capsys.readouterr().err == ("cnnlab: error: --tensorboard-every -1 is not allowed; use an integer ≥ 0 "
                                       "(0 = per epoch only)\n")


def test_reports_compare_a_run_with_tensorboard_to_one_without():
    # Logging changes no number (test_step_scalars_come_every_n_steps_and_do_not_change_training): not a setting.
    with_it = {"lr": 0.1, "seed": 1, "tensorboard": True, "tensorboard_every": 5}
    without = {"lr": 0.1, "seed": 2, "tensorboard": False, "tensorboard_every": 50}
    assert differing_fields([with_it, without]) == ["seed"]
    assert differing_fields([with_it, without], ignore=GROUP_IGNORED) == []
