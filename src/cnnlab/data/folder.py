"""Image-folder trees: `train/<class>/<image>` and `test/<class>/<image>` (or `val/`), in a folder or an archive.

This is how CIFAR-10 as JPEGs, MNIST as PNGs and ImageNet are commonly laid out. Classes are the sorted folder
names, which for CIFAR-10 is also the official label order (airplane … truck).
"""

from collections import defaultdict

import numpy as np

from cnnlab.data.arrays import Dataset, Index, Split
from cnnlab.data.images import decode_all, is_image
from cnnlab.data.source import Source
from cnnlab.errors import CnnlabError

TEST_FOLDERS = ("test", "val")


def list_tree(names: list[str]) -> dict[str, dict[str, list[str]]]:
    """{split: {class: [file names]}} for names of the form split/class/file (deeper files are ignored)."""
    # Not the rule of stream.list_image_folder (recursive, hidden entries skipped, empty class folders kept):
    # these are the names detection (formats._image_folder_prefix) matched, with its exact depth and no hidden
    # rule, and detect_dataset names the dataset from these classes; skipping `.x` folders or reading nested
    # files here would change which dataset a tree is taken for and which files are decoded.
    tree: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for name in names:
        parts = name.split("/")
        if len(parts) == 3 and is_image(parts[2]):
            tree[parts[0]][parts[1]].append(name)
    return tree


def split_folders(source: Source, tree) -> tuple[str, str]:
    if "train" not in tree:
        raise CnnlabError(f"{source.where('train')} has no class folders with images; expected "
                          "train/<class>/<image> and test/<class>/<image>")
    test = next((t for t in TEST_FOLDERS if t in tree), None)
    if test is None:
        raise CnnlabError(f"{source.where('test')} has no class folders with images (the test split is empty); "
                          "expected test/<class>/<image> (or val/<class>/<image>)")
    return "train", test


def check_same_classes(train: dict, test: dict, source: Source) -> list[str]:
    if set(train) != set(test):
        only_train = sorted(set(train) - set(test))[:5]
        only_test = sorted(set(test) - set(train))[:5]
        raise CnnlabError(f"train and test class folders of {source.path} differ (only in train: "
                          f"{', '.join(only_train) or '-'}; only in test: {', '.join(only_test) or '-'}); "
                          "both splits need the same classes")
    return sorted(train)


def index(source: Source) -> Index:
    """The splits' classes and files from the names alone (no image decoded)."""
    tree = list_tree(source.names())
    train_name, test_name = split_folders(source, tree)
    classes = check_same_classes(tree[train_name], tree[test_name], source)
    files, labels = {}, {}
    for split, folder in (("train", train_name), ("test", test_name)):
        files[split] = [n for c in classes for n in sorted(tree[folder][c])]
        labels[split] = np.array([i for i, c in enumerate(classes) for _ in tree[folder][c]], np.int64)
    return Index(classes, files, labels, {"test_folder": test_name})


def read_image_folder(source: Source, dataset: str = "images", skip_bad: bool = False, **_) -> Dataset:
    meta = index(source)
    mode = "L" if dataset == "mnist" else "RGB"
    splits, skipped = {}, 0
    for split, names in meta.files.items():
        images, kept = decode_all([source.read(n) for n in names], [source.where(n) for n in names], mode, skip_bad)
        skipped += len(names) - len(kept)
        splits[split] = Split(images, meta.labels[split][kept])
    notes = {"bad_images_skipped": skipped, "test_folder": meta.notes["test_folder"]}
    return Dataset(dataset, "image-folder", meta.classes, splits, notes=notes).check()
