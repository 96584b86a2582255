"""The prepared-dataset cache: one folder of .npy arrays per source, keyed by the source's identity.

A source's identity is its resolved path with the size and modification time of every file in it, plus the
options that change the arrays (dataset, CIFAR-100 label set, skipping bad images). A changed file is a new key.
Folders are written under a temporary name and renamed into place, so an interrupted prepare leaves nothing
that a later load would take for a cache.
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from cnnlab.atomic import atomic_folder, atomic_write
from cnnlab.data.arrays import Dataset, Split

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """$CNNLAB_CACHE_DIR, else $XDG_CACHE_HOME/cnnlab, else ~/.cache/cnnlab."""
    if os.environ.get("CNNLAB_CACHE_DIR"):
        return Path(os.environ["CNNLAB_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cnnlab"


def source_identity(path: Path) -> list:
    path = Path(path).resolve()
    if path.is_file():
        st = path.stat()
        return [str(path), st.st_size, st.st_mtime_ns]
    files = []
    for dirpath, _, names in os.walk(path):
        for name in names:
            st = os.stat(os.path.join(dirpath, name))
            files.append((os.path.relpath(os.path.join(dirpath, name), path), st.st_size, st.st_mtime_ns))
    return [str(path), sorted(files)]


def cache_key(path: Path, options: dict) -> str:
    blob = json.dumps([CACHE_VERSION, source_identity(path), sorted(options.items())], default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _folder(cache_dir: Path, key: str, label: str) -> Path:
    return Path(cache_dir) / f"{label}-{key}"


def load(cache_dir: Path, key: str, label: str) -> Dataset | None:
    """The cached dataset, or None if there is no complete cache for this key."""
    folder = _folder(cache_dir, key, label)
    meta_file = folder / "meta.json"
    if not meta_file.is_file():
        return None
    meta = json.loads(meta_file.read_text())
    splits = {s: Split(np.load(folder / f"{s}_images.npy"), np.load(folder / f"{s}_labels.npy"))
              for s in meta["splits"]}
    return Dataset(meta["name"], meta["format"], meta["classes"], splits, meta["task"], meta["notes"])


def save(cache_dir: Path, key: str, label: str, dataset: Dataset) -> Path:
    """Write the dataset under a temporary name, then rename it into place (atomic on one filesystem).

    `label` names the folder beside the key (the dataset as asked for, or "auto"); `load` takes the same.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = _folder(cache_dir, key, label)
    # When another process finishes the same cache first, atomic_folder keeps theirs: it is as good as ours.
    with atomic_folder(final) as tmp:
        for name, split in dataset.splits.items():
            np.save(tmp / f"{name}_images.npy", split.images)
            np.save(tmp / f"{name}_labels.npy", split.labels)
        meta = {"name": dataset.name, "format": dataset.format, "classes": dataset.classes, "task": dataset.task,
                "notes": dataset.notes, "splits": list(dataset.splits), "cache_version": CACHE_VERSION}
        (tmp / "meta.json").write_text(json.dumps(meta))
    return final


def _name_file(cache_dir: Path, path: Path) -> Path:
    return Path(cache_dir) / "detected" / cache_key(path, {})


def remembered_name(cache_dir: Path, path: Path) -> str | None:
    """The dataset a successful load found in these exact files (same path, sizes and times), if one did."""
    try:
        return _name_file(cache_dir, path).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def remember_name(cache_dir: Path, path: Path, name: str) -> None:
    """Record which dataset these files hold, so detecting it again needs no listing of a large archive."""
    target = _name_file(cache_dir, path)
    if remembered_name(cache_dir, path) == name:
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(target, "w") as f:
            f.write(name)
    except OSError:  # a read-only cache only costs the next detection its listing
        pass
