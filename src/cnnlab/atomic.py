"""Write a file or a folder so that a reader, a kill or a power cut sees the old version or the new one, never half
of the new one.

The new content goes to a temporary `.NAME.xxxxxxxx.tmp` beside the target — in the same folder, so the rename
that puts it in place is atomic — and is flushed to disk before that rename; the folder is flushed after it, so the
rename itself survives a power cut. The temporary name starts with `.NAME.` so that a half-written file can be told
by its target's name (the kill/resume benchmark watches for `.last.pt.`).
"""

import contextlib
import os
import secrets
import shutil
from pathlib import Path

# Text is UTF-8 and written as given: metrics.csv's rows end in the csv module's own "\r\n".
_MODES = {"wb": ("xb", {}), "w": ("x", {"encoding": "utf-8", "newline": ""})}


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", remove_stale: bool = False):
    """Yield a file ("wb" binary, "w" text) whose content replaces `path` when the block ends; an exception in the
    block, or a failed flush or rename, removes it, leaves `path` as it was and propagates.

    `remove_stale`: the caller holds a lock on the folder, so temporaries of `path` found there were left by a
    killed writer; they are removed first.
    """
    path = Path(path)
    if remove_stale:
        remove_temporaries(path)
    tmp = _temporary_name(path)
    create, options = _MODES[mode]
    f = open(tmp, create, **options)  # exclusive: never another writer's file, so the cleanup below is ours to do
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(path.parent)


@contextlib.contextmanager
def atomic_folder(path):
    """Yield an empty temporary folder beside `path` to fill; when the block ends its files are flushed and it is
    renamed to `path`. An exception removes it and propagates.

    A rename cannot replace a folder that has files, so when `path` appeared meanwhile (another process wrote the
    same folder and finished first) that one is kept and this one dropped: `path` is then complete all the same.
    """
    path = Path(path)
    tmp = _temporary_name(path)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        try:
            os.rename(tmp, path)
        except OSError:
            if not path.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_folder(path.parent)


def remove_temporaries(path) -> None:
    """Remove `.NAME.*` beside `path`: what writers of `path` killed mid-write left. Only safe while no live writer
    can own one (the caller holds the folder's lock)."""
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.*"):
        with contextlib.suppress(OSError):
            stale.unlink()


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def _fsync(path: Path) -> None:
    # Windows' fsync (_commit) needs a descriptor open for writing; POSIX takes a read-only one, which is also
    # the only way to open a folder there.
    fd = os.open(path, os.O_RDWR if os.name == "nt" and path.is_file() else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            _fsync(path)
        else:
            _fsync_folder(path)
    _fsync_folder(folder)


def _fsync_folder(folder: Path) -> None:
    # Best effort: some file systems cannot open or fsync a folder, and after the rename the new version is in
    # place already; that must not be reported as a failed write.
    with contextlib.suppress(OSError):
        _fsync(folder)
