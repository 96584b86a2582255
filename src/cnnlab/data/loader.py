"""The in-memory loader: a uint8 dataset moved to the device once, shuffled and augmented there in batches.

Nothing per-image happens in Python: a batch is one gather from the resident tensor, a batched random crop (one
more gather), a batched flip, automatic augmentation and cutout, one fused normalisation into the model's dtype and
memory format, and mixup/CutMix of the normalised batch.
The same code runs on the CPU, which is what the tests exercise.
"""

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.data.autoaugment import auto_augment
from cnnlab.data.mix import Mixer
from cnnlab.datasets import DATASETS
from cnnlab.errors import CnnlabError


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation: random crop after padding by `crop_padding` pixels (zeros, or the image mirrored
    at its border with `reflect`), horizontal flip, and cutout of a `cutout`×`cutout` square (DeVries & Taylor
    2017). `flip` mirrors each image with probability 0.5 every epoch; with `alternate_flip` each image is
    mirrored at random in the first epoch and then in every other epoch exactly opposite to that, so every
    two epochs show both orientations (Jordan, arXiv:2404.00498). 0/False switch each off.

    `auto_augment` ("trivialaugment" or "randaugment" with `randaugment_n` ops at magnitude `randaugment_m` of
    0…30; autoaugment.py) runs after crop and flip and before cutout, as in torchvision's recipes. `mixup` and
    `cutmix` (Beta α; 0 = off) mix a `mix_prob` share of the normalised batches and make the targets soft (mix.py).
    """

    crop_padding: int = 0
    flip: bool = False
    cutout: int = 0
    reflect: bool = False
    alternate_flip: bool = False
    auto_augment: str = "none"
    randaugment_n: int = 2
    randaugment_m: int = 9
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0


# Each dataset's own preset comes from its row in cnnlab.datasets; then the presets of no one dataset.
AUGMENT_PRESETS = {s.name: Augment(**s.augment) for s in DATASETS.values() if s.augment is not None} | {
    "images": Augment(crop_padding=4, flip=True),
    "speedrun": Augment(crop_padding=2, flip=True, reflect=True, alternate_flip=True),  # 2-pixel shifts, mirrored
    "none": Augment(),
}


def augment_preset(dataset: str, **overrides) -> Augment:
    """The dataset's preset with any fields overridden, e.g. augment_preset("cifar10", cutout=8)."""
    if dataset not in AUGMENT_PRESETS:
        raise CnnlabError(f"no augmentation preset {dataset!r}; choose one of: {', '.join(AUGMENT_PRESETS)}")
    bad = set(overrides) - set(Augment.__dataclass_fields__)
    if bad:
        raise CnnlabError(f"unknown augmentation option {sorted(bad)[0]!r}; "
                          f"options: {', '.join(Augment.__dataclass_fields__)}")
    return replace(AUGMENT_PRESETS[dataset], **overrides)


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


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator, reflect: bool = False) -> torch.Tensor:
    """Crop every (H, W) image of an (N, H, W, C) batch at its own random offset after padding by `padding`
    pixels: zeros, or with `reflect` the image mirrored at its border (one gather, no padded copy)."""
    n, h, w, _ = x.shape
    dy = torch.randint(0, 2 * padding + 1, (n, 1), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n, 1), device=x.device, generator=generator)
    rows = dy + torch.arange(h, device=x.device)
    cols = dx + torch.arange(w, device=x.device)
    batch = torch.arange(n, device=x.device)[:, None, None]
    if reflect:
        if padding >= min(h, w):
            raise CnnlabError(f"reflect padding of {padding} pixels needs images larger than that, got {h}×{w}")
        rows, cols = _mirror(rows - padding, h), _mirror(cols - padding, w)
        return x[batch, rows[:, :, None], cols[:, None, :]]
    padded = F.pad(x, (0, 0, padding, padding, padding, padding))
    return padded[batch, rows[:, :, None], cols[:, None, :]]


def _mirror(position: torch.Tensor, size: int) -> torch.Tensor:
    """Index into [0, size) of a position up to size-1 outside it, mirrored at the border without repeating the
    edge pixel (-1 → 1, size → size-2), as F.pad(mode="reflect") does."""
    return (size - 1) - ((size - 1) - position.abs()).abs()


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each (N, H, W, C) image left-right with probability 0.5."""
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return flip_where(x, flip)


def flip_where(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the (N, H, W, C) images whose entry of the boolean (N,) `flip` is set."""
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
    if layout == "nhwc" and channels_last:
        # NHWC memory is already channels_last: normalise it as (N·H, W·C) rows against mean and std repeated W
        # times. Broadcasting (1, C, 1, 1) over channels_last memory runs a 3-element innermost loop, 2-6× slower
        # on the CPU (benchmarks/stream.py found it: it cost more than decoding a JPEG).
        n, h, w, c = x.shape
        rows = x.reshape(n * h, w * c).to(torch.float32)
        rows = rows.sub_((mean * 255).repeat(w)).div_((std * 255).repeat(w))
        return rows.view(n, h, w, c).permute(0, 3, 1, 2).to(dtype)
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
    epochs_started: int = 0  # epochs begun, the current one included (a resumed epoch is not begun again)
    _resume: tuple[torch.Tensor, int] | None = None
    # A last batch smaller than this joins the one before it: batch norm cannot normalise a batch of one image
    # (nor a process's share of one under torchrun), and dropping it would make full-batch gradients inexact.
    min_last: int = 1
    full_batch: bool = False  # every batch of an epoch adds to one gradient step (full-batch gradient descent)
    accumulate: int = 1  # batches whose gradients add up to one optimizer step (gradient accumulation)
    # Evaluation under --static-shapes: the consumer pads a short last batch to `shard_size` images before the model
    # and counts only the real ones (engine.evaluate), so every forward pass has one shape.
    pad_last: bool = False
    rank: int = 0
    world_size: int = 1

    @property
    def shard_size(self) -> int:
        """Images of a full batch that this process sees (its share [rank::world_size] of the global batch)."""
        return len(range(self.rank, self.batch_size, self.world_size))

    @property
    def skipped(self) -> int:
        """Images each training epoch leaves out (drop_last: the order's rest after the last full batch)."""
        return self.num_examples % self.batch_size if self.drop_last else 0

    def __len__(self) -> int:
        full, rest = divmod(self.num_examples, self.batch_size)
        if self.drop_last:
            return full
        return full + (rest > 0 and (rest >= self.min_last or full == 0))

    @property
    def batches_per_step(self) -> int:
        """Batches one optimizer step adds up: all of them for full-batch gradient descent, else `accumulate`."""
        return len(self) if self.full_batch else self.accumulate

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one pass; the last may add up fewer batches than the others."""
        return -(-len(self) // self.batches_per_step)

    def step_span(self, batch: int) -> tuple[int, int, int]:
        """(first batch, last batch, examples) of the optimizer step that batch `batch` belongs to.

        Steps are counted from the epoch's first batch, so a step never spans two epochs: when the batches do not
        divide evenly, the epoch's last step adds up fewer of them (and averages over their fewer examples).
        """
        first = batch - batch % self.batches_per_step
        last = min(first + self.batches_per_step, len(self)) - 1
        return first, last, self.bounds(last)[1] - self.bounds(first)[0]

    def bounds(self, batch: int) -> tuple[int, int]:
        """Positions [start, stop) of batch `batch` in the epoch's order; the last one takes any merged rest."""
        start = batch * self.batch_size
        last = batch == len(self) - 1 and not self.drop_last
        return start, self.num_examples if last else start + self.batch_size

    @property
    def merged_rest(self) -> int:
        """Images of a too-small last batch that ride along with the one before it (0: none)."""
        full, rest = divmod(self.num_examples, self.batch_size)
        return rest if full and rest and rest < self.min_last and not self.drop_last else 0

    def resume_from(self, order: torch.Tensor, batch: int) -> None:
        """Make the next iteration continue an epoch: same order, starting at batch index `batch`."""
        self._resume = (order.to(self.generator.device), batch)

    def next_order(self) -> int:
        """Set `self.order` for the coming epoch (a fresh permutation when training); return the first batch."""
        if self._resume is not None:
            (self.order, first), self._resume = self._resume, None
            return first
        n, device = self.num_examples, self.generator.device
        self.epochs_started += 1
        self.order = (torch.randperm(n, device=device, generator=self.generator) if self.train
                      else torch.arange(n, device=device))
        return 0


# The prepared epoch (DeviceLoader.prepare_epoch): the largest copy of the training set it may hold (CIFAR-10 in
# float32 is 614 MB; larger sets augment per batch), and the images it prepares in one go.
EPOCH_SET_BYTES = 2**30
EPOCH_CHUNK = 8192


class DeviceLoader(EpochOrder):
    """Batches (x, y) of an in-memory dataset that lives on `device`.

    Training loaders draw a fresh permutation each epoch and augment each batch; evaluation loaders keep the order
    and only normalise. Float feature arrays (synthetic-linear) are batched as they are. A training loader that
    mixes (`augment.mixup` / `augment.cutmix`, which need `num_classes`) yields (N, num_classes) soft targets in
    place of labels.

    Distributed (world_size > 1): `batch_size` is the global batch; every rank draws the same permutation from
    `generator` (same seed) and takes its share `[rank::world_size]` of each global batch, so the ranks' shards are
    disjoint and together are exactly the single-process batch. Augmentation draws from `aug_generator`, seeded per
    rank, and so does mixing (its own host generator). `state_dict()` / `load_state_dict()` carry all three
    across a resume.
    """

    def __init__(self, images, labels, *, batch_size: int, device="cpu", train: bool = False,
                 augment: Augment = Augment(), mean=None, std=None, dtype=torch.float32,
                 channels_last: bool = True, drop_last: bool = False, seed: int = 0, rank: int = 0,
                 world_size: int = 1, num_classes: int | None = None):
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
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.aug_generator = torch.Generator(device=self.device).manual_seed(seed * 1_000_003 + 7919 * (rank + 1))
        self.mixer = mixer(augment, num_classes, seed, rank) if train and self.is_image else None

    @property
    def num_examples(self) -> int:
        return len(self.images)

    @property
    def prepares_epochs(self) -> bool:
        """Whether this loader does its augmentation once per epoch (`prepare_epoch`): a training loader whose
        augmentation is crops and flips only (automatic augmentation, cutout and mixing stay per batch), over a
        set whose prepared copy fits in EPOCH_SET_BYTES."""
        a = self.augment
        return (self.train and self.is_image and a.auto_augment == "none" and not a.cutout and self.mixer is None
                and self.images.numel() * self.dtype.itemsize <= EPOCH_SET_BYTES)

    def __iter__(self):
        resumed = self._resume is not None
        first = self.next_order()
        if self.prepares_epochs:
            # Redraw an interrupted epoch's set from where its draw began (a checkpoint of a cnnlab that augmented
            # per batch has no such state: its epoch goes on with fresh draws, the same augmentation in kind).
            if resumed and self._epoch_aug_state is not None:
                self.aug_generator.set_state(self._epoch_aug_state)
            self.prepare_epoch()
            for b in range(first, len(self)):
                start, stop = self._epoch_bounds[b:b + 2]  # a step is two slices of the prepared set: no gather
                yield self._epoch_x[start:stop], self._epoch_y[start:stop]
            self._epoch_x = self._epoch_y = None  # not held through evaluation
            return
        for b in range(first, len(self)):
            start, stop = self.bounds(b)
            idx = self.order[start:stop][self.rank::self.world_size]
            x, y = self.model_input(self.images[idx], idx), self.labels[idx]
            yield self.mixer(x, y) if self.mixer else (x, y)

    _epoch_aug_state: torch.Tensor | None = None  # aug_generator's state when this epoch's set was drawn

    def prepare_epoch(self) -> None:
        """The whole epoch at once: the images in this epoch's order, cropped and flipped, normalised into the model's
        dtype and memory format, with their labels; in chunks of EPOCH_CHUNK images so the temporaries stay small.
        Each process prepares only its own share of every batch, contiguous, so its steps are plain slices.
        Crops are drawn from `aug_generator`, whose state before the draw a checkpoint keeps, so a run resumed
        inside the epoch redraws the same set."""
        self._epoch_aug_state = self.aug_generator.get_state()
        self._epoch_x = self._epoch_y = None  # the last epoch's set goes before this one is allocated
        # Only what this process trains on: its share [rank::world_size] of each batch, none of the skipped rest.
        position = torch.arange(self.bounds(len(self) - 1)[1] if len(self) else 0)
        batch = (position // self.batch_size).clamp_(max=max(len(self) - 1, 0))  # a merged rest joins the last
        mine = (position - batch * self.batch_size) % self.world_size == self.rank
        self._epoch_bounds = [0, *torch.bincount(batch[mine], minlength=len(self)).cumsum(0).tolist()]
        order = self.order[position[mine].to(self.order.device)]
        n, (h, w, c) = len(order), self.images.shape[1:]
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        x = torch.empty((n, c, h, w), dtype=self.dtype, device=self.device, memory_format=memory_format)
        for start in range(0, n, EPOCH_CHUNK):
            idx = order[start:start + EPOCH_CHUNK]
            x[start:start + len(idx)] = self.model_input(self.images[idx], idx)
        self._epoch_x, self._epoch_y = x, self.labels[order]

    def model_input(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Augment (when training) and normalise one batch of the resident images (`idx`: their indices)."""
        if not self.is_image:
            return x.to(self.dtype)
        if self.train:
            if self.augment.crop_padding:
                x = random_crop(x, self.augment.crop_padding, self.aug_generator, self.augment.reflect)
            if self.augment.flip and self.augment.alternate_flip:
                x = flip_where(x, self.first_flips()[idx] ^ (self.epochs_started % 2 == 0))
            elif self.augment.flip:
                x = random_flip(x, self.aug_generator)
            if self.augment.auto_augment != "none":
                x = auto_augment(x, self.augment.auto_augment, self.aug_generator, self.augment.randaugment_n,
                                 self.augment.randaugment_m)
            if self.augment.cutout:
                x = cutout(x, self.augment.cutout, self.aug_generator)
        return to_model_input(x, self.mean, self.std, self.dtype, self.channels_last)

    def first_images(self, n: int) -> torch.Tensor:
        """The first n images as the model sees them in evaluation: normalised, not augmented."""
        return to_model_input(self.images[:n], self.mean, self.std, torch.float32, self.channels_last)

    def first_flips(self) -> torch.Tensor:
        """Which images alternating flips mirror in odd epochs: a fixed draw per seed (the same on every rank)."""
        if getattr(self, "_first_flips", None) is None:
            generator = torch.Generator(device=self.device).manual_seed((self.seed + 104_729) % 2**63)
            self._first_flips = torch.rand(self.num_examples, device=self.device, generator=generator) < 0.5
        return self._first_flips

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "aug_generator": self.aug_generator.get_state(),
                "epoch_aug_state": self._epoch_aug_state,
                "epochs_started": self.epochs_started, "mixer": self.mixer.state_dict() if self.mixer else None}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        if "aug_generator" in state:
            self.aug_generator.set_state(state["aug_generator"])
        if state.get("epoch_aug_state") is not None:
            self._epoch_aug_state = state["epoch_aug_state"]
        if self.mixer and state.get("mixer"):
            self.mixer.load_state_dict(state["mixer"])
        self.epochs_started = state.get("epochs_started", self.epochs_started)


def mixer(augment: Augment, num_classes: int | None, seed: int, rank: int) -> Mixer | None:
    """The training loader's Mixer when `augment` mixes (None when it does not)."""
    if not (augment.mixup or augment.cutmix):
        return None
    if not num_classes:
        raise CnnlabError("mixup and CutMix make soft targets over the classes: give the loader num_classes")
    return Mixer(num_classes, augment.mixup, augment.cutmix, augment.mix_prob, seed, rank)
