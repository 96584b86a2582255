"""Checkpoints written atomically and read without running code (torch.load weights_only=True)."""

import errno
import pickle
import warnings
import zipfile
from pathlib import Path

import torch

from cnnlab.atomic import atomic_write
from cnnlab.errors import CnnlabError


def save_checkpoint(state: dict, path: Path) -> None:
    """Write `path` atomically (see `cnnlab.atomic`): a crash leaves the old file.

    A failed write (disk full, read-only folder) removes the temporary file and raises a CnnlabError that says the
    previous checkpoint is untouched.
    """
    path = Path(path)
    try:
        # The run folder is locked, so a `.NAME.xxxx` already there is what a killed writer left.
        with atomic_write(path, "wb", remove_stale=True) as f:
            torch.save(state, f)
    except OSError as e:
        kept = f"the previous {path.name} is intact" if path.is_file() else f"no {path.name} was written"
        then = (f"continue with: cnnlab train --resume {path.parent}" if (path.parent / "last.pt").is_file()
                else "start the run again")
        raise CnnlabError(f"cannot write checkpoint {path} ({e.strerror or e}); {kept} — free some disk space "
                          f"or make {path.parent} writable, then {then}") from None


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load tensors, numbers, strings and containers only; anything else is refused before it runs."""
    path = Path(path)
    if path.is_dir():
        raise CnnlabError(f"{path} is a folder, not a checkpoint file")
    if not path.is_file():
        if path.name == "last.pt" and (path.parent / "config.toml").is_file():
            raise CnnlabError(f"{path.parent} has no last.pt: the run stopped before its first checkpoint, so there "
                              f"is nothing to resume; start it again with cnnlab train --config "
                              f"{path.parent / 'config.toml'} --out NEW_FOLDER")
        what = "checkpoint" if path.suffix else "run folder or checkpoint"  # `eval runs/x` names a folder
        raise CnnlabError(f"{what} {path} does not exist")
    if path.stat().st_size == 0:
        raise CnnlabError(f"{path} is empty (0 bytes): the write that made it did not finish; use another copy")
    if not _looks_like_torch_file(path):
        raise CnnlabError(f"{path} is not a PyTorch checkpoint (neither a torch.save zip archive nor a legacy "
                          "pickle); point to a .pt file written by cnnlab or torch.save")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; the user gets one line, not three
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CnnlabError(f"{path} holds objects a checkpoint must not ({_refusal_reason(e)}); refusing to load it, "
                          "since loading could run code — re-save it as a plain state_dict") from None
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EIO):
            raise CnnlabError(f"cannot read checkpoint {path} ({e.strerror})") from None
        raise CnnlabError(f"{path} is truncated or not a PyTorch checkpoint ({type(e).__name__}); "
                          "use another copy or the run's other checkpoint") from None
    except Exception as e:  # torch.load reports damaged files as RuntimeError, EOFError, OSError(EINVAL), …
        raise CnnlabError(f"{path} is truncated or not a PyTorch checkpoint ({type(e).__name__}); "
                          "use another copy or the run's other checkpoint") from None
    if not isinstance(state, dict):
        raise CnnlabError(f"{path} is not a cnnlab checkpoint (it holds a {type(state).__name__})")
    return state


def _looks_like_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive (a truncated one still starts with PK); the legacy format a pickle header."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        head = f.read(2)
    return head == b"PK" or (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def _refusal_reason(error: Exception) -> str:
    """The line of torch's long message that names what was refused (e.g. `GLOBAL posix.system`)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line or "Unsupported" in line:
            return line.removeprefix("Trying to load ").rstrip(".")[:120]
    return "unsupported content"
