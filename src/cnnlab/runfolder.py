"""The run folder: resolved config, metrics.csv (the source of truth), checkpoints, summary, log."""

import contextlib
import csv
import dataclasses
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from cnnlab import runfiles
from cnnlab import __version__
from cnnlab.atomic import atomic_write
from cnnlab.checkpoint import save_checkpoint
from cnnlab.config import END_OF_CONFIG, TrainConfig, read_toml
from cnnlab.errors import CnnlabError
from cnnlab.filelock import try_lock, unlock

# step and elapsed_seconds are cumulative optimizer steps and seconds; grad_norm is the mean over the epoch's
# optimizer steps of the gradients' global norm before clipping (empty without --clip-grad-norm).
METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds",
                  "images_per_second", "step", "elapsed_seconds", "grad_norm"]
TOP5_COLUMNS = ["train_top5", "val_top5"]


class RunFolder:
    """A run folder. `readonly` views (every distributed rank but 0) read it and silently skip every write."""

    def __init__(self, path: Path, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly

    @classmethod
    def create(cls, config: TrainConfig) -> "RunFolder":
        """A new, empty run folder at config.out (else the default path) holding config.toml, with `out` as the
        folder's path; `config` itself is not changed."""
        path = Path(config.out or default_run_path(config))
        if path.exists() and not path.is_dir():
            raise CnnlabError(f"--out {path} is a file, not a folder; pick another --out")
        if path.exists() and any(path.iterdir()):
            raise CnnlabError(f"run folder {path} already exists and is not empty; pick another --out, "
                              f"or continue it with --resume {path}")
        created = not path.exists()
        config = dataclasses.replace(config, out=str(path))
        try:
            path.mkdir(parents=True, exist_ok=True)
            with atomic_write(path / runfiles.CONFIG, "w") as f:
                f.write(config.to_toml())
        except OSError as e:
            if created:  # leave nothing behind
                with contextlib.suppress(OSError):
                    path.rmdir()
            raise CnnlabError(f"cannot create run folder {path} ({e.strerror or e}); pick another --out") from None
        return cls(path)

    @classmethod
    def open(cls, path) -> "RunFolder":
        path = Path(path)
        if not path.exists():
            raise CnnlabError(f"run folder {path} does not exist; check the path (cnnlab train --resume RUN_DIR)")
        if not path.is_dir():
            raise CnnlabError(f"{path} is a file, not a run folder; pass the folder that holds config.toml")
        if not (path / runfiles.CONFIG).is_file():
            raise CnnlabError(f"{path} is not a cnnlab run folder (no config.toml); a run stopped before it wrote "
                              "config.toml cannot be resumed: start it again with cnnlab train")
        return cls(path)

    @contextlib.contextmanager
    def lock(self):
        """Hold an exclusive lock on the folder while training: a second process refuses instead of interleaving."""
        with self._writing(".lock"):
            handle = open(self.file(".lock"), "a+")
        with handle:
            if not try_lock(handle):
                raise CnnlabError(f"run folder {self.path} is in use by another cnnlab process; wait for it to "
                                  "finish or pick another --out")
            try:
                yield self
            finally:
                unlock(handle)

    def save_checkpoint(self, state: dict, name: str) -> None:
        if not self.readonly:
            save_checkpoint(state, self.file(name))

    def file(self, name: str) -> Path:
        return self.path / name

    @contextlib.contextmanager
    def _writing(self, name: str):
        """Turn a failed write (disk full, read-only folder) into one line naming the file and what to do."""
        try:
            yield
        except OSError as e:
            then = (f"continue with: cnnlab train --resume {self.path}" if self.file(runfiles.LAST).is_file()
                    else "start the run again")
            raise CnnlabError(f"cannot write {self.file(name)} ({e.strerror or e}); free some disk space or make "
                              f"{self.path} writable, then {then}") from None

    def config(self) -> TrainConfig:
        """The run's resolved config. A file without to_toml's closing line was cut short, and must not silently
        turn the missing settings into defaults."""
        path = self.file(runfiles.CONFIG)
        config = TrainConfig.from_dict(read_config_values(path), str(path))
        if END_OF_CONFIG not in path.read_text(encoding="utf-8"):
            raise CnnlabError(f"{path} is incomplete (its last line is missing); the run folder is damaged — restore "
                              "config.toml or start a new run")
        return config

    def write_config(self, config: TrainConfig) -> None:
        """Replace config.toml, e.g. when a resume changes --epochs."""
        if self.readonly:
            return
        with self._writing(runfiles.CONFIG), atomic_write(self.file(runfiles.CONFIG), "w", remove_stale=True) as f:
            f.write(config.to_toml())

    # -- metrics.csv ---------------------------------------------------------------------------------------------
    def metrics(self) -> list[dict]:
        """metrics.csv's rows as {column: cell text}."""
        header, rows = read_metrics(self.file(runfiles.METRICS))
        return [dict(zip(header, cells)) for _, cells in rows]

    def append_metrics(self, row: dict, columns: list[str]) -> None:
        """Append a row; a file that exists keeps its header, so a run begun by an older cnnlab with fewer
        columns stays one table when resumed (the new columns are left out of it)."""
        if self.readonly:
            return
        path = self.file(runfiles.METRICS)
        header, _ = read_metrics(path)
        new = not header
        columns = columns if new else header
        with self._writing(runfiles.METRICS), open(path, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: _fmt(row.get(k)) for k in columns})

    def truncate_metrics(self, epochs: int) -> None:
        """Keep the first `epochs` rows (a resumed run rewrites what came after its checkpoint).

        Those rows must be intact: a row cut off by a kill after the checkpoint is dropped, but a file that lost
        rows the checkpoint counts on, or holds something else, is refused rather than continued with gaps.
        """
        if self.readonly:
            return
        path = self.file(runfiles.METRICS)
        header, rows = read_metrics(path)
        problem = _kept_rows_problem(header, rows, epochs)
        if problem:
            raise CnnlabError(f"{path} is damaged: {problem}, but last.pt was saved after epoch {epochs}; restore "
                              f"the file, or start a new run with: cnnlab train --config {self.file('config.toml')} "
                              "--out NEW_FOLDER")
        if epochs == 0:  # nothing to keep (a header cut off by a kill included): the next append starts afresh
            with self._writing(runfiles.METRICS):
                path.unlink(missing_ok=True)
            return
        if len(rows) == epochs and path.read_bytes().endswith(b"\n"):
            return
        # Under the folder's lock: a temporary a killed rewrite left is removed.
        with self._writing(runfiles.METRICS), atomic_write(path, "w", remove_stale=True) as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(cells for _, cells in rows[:epochs])

    def log(self, line: str) -> None:
        if self.readonly:
            return
        with self._writing(runfiles.LOG), open(self.file(runfiles.LOG), "a", encoding="utf-8") as f:
            f.write(line.rstrip("\n") + "\n")

    def write_summary(self, summary: dict) -> None:
        if self.readonly:
            return
        text = json.dumps(summary, indent=2, default=str) + "\n"
        with self._writing(runfiles.SUMMARY), atomic_write(self.file(runfiles.SUMMARY), "w", remove_stale=True) as f:
            f.write(text)


# -- reading a run folder: one reader for resuming and for reporting -----------------------------------------------
def read_config_values(path: Path) -> dict:
    """config.toml's settings as TOML gives them (see config.read_toml): a resume builds the strict TrainConfig
    from them, a report compares whatever is there."""
    return read_toml(path)


def read_metrics(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """metrics.csv as its header and its rows of cells, each row with its line number (blank lines left out); no
    file is no rows. A file that is not readable CSV is one CnnlabError line.

    Rows are not checked here (see `metrics_row_problem`): a resume drops a row a kill cut off after its
    checkpoint, where a report refuses it.
    """
    path = Path(path)
    if not path.is_file():
        return [], []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            lines = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error, OSError) as e:
        raise CnnlabError(f"{path} is damaged and cannot be read ({type(e).__name__}); restore it from a copy, "
                          "or start a new run") from None
    rows = [(number, cells) for number, cells in enumerate(lines[1:], start=2) if cells]
    return (lines[0] if lines else []), rows


def metrics_row_problem(header: list[str], cells: list[str]) -> str | None:
    """Why a metrics.csv row is not a complete row of numbers with an epoch, or None when it is one."""
    if len(cells) != len(header):
        return f"has {len(cells)} fields, expected {len(header)}: the file is truncated or garbled"
    if not all(map(_is_number, cells)):
        return "holds a value that is not a number: the file is garbled"
    if dict(zip(header, cells)).get("epoch", "") == "":
        return "has no epoch number: the file is truncated or garbled"
    return None


def _kept_rows_problem(header: list[str], rows: list, epochs: int) -> str | None:
    """Why metrics.csv's first `epochs` rows are not the complete rows of epochs 1 … `epochs`, or None."""
    if len(rows) < epochs:
        return f"it has {len(rows)} rows"
    for i, (_, cells) in enumerate(rows[:epochs], start=1):
        if metrics_row_problem(header, cells) or dict(zip(header, cells))["epoch"] != str(i):
            return f"row {i} is not the complete row of epoch {i}"
    return None


def _is_number(text) -> bool:
    """A metrics.csv cell: a number, or empty for a metric the run does not have (accuracy of a regression)."""
    try:
        return text == "" or float(text) is not None
    except (TypeError, ValueError):
        return False


def default_run_path(config: TrainConfig) -> str:
    return f"runs/{config.model}-{config.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


def _fmt(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def _git_revision() -> str | None:
    """The checkout's commit, with "-dirty" when files differ from it; None outside a git checkout."""
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], capture_output=True,
                              text=True, cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# Read when cnnlab is imported, i.e. for the code this process is running: a commit made while a long run trains
# must not be credited with that run's numbers.
GIT_REVISION = _git_revision()


def environment(device: torch.device) -> dict:
    """What a reader needs to trust and repeat the numbers: device, versions, git revision."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return {"device": name, "torch": torch.__version__, "python": sys.version.split()[0], "cnnlab": __version__,
            "git_revision": GIT_REVISION}
