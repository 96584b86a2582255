"""Tiny ImageNet's official layout: train/<wnid>/images/, a flat val/images/ labelled by val/val_annotations.txt.

Reading val/ as an image folder finds a single class ("images") and gives chance accuracy: the labels live only in
the annotation file. The labelled val split serves as cnnlab's test split (the official test/ has no labels and
becomes the `unlabelled` split, for prediction only).
"""

import numpy as np

from cnnlab.data.arrays import Dataset, Split
from cnnlab.data.images import decode_all, is_image
from cnnlab.data.source import Source
from cnnlab.errors import CnnlabError


def _class_names(source: Source, wnids: list[str]) -> list[str]:
    """words.txt maps ~82k WordNet ids to synonyms; keep the first synonym of each of our 200 ids."""
    words = {}
    if source.exists("words.txt"):
        for line in source.read("words.txt").decode().splitlines():
            wnid, _, text = line.partition("\t")
            words[wnid] = text.split(",")[0].strip()
    return [words.get(w, w) for w in wnids]


def _decode(source: Source, names: list[str], skip_bad: bool):
    return decode_all([source.read(n) for n in names], [source.where(n) for n in names], "RGB", skip_bad)


def read_tinyimagenet(source: Source, skip_bad: bool = False, **_) -> Dataset:
    # Sorted wnids: the order of torchvision's ImageFolder over train/, which most published code uses.
    wnids = sorted(line.strip() for line in source.read("wnids.txt").decode().splitlines() if line.strip())
    index = {w: i for i, w in enumerate(wnids)}
    names = source.names()

    train_names = [n for n in names if n.startswith("train/") and n.split("/")[2:3] == ["images"] and is_image(n)]
    unknown = sorted({n.split("/")[1] for n in train_names} - set(index))
    if unknown:
        raise CnnlabError(f"train/{unknown[0]} is not listed in {source.where('wnids.txt')}; the label would "
                          "be out of range — use a complete copy of the dataset")
    train_labels = np.array([index[n.split("/")[1]] for n in train_names], np.int64)

    val_files, val_labels = [], []
    for line in source.read("val/val_annotations.txt").decode().splitlines():
        fields = line.split("\t")
        if len(fields) < 2:
            continue
        file, wnid = fields[0], fields[1]
        if wnid not in index:
            raise CnnlabError(f"val/val_annotations.txt labels {file} as {wnid}, which is not in wnids.txt")
        if not source.exists(f"val/images/{file}"):
            raise CnnlabError(f"val/val_annotations.txt names {file}, but {source.where('val/images/' + file)} "
                              "is missing; use a complete copy of the dataset")
        val_files.append(f"val/images/{file}")
        val_labels.append(index[wnid])

    test_names = [n for n in names if n.startswith("test/images/") and is_image(n)]
    splits, skipped = {}, 0
    for split, files, labels in (("train", train_names, train_labels),
                                 ("test", val_files, np.array(val_labels, np.int64)),
                                 ("unlabelled", test_names, np.full(len(test_names), -1, np.int64))):
        if not files:
            if split == "unlabelled":
                continue
            raise CnnlabError(f"the Tiny ImageNet {'val' if split == 'test' else split} split of {source.path} "
                              "is empty; check that the folder or archive is complete")
        images, kept = _decode(source, files, skip_bad)
        skipped += len(files) - len(kept)
        splits[split] = Split(images, labels[kept])
    notes = {"test_is_official": "val", "wnids": wnids, "bad_images_skipped": skipped}
    return Dataset("tinyimagenet", "tinyimagenet", _class_names(source, wnids), splits, notes=notes).check()
