"""The run folder: resolved config, metrics.csv (the source of truth), checkpoints, summary, log."""

import contextlib
import csv
import fcntl
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from cnnlab.config import TrainConfig
from cnnlab.errors import CnnlabError

METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds",
                  "images_per_second"]
TOP5_COLUMNS = ["train_top5", "val_top5"]


class RunFolder:
    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def create(cls, config: TrainConfig) -> "RunFolder":
        path = Path(config.out or f"runs/{config.model}-{config.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
        if path.exists() and any(path.iterdir()):
            raise CnnlabError(f"run folder {path} already exists and is not empty; pick another --out, "
                              f"or continue it with --resume {path}")
        path.mkdir(parents=True, exist_ok=True)
        config.out = str(path)
        run = cls(path)
        (path / "config.toml").write_text(config.to_toml(), encoding="utf-8")
        return run

    @classmethod
    def open(cls, path) -> "RunFolder":
        path = Path(path)
        if not (path / "config.toml").is_file():
            raise CnnlabError(f"{path} is not a cnnlab run folder (no config.toml)")
        return cls(path)

    @contextlib.contextmanager
    def lock(self):
        """Hold an exclusive lock on the folder while training: a second process refuses instead of interleaving."""
        handle = open(self.file(".lock"), "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise CnnlabError(f"run folder {self.path} is in use by another cnnlab process; wait for it to finish "
                              "or pick another --out") from None
        try:
            yield self
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    def file(self, name: str) -> Path:
        return self.path / name

    def config(self) -> TrainConfig:
        return TrainConfig.from_toml(self.file("config.toml"))

    # -- metrics.csv ---------------------------------------------------------------------------------------------
    def metrics(self) -> list[dict]:
        path = self.file("metrics.csv")
        if not path.is_file():
            return []
        with open(path, newline="") as f:
            return [dict(row) for row in csv.DictReader(f)]

    def append_metrics(self, row: dict, columns: list[str]) -> None:
        path = self.file("metrics.csv")
        new = not path.is_file()
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: _fmt(row.get(k)) for k in columns})

    def truncate_metrics(self, epochs: int) -> None:
        """Keep the first `epochs` rows (a resumed run rewrites what came after its checkpoint)."""
        rows = self.metrics()
        if len(rows) <= epochs:
            return
        path = self.file("metrics.csv")
        with open(path, newline="") as f:
            columns = next(csv.reader(f))
        tmp = path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows[:epochs])
        os.replace(tmp, path)

    def log(self, line: str) -> None:
        with open(self.file("log.txt"), "a", encoding="utf-8") as f:
            f.write(line.rstrip("\n") + "\n")

    def write_summary(self, summary: dict) -> None:
        tmp = self.file("summary.json.tmp")
        tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, self.file("summary.json"))


def _fmt(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def environment(device: torch.device) -> dict:
    """What a reader needs to trust and repeat the numbers: device, versions, git revision."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    try:
        revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                  cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        revision = None
    from cnnlab import __version__

    return {"device": name, "torch": torch.__version__, "python": sys.version.split()[0], "cnnlab": __version__,
            "git_revision": revision}
