"""The in-memory form of every dataset: uint8 images (N, H, W, C), int64 labels, class names."""

from dataclasses import dataclass, field

import numpy as np

from cnnlab.errors import CnnlabError


@dataclass
class Split:
    images: np.ndarray  # (N, H, W, C) uint8; (N, D) float32 features for synthetic-linear
    labels: np.ndarray  # (N,) int64 class indices, -1 when unlabelled; (N, 1) float32 targets for regression

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Dataset:
    """A dataset's splits as read from its official files.

    `train` and `test` always exist (for Tiny ImageNet, `test` holds the official labelled val split); an
    `unlabelled` split holds images without labels (Tiny ImageNet's test/), for prediction only.
    """

    name: str
    format: str
    classes: list[str]
    splits: dict[str, Split]
    task: str = "classification"
    notes: dict = field(default_factory=dict)  # e.g. {"test_is_official": "val", "bad_images_skipped": 3}

    @property
    def train(self) -> Split:
        return self.splits["train"]

    @property
    def test(self) -> Split:
        return self.splits["test"]

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.train.images.shape[1:])

    def check(self) -> "Dataset":
        """Labels in range and no empty labelled split; raise CnnlabError otherwise."""
        for split_name in ("train", "test"):
            split = self.splits.get(split_name)
            if split is None or len(split) == 0:
                raise CnnlabError(f"the {split_name} split of {self.name} is empty; check that the folder or "
                                  "archive is complete")
            if self.task == "classification":
                bad = (split.labels < 0) | (split.labels >= len(self.classes))
                if bad.any():
                    raise CnnlabError(f"{self.name} {split_name} split has label {int(split.labels[bad][0])} "
                                      f"outside 0..{len(self.classes) - 1}; the files are corrupt or mislabelled")
        return self


@dataclass
class Index:
    """An image dataset as its metadata and file names tell it, before any image is decoded: what `cnnlab data
    info` prints, and what a reader checks before the slow part."""

    classes: list[str]
    files: dict[str, list[str]]  # split → member names
    labels: dict[str, np.ndarray]  # split → int64 labels (-1: unlabelled)
    notes: dict = field(default_factory=dict)


def split_train_val(labels: np.ndarray, fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified hold-out: about `fraction` of each class goes to validation. Returns sorted (train, val) indices.

    Deterministic in (labels, fraction, seed), so a run records those three and gets the same split back.
    """
    if not 0.0 <= fraction < 1.0:
        raise CnnlabError(f"validation fraction must be in [0, 1), got {fraction}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        rng = np.random.default_rng(seed)  # regression targets: a plain random hold-out
        perm = rng.permutation(len(labels))
        n_val = int(round(fraction * len(labels)))
        return np.sort(perm[n_val:]), np.sort(perm[:n_val])
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n_val = int(round(fraction * len(members)))
        val.append(rng.permutation(members)[:n_val])
    val = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
    train = np.setdiff1d(np.arange(len(labels)), val, assume_unique=True)
    return train, val
