"""CIFAR-10 and CIFAR-100 in their official python (pickle) and binary formats."""

import numpy as np

from cnnlab.data.arrays import Dataset, Split
from cnnlab.data.safe_pickle import load_pickle
from cnnlab.data.source import Source
from cnnlab.errors import CnnlabError, check_choice

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
LABEL_SETS = ("fine", "coarse")


def _rows_to_images(data: np.ndarray, where: str) -> np.ndarray:
    """CIFAR stores each image as 3072 bytes: the red plane, then green, then blue, each 32×32 row-major."""
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise CnnlabError(f"{where} holds data of shape {data.shape}, expected (N, 3072); not a CIFAR batch")
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _batch(source: Source, name: str, label_key: bytes) -> Split:
    where = source.where(name)
    entry = load_pickle(source.read(name), where)
    if not isinstance(entry, dict) or b"data" not in entry or label_key not in entry:
        raise CnnlabError(f"{where} lacks the keys 'data' and '{label_key.decode()}'; not a CIFAR batch")
    images = _rows_to_images(entry[b"data"], where)
    labels = np.asarray(entry[label_key], dtype=np.int64)
    if len(labels) != len(images):
        raise CnnlabError(f"{where} has {len(images)} images but {len(labels)} labels")
    return Split(images, labels)


def _concat(splits: list[Split]) -> Split:
    return Split(np.concatenate([s.images for s in splits]), np.concatenate([s.labels for s in splits]))


def _names(raw) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in raw]


def read_cifar10_python(source: Source, **_) -> Dataset:
    meta = load_pickle(source.read("batches.meta"), source.where("batches.meta"))
    classes = _names(meta.get(b"label_names", CIFAR10_CLASSES)) if isinstance(meta, dict) else CIFAR10_CLASSES
    train = _concat([_batch(source, n, b"labels") for n in CIFAR10_TRAIN])
    test = _batch(source, "test_batch", b"labels")
    return Dataset("cifar10", "cifar10-python", classes, {"train": train, "test": test}).check()


def read_cifar100_python(source: Source, labels: str = "fine", **_) -> Dataset:
    check_choice("CIFAR-100 label set", labels, LABEL_SETS)
    meta = load_pickle(source.read("meta"), source.where("meta"))
    key = f"{labels}_label_names".encode()
    if not isinstance(meta, dict) or key not in meta:
        raise CnnlabError(f"{source.where('meta')} lacks '{key.decode()}'; not CIFAR-100's meta file")
    label_key = f"{labels}_labels".encode()
    splits = {s: _batch(source, s, label_key) for s in ("train", "test")}
    return Dataset("cifar100", "cifar100-python", _names(meta[key]), splits, notes={"labels": labels}).check()


def _binary_records(source: Source, name: str, label_bytes: int, label_index: int) -> Split:
    raw = np.frombuffer(source.read(name), dtype=np.uint8)
    record = label_bytes + 3072
    if raw.size == 0 or raw.size % record:
        raise CnnlabError(f"{source.where(name)} is {raw.size} bytes, not a whole number of {record}-byte "
                          "CIFAR records; the file is truncated")
    rows = raw.reshape(-1, record)
    return Split(_rows_to_images(rows[:, label_bytes:], source.where(name)), rows[:, label_index].astype(np.int64))


def _text_names(source: Source, name: str) -> list[str]:
    return [line.strip() for line in source.read(name).decode().splitlines() if line.strip()]


def read_cifar10_binary(source: Source, **_) -> Dataset:
    train = _concat([_binary_records(source, f"{n}.bin", 1, 0) for n in CIFAR10_TRAIN])
    test = _binary_records(source, "test_batch.bin", 1, 0)
    classes = _text_names(source, "batches.meta.txt") if source.exists("batches.meta.txt") else CIFAR10_CLASSES
    return Dataset("cifar10", "cifar10-binary", classes, {"train": train, "test": test}).check()


def read_cifar100_binary(source: Source, labels: str = "fine", **_) -> Dataset:
    """Each record: coarse label byte, fine label byte, 3072 pixel bytes."""
    check_choice("CIFAR-100 label set", labels, LABEL_SETS)
    index = 0 if labels == "coarse" else 1
    splits = {s: _binary_records(source, f"{s}.bin", 2, index) for s in ("train", "test")}
    classes = _text_names(source, f"{labels}_label_names.txt")
    return Dataset("cifar100", "cifar100-binary", classes, splits, notes={"labels": labels}).check()
