"""Datasets in their official formats → cached uint8 arrays → loaders.

    ds = load_dataset("cifar10", "data/cifar-10-python.tar.gz")   # decoded once, then cached
    ds = load_dataset(None, "data/cifar-10-python.tar.gz")        # the same cache: detected as cifar10
    home.locate("cifar10").path                                   # its copy in the data home ($CNNLAB_DATA)
    train_idx, val_idx = split_train_val(ds.train.labels, 0.1, seed=0)
"""

import os
import re
import time
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

from cnnlab.data import cache, home
from cnnlab.data.arrays import Dataset, Split, split_train_val
from cnnlab.data.official import checksum_status, download
from cnnlab.data.folder import list_tree
from cnnlab.data.formats import IMAGE_FOLDER, detect, guess_folder_dataset
from cnnlab.data.source import open_source
from cnnlab.data.synthetic import synthetic_linear
from cnnlab.errors import CnnlabError, check_choice

DATASETS = ("cifar10", "cifar100", "tinyimagenet", "imagenet", "mnist", "synthetic-linear")
# How many classes a dataset has, to catch a folder passed under the wrong name (CIFAR-100: fine or coarse).
CLASS_COUNTS = {"cifar10": (10,), "cifar100": (100, 20), "tinyimagenet": (200,), "mnist": (10,)}
STREAMED = ("imagenet",)

__all__ = ["DATASETS", "Dataset", "Split", "dataset_info", "detect_dataset", "load_dataset",
           "split_train_val", "synthetic_linear"]


def _resolve(name: str | None, path, download_first: bool, data_root=None) -> Path:
    if name is not None:
        check_choice("dataset", name, DATASETS)
    if name == "synthetic-linear":
        return Path()
    if path is None:  # the dataset's copy in the data home, fetched there first if asked
        if name is None:
            raise CnnlabError("say which data: a folder or archive, or --dataset NAME for its copy in the data home")
        try:
            return home.locate(name, data_root).path
        except home.Missing:
            if not download_first:
                raise
            return home.fetch(name, data_root)
    if download_first:
        if name is None:
            raise CnnlabError("--download needs --dataset NAME to know what to fetch")
        return download(name, Path(path))
    return Path(path).expanduser()


def _imagenet_layout(path: Path) -> bool:
    """A folder whose train/ holds WordNet-id class folders and no Tiny ImageNet metadata: ImageNet's layout.

    Looked at before any full listing, because walking ImageNet's 1.3 million files takes minutes.
    """
    if not (path.is_dir() and (path / "train").is_dir()) or (path / "wnids.txt").exists():
        return False
    with os.scandir(path / "train") as entries:
        classes = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    return bool(classes) and all(re.fullmatch(r"n\d{8}", c) for c in classes)


def detect_dataset(path, cache_dir=None) -> str:
    """The dataset a folder or archive holds (cifar10, mnist, tinyimagenet, imagenet…), from its file names alone.

    No image is decoded. An archive is still read once to list it, unless a load of the same files (same path,
    sizes and times) already recorded the answer in the cache. An image-folder tree whose classes name no known
    dataset is `images`.
    """
    path = Path(path).expanduser()
    if _imagenet_layout(path):
        return "imagenet"
    source = open_source(path)
    known = cache.remembered_name(Path(cache_dir) if cache_dir else cache.default_cache_dir(), path)
    if known:
        return known
    fmt = detect(source)
    return fmt.dataset or guess_folder_dataset(sorted(list_tree(source.names()).get("train", {})))


def load_dataset(name: str | None = None, path=None, *, labels: str = "fine", cache_dir=None,
                 skip_bad_images: bool = False, download: bool = False, data_root=None) -> Dataset:
    """Read a dataset from its files (format detected from the path), caching the decoded arrays.

    name: one of DATASETS, or None to detect it from the files. labels: CIFAR-100's `fine` (100) or `coarse` (20).
    The cache is keyed by the dataset's name whether it was given or detected, so `data prepare X` and
    `train --dataset cifar10 --data X` share one copy. Without a path, the dataset's copy in the data home
    (`data_root`, else $CNNLAB_DATA, else ~/.cache/cnnlab/datasets).
    """
    path = _resolve(name, path, download, data_root)
    if name == "synthetic-linear":
        return synthetic_linear()
    if name in STREAMED:
        raise CnnlabError(f"{name} is too big for memory and is streamed from its folders by `cnnlab train "
                          f"--dataset {name}`; there is nothing to prepare")
    source = open_source(path)
    cache_dir = Path(cache_dir) if cache_dir else cache.default_cache_dir()
    given = name
    name = name or detect_dataset(path, cache_dir)
    if name in STREAMED:
        raise CnnlabError(f"{path} looks like ImageNet, which is streamed, not loaded into memory; "
                          "pass --dataset imagenet to train from it")
    options = {"dataset": name, "labels": labels, "skip_bad_images": skip_bad_images}
    key = cache.cache_key(path, options)
    cached = cache.load(cache_dir, key, name)
    if cached is not None:
        cache.remember_name(cache_dir, path, name)
        return cached
    start = time.perf_counter()
    fmt = detect(source)
    if given is not None and fmt is not IMAGE_FOLDER and fmt.dataset != given:
        raise CnnlabError(f"{path} holds {fmt.dataset} ({fmt.name} format), not {given}; "
                          f"pass --dataset {fmt.dataset} or the right path")
    if fmt.index is not None:  # refuse a wrong or incomplete copy before minutes of decoding
        check_class_count(name, len(fmt.index(source).classes), path)
    dataset = fmt.reader(source, labels=labels, skip_bad=skip_bad_images, dataset=name)
    check_class_count(dataset.name, len(dataset.classes), path)
    dataset.notes["prepare_seconds"] = round(time.perf_counter() - start, 2)
    cache.save(cache_dir, key, name, dataset)
    cache.remember_name(cache_dir, path, name)  # only now: a refused copy leaves nothing in the cache
    return dataset


def check_class_count(name: str, count: int, path) -> None:
    """Refuse a copy whose number of classes is not the dataset's (a wrong --dataset, or an incomplete copy)."""
    expected = CLASS_COUNTS.get(name)
    if expected and count not in expected:
        raise CnnlabError(f"{path} has {count} classes, but {name} has "
                          f"{' or '.join(map(str, expected))}; pass the right --dataset or a complete copy")


def check_imagenet_root(path) -> Path:
    """The folder ImageNet is streamed from, or one line naming what was found instead."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CnnlabError(f"{path} does not exist; for --dataset imagenet pass the folder holding "
                          "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG")
    if _imagenet_layout(path):
        if not (path / "val").is_dir():
            raise CnnlabError(f"{path} has train/ but no val/ folder; ImageNet needs val/<wnid>/*.JPEG too")
        with os.scandir(path / "val") as entries:
            if not any(e.is_dir() and not e.name.startswith(".") for e in entries):
                raise CnnlabError(f"{path / 'val'} holds no class folders; sort the validation images into "
                                  "val/<wnid>/ folders (by the devkit's labels), as torchvision's ImageFolder needs")
        return path
    try:
        found = detect_dataset(path)
    except CnnlabError:
        found = None
    what = f"it holds {found}" if found and found != "images" else "no train/<wnid>/ class folders were found"
    hint = f"; pass --dataset {found}" if found in DATASETS else ""
    kind = "an archive" if path.is_file() else "a folder"
    raise CnnlabError(f"{path} is {kind} that is not laid out as ImageNet ({what}); --dataset imagenet streams "
                      f"the extracted folders train/<wnid>/*.JPEG and val/<wnid>/*.JPEG{hint}")


def _header_size(data: bytes, channels: int) -> str:
    try:
        with Image.open(BytesIO(data)) as im:
            size = f"{im.width}×{im.height}"
    except Exception:  # noqa: BLE001 — any unreadable header: the size is then unknown, not an error of info
        return "unknown (the first image could not be read)"
    return f"{size}, {channels} channel{'s' if channels > 1 else ''} (from the first image's header)"


def dataset_info(path, name: str | None = None, *, labels: str = "fine", cache_dir=None,
                 skip_bad_images: bool = False, download: bool = False, data_root=None) -> dict:
    """What `cnnlab data info` prints: format, split sizes, classes, image size, checksum status.

    Cheap by design: it reads the prepared cache when there is one, else the metadata and file names (Tiny
    ImageNet, image folders: no image is decoded), else the arrays of formats that store no encoded images
    (CIFAR pickles and binaries, MNIST idx). It never writes the cache; `data prepare` does. `read` says which.
    """
    if name == "synthetic-linear":
        dataset = load_dataset(name)
        return {"path": "", "dataset": name, "format": dataset.format, "classes": [], "read": "generated",
                "splits": {s: len(v) for s, v in dataset.splits.items()}, "per_class": {},
                "image_size": f"{dataset.image_shape[0]} features", "checksum": "n/a (generated)", "notes": {}}
    path = _resolve(name, path, download, data_root)
    name = name or detect_dataset(path, cache_dir)
    if name in STREAMED:
        from cnnlab.data.stream import list_image_folder  # here: it imports torch; other datasets' info needs none

        root = check_imagenet_root(path)
        splits, per_class, classes = {}, {}, []
        for split in ("train", "val"):
            files, classes = list_image_folder(root / split)
            splits[split] = len(files)
            per_class[split] = np.bincount([label for _, label in files], minlength=len(classes)).tolist()
        return {"path": str(root), "dataset": name, "format": "image-folder (streamed)", "classes": classes,
                "splits": splits, "per_class": per_class, "image_size": "varies (resized on load)",
                "checksum": checksum_status(root), "notes": {}, "read": "file names (streamed: nothing to cache)"}
    options = {"dataset": name, "labels": labels, "skip_bad_images": skip_bad_images}
    cache_dir = Path(cache_dir) if cache_dir else cache.default_cache_dir()
    dataset = cache.load(cache_dir, cache.cache_key(path, options), name)
    if dataset is not None:
        summary, read = _summary(dataset), f"the prepared cache in {cache_dir}"
    else:
        source = open_source(path)
        fmt = detect(source)
        if fmt is not IMAGE_FOLDER and fmt.dataset != name:
            raise CnnlabError(f"{path} holds {fmt.dataset} ({fmt.name} format), not {name}; "
                              f"pass --dataset {fmt.dataset} or the right path")
        if fmt.index is not None:
            meta = fmt.index(source)
            check_class_count(name, len(meta.classes), path)
            first = meta.files["train"][0]
            summary = {"format": fmt.name, "classes": meta.classes,
                       "splits": {s: len(f) for s, f in meta.files.items()},
                       "per_class": {s: np.bincount(v, minlength=len(meta.classes)).tolist()
                                     for s, v in meta.labels.items() if (v >= 0).any()},
                       "image_size": _header_size(source.read(first), 1 if name == "mnist" else 3),
                       "notes": {"test_is_official": "val"} if name == "tinyimagenet" else {}}
            read = "metadata and file names only (no image decoded; `cnnlab data prepare` decodes and caches)"
        else:
            dataset = fmt.reader(source, labels=labels, skip_bad=skip_bad_images, dataset=name)
            check_class_count(name, len(dataset.classes), path)
            summary, read = _summary(dataset), "the arrays (this format stores no images to decode; nothing cached)"
    return {"path": str(path), "dataset": name, "checksum": checksum_status(path), "read": read, **summary}


def _summary(dataset: Dataset) -> dict:
    per_class = {}
    if dataset.task == "classification":
        per_class = {s: np.bincount(split.labels[split.labels >= 0], minlength=len(dataset.classes)).tolist()
                     for s, split in dataset.splits.items() if (split.labels >= 0).any()}
    shape = dataset.image_shape
    size = f"{shape[1]}×{shape[0]}, {shape[2]} channel{'s' if shape[2] > 1 else ''}" if len(shape) == 3 else \
        f"{shape[0]} features"
    return {"format": dataset.format, "classes": dataset.classes, "per_class": per_class, "image_size": size,
            "splits": {s: len(v) for s, v in dataset.splits.items()}, "notes": dataset.notes}
