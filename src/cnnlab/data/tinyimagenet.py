"""Tiny ImageNet's official layout: train/<wnid>/images/, a flat val/images/ labelled by val/val_annotations.txt.

Reading val/ as an image folder finds a single class ("images") and gives chance accuracy: the labels live only in
the annotation file. The labelled val split serves as cnnlab's test split (the official test/ has no labels and
becomes the `unlabelled` split, for prediction only).
"""

import numpy as np

from cnnlab.data.arrays import Dataset, Index, Split
from cnnlab.data.images import decode_all, is_image
from cnnlab.data.source import Source
from cnnlab.errors import CnnlabError

CLASSES = 200


def _class_names(source: Source, wnids: list[str]) -> list[str]:
    """words.txt maps ~82k WordNet ids to synonyms; keep the first synonym of each of our 200 ids."""
    words = {}
    if source.exists("words.txt"):
        for line in source.read("words.txt").decode().splitlines():
            wnid, _, text = line.partition("\t")
            words[wnid] = text.split(",")[0].strip()
    return [words.get(w, w) for w in wnids]


def index(source: Source) -> Index:
    """List and check the splits from wnids.txt, the train folders and val_annotations.txt.

    Every check that the metadata allows happens here, so a broken copy is refused in a second, not after
    minutes of decoding: the number of classes, a class without a train folder, a train folder or a val
    annotation naming a class wnids.txt lacks, an annotation naming a missing file.
    """
    # Sorted wnids: the order of torchvision's ImageFolder over train/, which most published code uses.
    wnids = sorted(line.strip() for line in source.read("wnids.txt").decode().splitlines() if line.strip())
    where = source.where("wnids.txt")
    if len(set(wnids)) != len(wnids):
        raise CnnlabError(f"{where} lists a class twice; use a complete, unmodified copy of the dataset")
    if len(wnids) != CLASSES:
        raise CnnlabError(f"{where} lists {len(wnids)} classes, but Tiny ImageNet has {CLASSES}; "
                          "use a complete, unmodified copy of the dataset")
    idx = {w: i for i, w in enumerate(wnids)}
    names = source.names()

    train_names = [n for n in names if n.startswith("train/") and n.split("/")[2:3] == ["images"] and is_image(n)]
    found = {n.split("/")[1] for n in train_names}
    unknown = sorted(found - set(idx))
    if unknown:
        raise CnnlabError(f"train/{unknown[0]} is not listed in {where}; the label would "
                          "be out of range — use a complete copy of the dataset")
    missing = [w for w in wnids if w not in found]
    if missing:
        raise CnnlabError(f"{where} lists {len(wnids)} classes, but {len(missing)} of them have no images in "
                          f"train/ (first: {source.where(f'train/{missing[0]}/images')}); "
                          "use a complete copy of the dataset")
    train_labels = np.array([idx[n.split("/")[1]] for n in train_names], np.int64)

    val_files, val_labels = [], []
    for line in source.read("val/val_annotations.txt").decode().splitlines():
        fields = line.split("\t")
        if len(fields) < 2:
            continue
        file, wnid = fields[0], fields[1]
        if wnid not in idx:
            raise CnnlabError(f"val/val_annotations.txt labels {file} as {wnid}, which is not in wnids.txt")
        if not source.exists(f"val/images/{file}"):
            raise CnnlabError(f"val/val_annotations.txt names {file}, but {source.where('val/images/' + file)} "
                              "is missing; use a complete copy of the dataset")
        val_files.append(f"val/images/{file}")
        val_labels.append(idx[wnid])

    test_names = [n for n in names if n.startswith("test/images/") and is_image(n)]
    files = {"train": train_names, "test": val_files, "unlabelled": test_names}
    labels = {"train": train_labels, "test": np.array(val_labels, np.int64),
              "unlabelled": np.full(len(test_names), -1, np.int64)}
    for split in ("train", "test"):
        if not files[split]:
            raise CnnlabError(f"the Tiny ImageNet {'val' if split == 'test' else split} split of {source.path} "
                              "is empty; check that the folder or archive is complete")
    if not test_names:
        del files["unlabelled"], labels["unlabelled"]
    return Index(_class_names(source, wnids), files, labels, {"wnids": wnids})


def read_tinyimagenet(source: Source, skip_bad: bool = False, **_) -> Dataset:
    meta = index(source)
    splits, skipped = {}, 0
    for split, files in meta.files.items():
        images, kept = decode_all([source.read(n) for n in files], [source.where(n) for n in files], "RGB", skip_bad)
        skipped += len(files) - len(kept)
        splits[split] = Split(images, meta.labels[split][kept])
    notes = {"test_is_official": "val", "wnids": meta.notes["wnids"], "bad_images_skipped": skipped}
    return Dataset("tinyimagenet", "tinyimagenet", meta.classes, splits, notes=notes).check()
