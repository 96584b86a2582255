"""The in-memory loader: a uint8 dataset moved to the device once, shuffled and augmented there in batches.

Nothing per-image happens in Python: a batch is one gather from the resident tensor, a batched random crop (one
more gather), a batched flip and cutout, and one fused normalisation into the model's dtype and memory format.
The same code runs on the CPU, which is what the tests exercise.
"""

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.errors import CnnlabError


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation: random crop after zero-padding by `crop_padding` pixels, horizontal flip with
    probability 0.5, and cutout of a `cutout`×`cutout` square (DeVries & Taylor 2017). 0/False switch each off."""

    crop_padding: int = 0
    flip: bool = False
    cutout: int = 0


PRESETS = {
    "cifar10": Augment(crop_padding=4, flip=True),
    "cifar100": Augment(crop_padding=4, flip=True),
    "tinyimagenet": Augment(crop_padding=8, flip=True),
    "mnist": Augment(),  # flipped digits are other digits
    "images": Augment(crop_padding=4, flip=True),
    "none": Augment(),
}


def augment_preset(dataset: str, **overrides) -> Augment:
    """The dataset's preset with any fields overridden, e.g. augment_preset("cifar10", cutout=8)."""
    if dataset not in PRESETS:
        raise CnnlabError(f"no augmentation preset {dataset!r}; choose one of: {', '.join(PRESETS)}")
    bad = set(overrides) - set(Augment.__dataclass_fields__)
    if bad:
        raise CnnlabError(f"unknown augmentation option {sorted(bad)[0]!r}; options: crop_padding, flip, cutout")
    return replace(PRESETS[dataset], **overrides)


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 (N, H, W, C) images on the [0, 1] scale.

    Exact and fast: a 256-bin histogram per channel instead of a float copy of the whole set.
    """
    values = np.arange(256, dtype=np.float64)
    mean, std = [], []
    for c in range(images.shape[-1]):
        hist = np.bincount(images[..., c].ravel(), minlength=256).astype(np.float64)
        m = (hist * values).sum() / hist.sum()
        var = (hist * np.square(values - m)).sum() / hist.sum()
        mean.append(float(m / 255))
        std.append(float(max(np.sqrt(var), 1e-6) / 255))
    return mean, std


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Crop every (H, W) image of an (N, H, W, C) batch at its own random offset after zero-padding."""
    n, h, w, _ = x.shape
    padded = F.pad(x, (0, 0, padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n, 1), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n, 1), device=x.device, generator=generator)
    rows = (dy + torch.arange(h, device=x.device))[:, :, None]
    cols = (dx + torch.arange(w, device=x.device))[:, None, :]
    return padded[torch.arange(n, device=x.device)[:, None, None], rows, cols]


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each (N, H, W, C) image left-right with probability 0.5."""
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(2), x)


def cutout(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero a size×size square centred at a random pixel of each image (clipped at the border)."""
    n, h, w, _ = x.shape
    cy = torch.randint(0, h, (n, 1), device=x.device, generator=generator)
    cx = torch.randint(0, w, (n, 1), device=x.device, generator=generator)
    lo = size // 2
    in_rows = ((torch.arange(h, device=x.device) - cy + lo) >= 0) & ((torch.arange(h, device=x.device) - cy + lo) < size)
    in_cols = ((torch.arange(w, device=x.device) - cx + lo) >= 0) & ((torch.arange(w, device=x.device) - cx + lo) < size)
    mask = in_rows[:, :, None] & in_cols[:, None, :]
    return x.masked_fill(mask[..., None], 0)


def to_model_input(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, dtype=torch.float32,
                   channels_last: bool = True, layout: str = "nhwc") -> torch.Tensor:
    """uint8 images → normalised (N, C, H, W) in `dtype`; channels_last keeps NHWC memory (free from NHWC input).

    mean/std are per-channel on the [0, 1] scale. Shared by the in-memory and the streaming loader.
    """
    if layout == "nhwc":
        x = x.permute(0, 3, 1, 2)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = x.to(dtype=torch.float32, memory_format=memory_format)
    x = x.sub_(mean.view(1, -1, 1, 1) * 255).div_(std.view(1, -1, 1, 1) * 255)
    return x.to(dtype)


class EpochOrder:
    """The epoch bookkeeping both loaders share: batches per epoch, this epoch's order, and resuming inside one.

    Subclasses set num_examples, batch_size, drop_last, train and `generator` (whose device the order lives on).
    """

    order: torch.Tensor | None = None
    _resume: tuple[torch.Tensor, int] | None = None

    def __len__(self) -> int:
        n = self.num_examples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def resume_from(self, order: torch.Tensor, batch: int) -> None:
        """Make the next iteration continue an epoch: same order, starting at batch index `batch`."""
        self._resume = (order.to(self.generator.device), batch)

    def next_order(self) -> int:
        """Set `self.order` for the coming epoch (a fresh permutation when training); return the first batch."""
        if self._resume is not None:
            (self.order, first), self._resume = self._resume, None
            return first
        n, device = self.num_examples, self.generator.device
        self.order = (torch.randperm(n, device=device, generator=self.generator) if self.train
                      else torch.arange(n, device=device))
        return 0


class DeviceLoader(EpochOrder):
    """Batches (x, y) of an in-memory dataset that lives on `device`.

    Training loaders draw a fresh permutation each epoch and augment each batch; evaluation loaders keep the order
    and only normalise. Float feature arrays (synthetic-linear) are batched as they are.

    Distributed (world_size > 1): `batch_size` is the global batch; every rank draws the same permutation from
    `generator` (same seed) and takes its share `[rank::world_size]` of each global batch, so the ranks' shards are
    disjoint and together are exactly the single-process batch. Augmentation draws from `aug_generator`, seeded per
    rank. `state_dict()` / `load_state_dict()` carry both generators across a resume.
    """

    def __init__(self, images, labels, *, batch_size: int, device="cpu", train: bool = False,
                 augment: Augment = Augment(), mean=None, std=None, dtype=torch.float32,
                 channels_last: bool = True, drop_last: bool = False, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        if batch_size < 1:
            raise CnnlabError(f"batch size must be a positive integer, got {batch_size}")
        self.device = torch.device(device)
        self.images = torch.as_tensor(images).to(self.device)
        self.labels = torch.as_tensor(labels).to(self.device)
        if len(self.images) == 0:
            raise CnnlabError("cannot build a loader over an empty split")
        self.is_image = self.images.dtype == torch.uint8
        if self.is_image and (mean is None or std is None):
            mean, std = channel_stats(np.asarray(images))
        self.mean = torch.tensor(mean, device=self.device) if self.is_image else None
        self.std = torch.tensor(std, device=self.device) if self.is_image else None
        self.batch_size, self.train, self.augment = batch_size, train, augment
        self.dtype, self.channels_last, self.drop_last = dtype, channels_last, drop_last
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.aug_generator = torch.Generator(device=self.device).manual_seed(seed * 1_000_003 + 7919 * (rank + 1))

    @property
    def num_examples(self) -> int:
        return len(self.images)

    def __iter__(self):
        first = self.next_order()
        for b in range(first, len(self)):
            idx = self.order[b * self.batch_size:(b + 1) * self.batch_size][self.rank::self.world_size]
            yield self.prepare(self.images[idx]), self.labels[idx]

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Augment (when training) and normalise one batch of the resident images."""
        if not self.is_image:
            return x.to(self.dtype)
        if self.train:
            if self.augment.crop_padding:
                x = random_crop(x, self.augment.crop_padding, self.aug_generator)
            if self.augment.flip:
                x = random_flip(x, self.aug_generator)
            if self.augment.cutout:
                x = cutout(x, self.augment.cutout, self.aug_generator)
        return to_model_input(x, self.mean, self.std, self.dtype, self.channels_last)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "aug_generator": self.aug_generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        if "aug_generator" in state:
            self.aug_generator.set_state(state["aug_generator"])
