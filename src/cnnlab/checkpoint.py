"""Checkpoints written atomically and read without running code (torch.load weights_only=True)."""

import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

from cnnlab.errors import CnnlabError


def save_checkpoint(state: dict, path: Path) -> None:
    """Write to a temporary file beside `path`, flush it to disk, then rename: a crash leaves the old file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load tensors, numbers, strings and containers only; anything else is refused before it runs."""
    path = Path(path)
    if not path.is_file():
        raise CnnlabError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsupported content"
        raise CnnlabError(f"{path} holds objects a checkpoint must not ({first[:120]}); refusing to load it") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as e:
        raise CnnlabError(f"{path} is truncated or not a PyTorch checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict):
        raise CnnlabError(f"{path} is not a cnnlab checkpoint (it holds a {type(state).__name__})")
    return state
