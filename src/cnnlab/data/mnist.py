"""MNIST's official idx files, gzipped or not."""

import gzip
import zlib

import numpy as np

from cnnlab.data.arrays import Dataset, Split
from cnnlab.data.source import Source
from cnnlab.errors import CnnlabError

FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def find(source: Source, stem: str) -> str:
    for name in (stem, stem + ".gz"):
        if source.exists(name):
            return name
    raise CnnlabError(f"{source.where(stem)}(.gz) is missing; MNIST needs all four idx files")


def parse_idx(data: bytes, where: str) -> np.ndarray:
    """idx: two zero bytes, a type byte (0x08 = uint8), the number of dims, big-endian int32 sizes, the data."""
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise CnnlabError(f"{where} is not an idx file of unsigned bytes")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(s) for s in np.frombuffer(data[4:header], dtype=">i4"))
    if len(data) - header != int(np.prod(shape)):
        raise CnnlabError(f"{where} holds {len(data) - header} data bytes, its header promises "
                          f"{int(np.prod(shape))}; the file is truncated")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _read(source: Source, name: str) -> np.ndarray:
    data = source.read(name)
    if name.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            raise CnnlabError(f"{source.where(name)} is truncated or not gzip; download it again") from None
    return parse_idx(data, source.where(name))


def read_mnist_idx(source: Source, **_) -> Dataset:
    splits = {}
    for split, (images_stem, labels_stem) in FILES.items():
        images = _read(source, find(source, images_stem))
        labels = _read(source, find(source, labels_stem)).astype(np.int64)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise CnnlabError(f"MNIST {split}: {images.shape} images do not match {labels.shape} labels")
        splits[split] = Split(np.ascontiguousarray(images[..., None]), labels)
    return Dataset("mnist", "mnist-idx", [str(d) for d in range(10)], splits).check()
