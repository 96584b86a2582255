"""Datasets in their official formats → cached uint8 arrays → loaders.

    ds = load_dataset("cifar10", "../shared/datasets/cifar10-jpeg.tar.gz")   # decoded once, then cached
    train_idx, val_idx = split_train_val(ds.train.labels, 0.1, seed=0)
"""

import time
from pathlib import Path

from cnnlab.data import cache
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

__all__ = ["DATASETS", "Dataset", "Split", "dataset_info", "load_dataset", "split_train_val", "synthetic_linear"]


def _resolve(name: str | None, path, download_first: bool) -> Path:
    if name is not None:
        check_choice("dataset", name, DATASETS)
    if name == "synthetic-linear":
        return Path()
    if path is None:
        raise CnnlabError(f"dataset {name or ''} needs --data PATH (its folder or official archive)".replace("  ", " "))
    if download_first:
        if name is None:
            raise CnnlabError("--download needs --dataset NAME to know what to fetch")
        return download(name, Path(path))
    return Path(path).expanduser()


def load_dataset(name: str | None = None, path=None, *, labels: str = "fine", cache_dir=None,
                 skip_bad_images: bool = False, download: bool = False, use_cache: bool = True,
                 verbose: bool = False) -> Dataset:
    """Read a dataset from its files (format detected from the path), caching the decoded arrays.

    name: one of DATASETS, or None to infer it from the files. labels: CIFAR-100's `fine` (100) or `coarse` (20).
    """
    path = _resolve(name, path, download)
    if name == "synthetic-linear":
        return synthetic_linear()
    if name in STREAMED:
        raise CnnlabError(f"{name} is too big for memory and is streamed from its folders; "
                          "use cnnlab.data.stream.streaming_loader (nothing to prepare)")
    source = open_source(path)
    options = {"dataset": name or "auto", "labels": labels, "skip_bad_images": skip_bad_images}
    cache_dir = Path(cache_dir) if cache_dir else cache.default_cache_dir()
    key = cache.cache_key(path, options) if use_cache else None
    if use_cache:
        cached = cache.load(cache_dir, key, options["dataset"])
        if cached is not None:
            return cached
    start = time.perf_counter()
    fmt = detect(source)
    guessed = fmt.dataset or guess_folder_dataset(sorted(list_tree(source.names()).get("train", {})))
    if name is not None and fmt is not IMAGE_FOLDER and fmt.dataset != name:
        raise CnnlabError(f"{path} holds {fmt.dataset} ({fmt.name} format), not {name}; "
                          f"pass --dataset {fmt.dataset} or the right path")
    if (name or guessed) in STREAMED:
        raise CnnlabError(f"{path} looks like ImageNet, which is streamed, not loaded into memory; "
                          "pass --dataset imagenet to train from it")
    dataset = fmt.reader(source, labels=labels, skip_bad=skip_bad_images, dataset=name or guessed)
    expected = CLASS_COUNTS.get(dataset.name)
    if expected and len(dataset.classes) not in expected:
        raise CnnlabError(f"{path} has {len(dataset.classes)} classes, but {dataset.name} has "
                          f"{' or '.join(map(str, expected))}; pass the right --dataset or a complete copy")
    dataset.notes["prepare_seconds"] = round(time.perf_counter() - start, 2)
    if use_cache:
        cache.save(cache_dir, key, options["dataset"], dataset)
    return dataset


def dataset_info(path, name: str | None = None, **load_options) -> dict:
    """What `cnnlab data info` prints: format, split sizes, classes, image size, checksum status."""
    if name in STREAMED:
        from cnnlab.data.stream import list_image_folder

        root = _resolve(name, path, False)
        splits, classes = {}, []
        for split in ("train", "val"):
            if (root / split).is_dir():
                files, classes = list_image_folder(root / split)
                splits[split] = len(files)
        return {"path": str(root), "dataset": name, "format": "image-folder (streamed)", "classes": classes,
                "splits": splits, "per_class": {}, "image_size": "varies (resized on load)",
                "checksum": checksum_status(root), "notes": {}}
    dataset = load_dataset(name, path, **load_options)
    per_class = {}
    if dataset.task == "classification":
        import numpy as np

        per_class = {s: np.bincount(split.labels[split.labels >= 0], minlength=len(dataset.classes)).tolist()
                     for s, split in dataset.splits.items() if (split.labels >= 0).any()}
    shape = dataset.image_shape
    size = f"{shape[1]}×{shape[0]}, {shape[2]} channel{'s' if shape[2] > 1 else ''}" if len(shape) == 3 else \
        f"{shape[0]} features"
    return {"path": str(path) if path else "", "dataset": dataset.name, "format": dataset.format,
            "classes": dataset.classes, "splits": {s: len(v) for s, v in dataset.splits.items()},
            "per_class": per_class, "image_size": size,
            "checksum": checksum_status(Path(path)) if path else "n/a (generated)", "notes": dataset.notes}
