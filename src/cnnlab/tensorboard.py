"""Optional TensorBoard logging (`--tensorboard`): the run's numbers as they come, for `tensorboard --logdir runs`.

metrics.csv stays the record; this is a live view of it, plus the training loss and lr every few optimizer steps.
Every scalar's x-axis is the global optimizer step (metrics.csv's `step`), so per-step and per-epoch curves line up.
"""

from pathlib import Path

from cnnlab.errors import CnnlabError
from cnnlab.metrics import has_top5

FOLDER = "tensorboard"  # inside the run folder
MISSING = "--tensorboard needs the tensorboard package: pip install 'cnnlab[tensorboard]'"

# metrics.csv's columns (all but `step`, the x-axis) as tags; train and val share a group, so they overlay.
TAGS = {"train_loss": "loss/train", "val_loss": "loss/val", "train_acc": "accuracy/train", "val_acc": "accuracy/val",
        "train_top5": "top5/train", "val_top5": "top5/val", "lr": "lr", "grad_norm": "grad_norm",
        "images_per_second": "images_per_second", "epoch_seconds": "epoch_seconds",
        "elapsed_seconds": "elapsed_seconds", "epoch": "epoch"}


def summary_writer():
    """torch's SummaryWriter class; one CnnlabError line when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # the optional `tensorboard` extra
    except ImportError:
        raise CnnlabError(MISSING) from None
    return SummaryWriter


def charts(task: str, num_classes: int) -> dict:
    """The custom-scalars layout: train and validation overlaid in one chart per metric the run has."""
    groups = (["loss"] + (["accuracy"] if task == "classification" else [])
              + (["top5"] if has_top5(task, num_classes) else []))
    return {"train and validation": {group: ["Multiline", [f"{group}/train", f"{group}/val"]] for group in groups}}


class TensorBoardLog:
    """The writer the loop calls: `epoch(row)` after each metrics.csv row, `step(...)` every `every` optimizer
    steps (0: never; `wants(step)` says which), `close()` at the end.

    `purge_step` (on resume): TensorBoard hides what earlier event files in the folder logged at that step or later.
    """

    def __init__(self, folder: Path, every: int, layout: dict, steps_per_epoch: int, purge_step: int | None = None):
        self.every, self.steps_per_epoch = every, steps_per_epoch
        self.writer = summary_writer()(str(folder), purge_step=purge_step)
        self.writer.add_custom_scalars(layout)

    def wants(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def step(self, step: int, loss, lr: float) -> None:
        """The training loss (under torchrun, this process's share of the step) and lr of optimizer step `step`.
        Reading `loss` waits for the device, which is why the loop asks only every `every` steps."""
        self.writer.add_scalar("step/loss", float(loss), step)
        self.writer.add_scalar("step/lr", lr, step)

    def epoch(self, row: dict) -> None:
        """An epoch's metrics.csv row, at its `step` (the epoch's last), but its lr — the one the epoch started
        with — at the epoch's first step, where the schedule used it; flushed, so a live TensorBoard shows the epoch."""
        for column, tag in TAGS.items():
            if row.get(column) is not None:
                step = row["step"] - self.steps_per_epoch + 1 if column == "lr" else row["step"]
                self.writer.add_scalar(tag, row[column], step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
