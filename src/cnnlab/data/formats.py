"""Which format a path holds, and the reader for each: detection looks for each format's marker file."""

import re
from dataclasses import dataclass
from typing import Callable

from cnnlab.data import cifar, folder, mnist, tinyimagenet
from cnnlab.data.source import Source
from cnnlab.errors import CnnlabError


@dataclass(frozen=True)
class Format:
    name: str
    dataset: str  # the dataset this format implies; "" when the files alone do not tell (image folders)
    marker: str  # a file whose presence identifies the format; its folder becomes the source's root
    reader: Callable
    siblings: tuple[str, ...] = ()  # further files that must sit beside the marker
    index: Callable | None = None  # classes and files from the names alone, for formats whose images need decoding


FORMATS = [
    Format("cifar10-python", "cifar10", "data_batch_1", cifar.read_cifar10_python),
    Format("cifar10-binary", "cifar10", "data_batch_1.bin", cifar.read_cifar10_binary),
    Format("cifar100-binary", "cifar100", "train.bin", cifar.read_cifar100_binary, ("fine_label_names.txt",)),
    Format("cifar100-python", "cifar100", "meta", cifar.read_cifar100_python, ("train", "test")),
    Format("tinyimagenet", "tinyimagenet", "wnids.txt", tinyimagenet.read_tinyimagenet, ("val/val_annotations.txt",),
           tinyimagenet.index),
    Format("mnist-idx", "mnist", "train-images-idx3-ubyte", mnist.read_mnist_idx),
    Format("mnist-idx", "mnist", "train-images-idx3-ubyte.gz", mnist.read_mnist_idx),
]
IMAGE_FOLDER = Format("image-folder", "", "train/<class>/<image>", folder.read_image_folder, index=folder.index)
FORMAT_NAMES = sorted({f.name for f in FORMATS} | {IMAGE_FOLDER.name})


def _prefix_of(names: set[str], fmt: Format) -> str | None:
    """The shallowest folder holding the marker and its siblings, or None."""
    found = []
    for name in names:
        head, _, base = name.rpartition("/")
        if base == fmt.marker.rpartition("/")[2]:
            prefix = f"{head}/" if head else ""
            if all(prefix + s in names for s in fmt.siblings):
                found.append(prefix)
    return min(found, key=lambda p: (p.count("/"), p)) if found else None


def _image_folder_prefix(names: list[str]) -> str | None:
    found = []
    for name in names:
        parts = name.split("/")
        for i in range(len(parts) - 2):
            if parts[i] == "train" and i == len(parts) - 3:
                found.append("/".join(parts[:i]) + "/" if i else "")
    return min(found, key=lambda p: (p.count("/"), p)) if found else None


CIFAR10_CLASSES = set(cifar.CIFAR10_CLASSES)


def guess_folder_dataset(classes: list[str]) -> str:
    """Name an image-folder dataset from its class folders (users can always say --dataset)."""
    if set(classes) == CIFAR10_CLASSES:
        return "cifar10"
    if classes == [str(d) for d in range(10)]:
        return "mnist"
    if classes and all(re.fullmatch(r"n\d{8}", c) for c in classes):
        return "imagenet"
    return "images"


def detect(source: Source) -> Format:
    """Find the format of a source and point the source at the format's root folder."""
    names = source.names()
    name_set = set(names)
    for fmt in FORMATS:
        prefix = _prefix_of(name_set, fmt)
        if prefix is not None:
            source.descend(prefix)
            return fmt
    prefix = _image_folder_prefix(names)
    if prefix is not None:
        source.descend(prefix)
        return IMAGE_FOLDER
    raise CnnlabError(f"cannot tell the dataset format of {source.path}; supported: {', '.join(FORMAT_NAMES)} "
                      "(official archives or their extracted folders, or train/<class>/<image> trees)")
