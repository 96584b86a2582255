"""Stream an ImageFolder-style split (`split/<class>/<images>`) from disk, for datasets too big for memory.

Each sample is decoded and augmented on the CPU in DataLoader workers and handed over as a uint8 (3, H, W)
tensor; normalisation happens later, on the device, so the host→device copy moves 4× fewer bytes.
The transforms follow torchvision's ImageNet recipe (RandomResizedCrop + flip for training, resize + center
crop for evaluation) with the same random draws, written with PIL and torch only.
"""

import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, get_worker_info

from cnnlab.data.images import IMAGE_SUFFIXES as IMAGE_EXTENSIONS, is_image
from cnnlab.data.loader import EpochOrder, to_model_input
from cnnlab.errors import CnnlabError, check_positive_int


# What PIL raises for a file it cannot decode: UnidentifiedImageError and truncated data are OSErrors; some
# plugins raise ValueError or SyntaxError on malformed headers; DecompressionBombError is its own type.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _visible(name: str) -> bool:
    # Hidden entries are skipped: macOS `._x.JPEG` resource forks look like images but do not decode,
    # and folders such as `.ipynb_checkpoints` must not become classes.
    return not name.startswith(".")


def list_image_folder(split_dir: Path) -> tuple[list[tuple[str, int]], list[str]]:
    """(samples as (path, label), classes) of `split_dir/<class>/<images>`; classes and files sorted.

    Class folders are searched recursively (as torchvision's ImageFolder does); a class folder without
    images still takes its label, so labels agree between splits that share class names.
    """
    # Not built on folder.list_tree (file names of a folder or archive, for the in-memory formats): that one reads
    # exactly split/class/file and keeps hidden entries, as detection does (see its comment), and a list of file
    # names cannot show a class folder without images, which keeps its label here. ImageNet copies come in
    # ImageFolder's layout, nested files included.
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise CnnlabError(f"dataset folder {split_dir} does not exist or is not a directory; "
                          f"check the path (expected <split>/<class>/<image files>)")
    with os.scandir(split_dir) as entries:
        classes = sorted(e.name for e in entries if e.is_dir() and _visible(e.name))
    if not classes:
        raise CnnlabError(f"{split_dir} has no class folders; lay the split out as "
                          f"{split_dir}/<class name>/<image files>")
    samples = []
    for label, name in enumerate(classes):
        paths = []
        for folder, dirs, files in os.walk(split_dir / name, followlinks=True):
            dirs[:] = [d for d in dirs if _visible(d)]
            paths += [os.path.join(folder, f) for f in files if _visible(f) and is_image(f)]
        samples += [(p, label) for p in sorted(paths)]
    if not samples:
        raise CnnlabError(f"{split_dir} has {len(classes)} class folder(s) but no images "
                          f"({', '.join(IMAGE_EXTENSIONS)}); check the path and the file extensions")
    return samples, classes


def sample_crop_box(height: int, width: int, scale: tuple[float, float] = (0.08, 1.0),
                    ratio: tuple[float, float] = (3 / 4, 4 / 3),
                    generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (top, left, h, w): area fraction in `scale`, aspect w/h in `ratio` (log-uniform).

    Same algorithm and same sequence of random draws as torchvision's `RandomResizedCrop.get_params`, so a
    generator seeded like torch's global RNG gives the same boxes: 10 tries, then a center crop clamped to
    the ratio range.
    """
    area = height * width
    # float32 like torchvision, so the draws round the same way
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _rgb(img: Image.Image) -> Image.Image:
    # convert() copies even when the mode already matches; a full-size copy per sample is worth skipping
    return img if img.mode == "RGB" else img.convert("RGB")


def _to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def train_transform(img: Image.Image, image_size: int = 224, generator: torch.Generator | None = None,
                    scale: tuple[float, float] = (0.08, 1.0),
                    ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Random resized crop (bilinear) to image_size², then a horizontal flip with p=0.5; uint8 (3, H, W)."""
    img = _rgb(img)
    top, left, h, w = sample_crop_box(img.height, img.width, scale, ratio, generator)
    img = img.crop((left, top, left + w, top + h)).resize((image_size, image_size), Image.Resampling.BILINEAR)
    if torch.rand(1, generator=generator).item() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return _to_tensor(img)


def eval_transform(img: Image.Image, image_size: int = 224, resize_size: int = 256) -> torch.Tensor:
    """Shorter side to resize_size (bilinear), then the central image_size² crop; uint8 (3, H, W)."""
    img = _rgb(img)
    w, h = img.size
    # torchvision's Resize(int): the long side truncates, and the crop offset rounds
    if w <= h:
        new_w, new_h = resize_size, int(resize_size * h / w)
    else:
        new_w, new_h = int(resize_size * w / h), resize_size
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top = int(round((new_h - image_size) / 2.0))
    left = int(round((new_w - image_size) / 2.0))
    return _to_tensor(img.crop((left, top, left + image_size, top + image_size)))


class StreamingImageFolder(Dataset):
    """An ImageFolder split decoded on demand: `ds[i]` is (uint8 tensor (3, image_size, image_size), label).

    Training samples are augmented with `self.generator`, seeded from `seed`; `seed_worker` reseeds it in each
    DataLoader worker. With skip_bad_images, an unreadable file is replaced by the next readable index and
    recorded in `self.skipped` (replacements made) and `self.bad_paths` (distinct files). Both live in the
    process that decoded the sample: with workers > 0 each worker has its own copy, the parent's stays at 0,
    and each bad file is reported once per process with a warning.
    """

    def __init__(self, root: Path, train: bool, image_size: int = 224, resize_size: int = 256,
                 skip_bad_images: bool = False, seed: int = 0):
        check_positive_int("image_size", image_size)
        check_positive_int("resize_size", resize_size)
        if resize_size < image_size:
            raise CnnlabError(f"resize_size ({resize_size}) is smaller than image_size ({image_size}); "
                              f"the center crop would not fit, so set resize_size >= image_size")
        samples, self.classes = list_image_folder(Path(root))
        self.root = Path(root)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        # Numpy arrays, not a list of Python strings: forked workers touching millions of str objects update
        # their refcounts and so copy every page, which for ImageNet costs each worker hundreds of MB.
        self._paths = np.array([os.fsencode(p) for p, _ in samples])
        self.targets = np.array([label for _, label in samples], dtype=np.int64)
        self.train = train
        self.image_size = image_size
        self.resize_size = resize_size
        self.skip_bad_images = skip_bad_images
        self.generator = torch.Generator().manual_seed(seed)
        self.skipped = 0
        self.bad_paths: set[str] = set()

    def __len__(self) -> int:
        return len(self._paths)

    def path(self, index: int) -> str:
        """The file behind sample `index`."""
        return os.fsdecode(self._paths[index])

    def load(self, index: int) -> torch.Tensor:
        """Decode and transform one sample; CnnlabError naming the file if it cannot be decoded."""
        path = self.path(index)
        try:
            with Image.open(path) as img:
                img.load()  # decode fully now, so a truncated file fails here and not mid-transform
                img = _rgb(img)
        except _DECODE_ERRORS as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise CnnlabError(f"cannot read image {path} ({reason}); replace or delete it, "
                              f"or pass --skip-bad-images to skip unreadable files") from exc
        if self.train:
            return train_transform(img, self.image_size, self.generator)
        return eval_transform(img, self.image_size, self.resize_size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not self.skip_bad_images:
            return self.load(index), int(self.targets[index])
        for step in range(len(self)):
            i = (index + step) % len(self)
            if self.path(i) in self.bad_paths:
                continue
            try:
                image = self.load(i)
            except CnnlabError:
                self.bad_paths.add(self.path(i))
                warnings.warn(f"skipping unreadable image {self.path(i)}", stacklevel=2)
                continue
            if step:
                self.skipped += 1
            return image, int(self.targets[i])
        raise CnnlabError(f"no image under {self.root} can be read; check that the files are valid images")


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: seed this worker's augmentation generator from the loader's per-worker seed.

    The DataLoader derives that seed from its own generator (a base seed drawn when the workers start, +
    worker_id), which StreamLoader seeds from its generator each epoch, so a fixed seed gives the same
    augmentations run after run and no two workers repeat each other's draws.
    """
    info = get_worker_info()
    dataset = info.dataset
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    if isinstance(dataset, StreamingImageFolder):
        dataset.generator.manual_seed(info.seed)


class StreamLoader(EpochOrder):
    """The streaming counterpart of the in-memory DeviceLoader, with the same contract for the training loop.

    Iterates (normalised images on `device`, labels on `device`) over `indices` of a StreamingImageFolder. The
    epoch order is drawn here from `self.generator` (not by the DataLoader), so a checkpoint can store it and
    `resume_from` can continue an epoch at a batch; augmentation draws in the workers are not restored by that.
    """

    def __init__(self, dataset: StreamingImageFolder, indices, *, batch_size: int, device, train: bool, mean, std,
                 dtype=torch.float32, channels_last: bool = True, workers: int = 4, seed: int = 0,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1):
        self._to_model_input = to_model_input
        self.dataset, self.indices = dataset, torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        self.device = torch.device(device)
        self.labels = torch.as_tensor(dataset.targets[self.indices.numpy()]).to(self.device)
        self.batch_size, self.train, self.workers, self.drop_last = batch_size, train, workers, drop_last
        self.mean = torch.tensor(mean, device=self.device)
        self.std = torch.tensor(std, device=self.device)
        self.dtype, self.channels_last = dtype, channels_last
        self.rank, self.world_size = rank, world_size  # batch_size is global; each rank decodes its share
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def num_examples(self) -> int:
        return len(self.indices)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def __iter__(self):
        first = self.next_order()
        batches = [self.indices[self.order[slice(*self.bounds(b))]].tolist()[self.rank::self.world_size]
                   for b in range(first, len(self))]
        worker_seed = int(torch.randint(0, 2**62, (1,), generator=self.generator)) + self.rank
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.workers,
                            pin_memory=self.device.type == "cuda", worker_init_fn=seed_worker,
                            generator=torch.Generator().manual_seed(worker_seed))
        for x, y in loader:
            x = x.to(self.device, non_blocking=True)
            yield (self._to_model_input(x, self.mean, self.std, self.dtype, self.channels_last, layout="nchw"),
                   y.to(self.device, non_blocking=True))
