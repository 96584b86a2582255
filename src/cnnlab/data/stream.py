"""Stream an ImageFolder-style split (`split/<class>/<images>`) from disk, for datasets too big for memory.

Each training sample is decoded and augmented on the CPU in persistent DataLoader workers and handed over as
uint8 (H, W, 3), the memory of a channels_last batch; normalisation happens on the device, so the host→device
copy moves 4× fewer bytes and the workers never touch floats. The transforms follow torchvision's ImageNet recipe
(RandomResizedCrop + flip for training, resize + center crop for evaluation), written with PIL and torch only.

Where the CPU time goes, per 400×400 JPEG on this project's 2-core Xeon (benchmarks/stream.py): the decode is
most of it (~0.8 ms with libjpeg-turbo); the crop and antialiased resize take ~0.2 ms with torch's uint8
channels_last kernel, where PIL's resize takes ~0.5 ms and ToTensor + Normalize another ~0.5 ms. So JPEGs decode
through torchvision's decode_jpeg where torchvision is installed, at reduced scale (PIL's draft) when the crop
is ≥ 2× the output, and the crop box is drawn with Python's random, not torch scalars. pillow-simd, if a user
installs it in place of Pillow, speeds up the PIL parts (evaluation resizes, PNGs); it is never required.
`decode="gpu"` moves the decode itself to the device (StreamLoader).
"""

import io
import math
import os
import random
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

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


def sample_crop_box(height: int, width: int, rng: random.Random, scale: tuple[float, float] = (0.08, 1.0),
                    ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (top, left, h, w): area fraction in `scale`, aspect w/h in `ratio` (log-uniform).

    torchvision's `RandomResizedCrop.get_params` algorithm (10 tries, then a center crop clamped to the ratio
    range), drawn from a Python `random.Random`: a box per sample through torch scalars and `.item()` cost more
    than the arithmetic. The draws are not torchvision's sequence; their distribution is (tests/test_stream.py).
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def draft_factor(box: tuple[int, int, int, int], image_size: int) -> int:
    """The largest JPEG DCT-domain downscale (1, 2, 4 or 8) that leaves the crop box at least image_size pixels
    on both sides, so the resize after it still only shrinks (no detail is lost that the output could show)."""
    short = min(box[2], box[3])
    return next(f for f in (8, 4, 2, 1) if short >= f * image_size or f == 1)


def resized_crop(image: torch.Tensor, box: tuple[int, int, int, int], size: int, flip: bool) -> torch.Tensor:
    """The box of a uint8 (C, H, W) image (any memory format, any device) resized to size² (bilinear with
    antialiasing, as PIL resizes), mirrored left-right if `flip`; uint8 (size, size, C).

    The CPU workers and the GPU batch decode both call this, so the two paths crop alike.
    """
    top, left, h, w = box
    x = image[None, :, top:top + h, left:left + w].contiguous(memory_format=torch.channels_last)
    # torch resizes uint8 channels_last images with antialiasing natively on the CPU (its fastest kernel there);
    # other devices resize floats
    exact = x.device.type == "cpu"
    x = F.interpolate(x if exact else x.float(), size=(size, size), mode="bilinear", antialias=True)
    if not exact:
        x = x.round_().clamp_(0, 255).to(torch.uint8)
    if flip:
        x = x.flip(3)
    return x[0].permute(1, 2, 0).contiguous()


def _rgb(img: Image.Image) -> Image.Image:
    # convert() copies even when the mode already matches; a full-size copy per sample is worth skipping
    return img if img.mode == "RGB" else img.convert("RGB")


def _pil_chw(img: Image.Image) -> torch.Tensor:
    """A PIL image as a uint8 (C, H, W) view of its (H, W, C) pixels: channels_last, which resized_crop wants."""
    return torch.from_numpy(np.array(_rgb(img), dtype=np.uint8)).permute(2, 0, 1)


def _to_tensor(img: Image.Image) -> torch.Tensor:
    return _pil_chw(img).contiguous()


_JPEG_DECODER = ...  # resolved on first use: torchvision.io.decode_jpeg, or None where torchvision is missing


def jpeg_decoder():
    """torchvision.io.decode_jpeg (libjpeg-turbo on the CPU, nvJPEG on CUDA) or None without torchvision.

    Optional and imported lazily: torchvision is not a dependency of cnnlab (it must match the installed torch);
    without it JPEGs decode through PIL, ~0.3 ms slower per 400×400 image here.
    """
    global _JPEG_DECODER
    if _JPEG_DECODER is ...:
        try:
            from torchvision.io import ImageReadMode, decode_jpeg
        except ImportError:
            _JPEG_DECODER = None
        else:
            def _JPEG_DECODER(data, device="cpu"):
                # torchvision 0.29 deprecates its decoders in favour of TorchCodec and warns on every call
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    return _JPEG_DECODER


def _ends_whole(data: bytes) -> bool:
    # libjpeg-turbo fills a truncated file's missing rows with grey where PIL refuses it; a whole JPEG ends with
    # its EOI marker (some carry padding after it, which PIL decodes)
    return data.rstrip(b"\0")[-2:] == b"\xff\xd9"


def decode_for_box(data: bytes, img: Image.Image, box: tuple[int, int, int, int],
                   image_size: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Decode the file `data` (opened as `img`, header only) into uint8 (C, H, W) pixels enough for cropping `box`
    to image_size²; returns (pixels, the box in the pixels' coordinates).

    A JPEG whose box spans ≥ 2× image_size is decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (PIL's draft:
    far less work than a full decode and resize); other JPEGs through torchvision's decode_jpeg when installed
    (faster than PIL's decode and copy); everything else through PIL.
    """
    factor = draft_factor(box, image_size) if img.format == "JPEG" else 1
    if factor > 1:
        width, height = img.size
        img.draft("RGB", (width // factor, height // factor))
        sx, sy = width / img.width, height / img.height  # the scale PIL chose (rounded up sizes)
        top, left, h, w = box
        # Each edge rounds to the nearest reduced pixel: the crop moves and grows by at most half a reduced pixel
        # per edge, under half an output pixel, since the box spans ≥ image_size reduced pixels
        t, l = round(top / sy), round(left / sx)
        b, r = min(img.height, round((top + h) / sy)), min(img.width, round((left + w) / sx))
        return _pil_chw(img), (t, l, b - t, r - l)
    decode = jpeg_decoder()
    if decode is not None and img.format == "JPEG" and img.mode in ("RGB", "L") and _ends_whole(data):
        return decode(torch.frombuffer(bytearray(data), dtype=torch.uint8)), box
    return _pil_chw(img), box


def train_transform(img: Image.Image, image_size: int = 224, rng: random.Random | None = None,
                    scale: tuple[float, float] = (0.08, 1.0),
                    ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Random resized crop (bilinear) to image_size², then a horizontal flip with p=0.5; uint8 (3, H, W).

    For a decoded PIL image; the streaming dataset decodes from the file's bytes (train_sample), which lets it
    decode JPEGs at reduced scale.
    """
    rng = rng or random.Random()
    box = sample_crop_box(img.height, img.width, rng, scale, ratio)
    flip = rng.random() < 0.5
    return resized_crop(_pil_chw(img), box, image_size, flip).permute(2, 0, 1).contiguous()


def train_sample(data: bytes, image_size: int, rng: random.Random) -> torch.Tensor:
    """A training sample of the encoded image `data`: RandomResizedCrop + flip drawn from `rng`, decoded only as
    finely as the crop needs (decode_for_box); uint8 (image_size, image_size, 3)."""
    with Image.open(io.BytesIO(data)) as img:
        box = sample_crop_box(img.height, img.width, rng)
        flip = rng.random() < 0.5
        pixels, box = decode_for_box(data, img, box, image_size)
    return resized_crop(pixels, box, image_size, flip)


def _eval_image(img: Image.Image, image_size: int, resize_size: int) -> Image.Image:
    # torchvision's Resize(int): the long side truncates, and the crop offset rounds
    w, h = img.size
    if w <= h:
        new_w, new_h = resize_size, int(resize_size * h / w)
    else:
        new_w, new_h = int(resize_size * w / h), resize_size
    if (new_w, new_h) != (w, h):
        img = _rgb(img).resize((new_w, new_h), Image.Resampling.BILINEAR)
    top = int(round((new_h - image_size) / 2.0))
    left = int(round((new_w - image_size) / 2.0))
    return _rgb(img).crop((left, top, left + image_size, top + image_size))


def eval_transform(img: Image.Image, image_size: int = 224, resize_size: int = 256) -> torch.Tensor:
    """Shorter side to resize_size (bilinear), then the central image_size² crop; uint8 (3, H, W)."""
    return _to_tensor(_eval_image(img, image_size, resize_size))


class StreamingImageFolder(Dataset):
    """An ImageFolder split decoded on demand: `ds[i]` is (uint8 tensor (image_size, image_size, 3), label).

    Samples are HWC, the memory of the channels_last batches the model takes, so nothing is transposed on the
    CPU; the loader permutes and normalises on the device. A key may be `(index, seed)`: the training
    augmentation is then drawn from `random.Random(seed)`, so a sample depends on its key alone — not on the
    worker, the process or the order that decodes it (StreamLoader passes such keys). A bare index draws from
    `self.rng`, seeded from `seed`.

    With `encoded`, training samples of JPEGs that torchvision can decode come back still encoded, for the
    device to decode in batches (decode_batch): `(payload, params, label)` with payload the file's bytes (1-D
    uint8) and params (index, top, left, h, w, flip); other files come decoded and cropped (3-D payload).

    With skip_bad_images, an unreadable file is replaced by the next readable index and recorded in
    `self.skipped` (replacements made) and `self.bad_paths` (distinct files). Both live in the process that
    decoded the sample: with workers > 0 each worker has its own copy, the parent's stays at 0, and each bad file
    is reported once per process with a warning.
    """

    def __init__(self, root: Path, train: bool, image_size: int = 224, resize_size: int = 256,
                 skip_bad_images: bool = False, seed: int = 0, encoded: bool = False):
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
        self.encoded = encoded
        self.rng = random.Random(seed)
        self.skipped = 0
        self.bad_paths: set[str] = set()

    def __len__(self) -> int:
        return len(self._paths)

    def path(self, index: int) -> str:
        """The file behind sample `index`."""
        return os.fsdecode(self._paths[index])

    def _cannot_read(self, index: int, exc: Exception) -> CnnlabError:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        return CnnlabError(f"cannot read image {self.path(index)} ({reason}); replace or delete it, "
                           f"or pass --skip-bad-images to skip unreadable files")

    def load(self, index: int, seed: int | None = None):
        """Decode and transform one sample (uint8 HWC; with `encoded`, see the class); CnnlabError naming the file
        if it cannot be decoded. Training draws from random.Random(seed), or from self.rng without one."""
        rng = self.rng if seed is None else random.Random(seed)
        try:
            with open(self.path(index), "rb") as f:
                data = f.read()
            if not self.train:
                with Image.open(io.BytesIO(data)) as img:
                    return torch.from_numpy(np.array(_eval_image(img, self.image_size, self.resize_size)))
            if self.encoded:
                return self._encoded(index, data, rng)
            return train_sample(data, self.image_size, rng)
        except (*_DECODE_ERRORS, RuntimeError) as exc:  # RuntimeError: torchvision's decoder
            raise self._cannot_read(index, exc) from exc

    def _encoded(self, index: int, data: bytes, rng: random.Random):
        with Image.open(io.BytesIO(data)) as img:
            box = sample_crop_box(img.height, img.width, rng)
            flip = rng.random() < 0.5
            if not (img.format == "JPEG" and img.mode in ("RGB", "L") and _ends_whole(data)):
                pixels, box = decode_for_box(data, img, box, self.image_size)
                return resized_crop(pixels, box, self.image_size, flip), torch.tensor([index, *box, int(flip)])
        return torch.frombuffer(bytearray(data), dtype=torch.uint8), torch.tensor([index, *box, int(flip)])

    def __getitem__(self, key) -> tuple:
        index, seed = key if isinstance(key, tuple) else (key, None)
        if not self.skip_bad_images:
            return _with_label(self.load(index, seed), int(self.targets[index]))
        for step in range(len(self)):
            i = (index + step) % len(self)
            if self.path(i) in self.bad_paths:
                continue
            try:
                sample = self.load(i, seed)
            except CnnlabError:
                self.bad_paths.add(self.path(i))
                warnings.warn(f"skipping unreadable image {self.path(i)}", stacklevel=2)
                continue
            if step:
                self.skipped += 1
            return _with_label(sample, int(self.targets[i]))
        raise CnnlabError(f"no image under {self.root} can be read; check that the files are valid images")


def _with_label(sample, label: int) -> tuple:
    return (*sample, label) if isinstance(sample, tuple) else (sample, label)


def collate_encoded(batch: list[tuple]) -> tuple[torch.Tensor, ...]:
    """The DataLoader's collate_fn for an encoded dataset: (blob, lengths, pixels, params (N, 6), labels (N,)).

    The JPEGs travel as one uint8 blob with each one's length (0 for a sample decoded in the worker, whose pixels
    are stacked in `pixels`): a list of tensors would cross from the worker as one shared-memory segment each,
    which cost more CPU than reading the files. unpack_encoded undoes it.
    """
    payloads, params, labels = zip(*batch)
    encoded = [p for p in payloads if p.dim() == 1]
    decoded = [p for p in payloads if p.dim() == 3]
    blob = torch.cat(encoded) if encoded else torch.empty(0, dtype=torch.uint8)
    pixels = torch.stack(decoded) if decoded else torch.empty(0, dtype=torch.uint8)
    lengths = torch.tensor([len(p) if p.dim() == 1 else 0 for p in payloads])
    return blob, lengths, pixels, torch.stack(params), torch.tensor(labels)


def unpack_encoded(blob: torch.Tensor, lengths: torch.Tensor, pixels: torch.Tensor) -> list[torch.Tensor]:
    """The batch's payloads in order: views of the blob (JPEG bytes) and decoded (H, W, 3) samples."""
    parts = iter(torch.split(blob, [n for n in lengths.tolist() if n]))
    decoded = iter(pixels)
    return [next(parts) if n else next(decoded) for n in lengths.tolist()]


def decode_batch(payloads: list[torch.Tensor], params: torch.Tensor, image_size: int, device,
                 paths=None) -> torch.Tensor:
    """The encoded dataset's batch as uint8 (N, image_size, image_size, 3) on `device`: the JPEG bytes decoded in
    one batched call there (nvJPEG on CUDA), each cropped, resized and flipped by resized_crop.

    If the batched decode fails (a file torchvision cannot read), each image is decoded on its own on the CPU and
    the one that fails raises the CPU path's error, naming its file (`paths(index)`).
    """
    device = torch.device(device)
    out = torch.empty(len(payloads), image_size, image_size, 3, dtype=torch.uint8, device=device)
    encoded = [i for i, p in enumerate(payloads) if p.dim() == 1]
    try:
        images = jpeg_decoder()([payloads[i] for i in encoded], device=device)
    except RuntimeError:
        images = []
        for i in encoded:
            try:
                images.append(jpeg_decoder()(payloads[i]).to(device))
            except RuntimeError as exc:
                index = int(params[i, 0])
                name = paths(index) if paths else f"sample {index}"
                raise CnnlabError(f"cannot read image {name} ({' '.join(str(exc).split())}); replace or delete "
                                  f"it") from exc
    rows = params.tolist()
    for i, image in zip(encoded, images):
        out[i] = resized_crop(image, rows[i][1:5], image_size, bool(rows[i][5]))
    for i, p in enumerate(payloads):
        if p.dim() == 3:
            out[i] = p.to(device, non_blocking=True)
    return out


def gpu_decode_problem(device) -> str | None:
    """Why batched JPEG decoding on `device` is unavailable (one phrase), or None where it works: it needs CUDA
    and a torchvision whose decode_jpeg reaches nvJPEG there, tried once on a tiny JPEG."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"the device is {device.type}, not CUDA"
    if jpeg_decoder() is None:
        return "torchvision is not installed (pip install the torchvision that matches your torch)"
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 100, 50)).save(buffer, "JPEG")
    try:
        jpeg_decoder()([torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)], device=device)
    except Exception as exc:  # a probe: whatever stops it (no nvJPEG, no GPU, a CPU-only torch), the CPU path runs
        return f"torchvision's decode_jpeg cannot decode on {device} ({' '.join(str(exc).split())[:120]})"
    return None


class _EpochBatches:
    """The batch sampler of a persistent DataLoader: it is iterated afresh every epoch, and yields the keys the
    StreamLoader set for that epoch."""

    def __init__(self):
        self.batches: list[list] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class StreamLoader(EpochOrder):
    """The streaming counterpart of the in-memory DeviceLoader, with the same contract for the training loop.

    Iterates (normalised images on `device`, labels on `device`) over `indices` of a StreamingImageFolder. The
    epoch order and a seed for the epoch's augmentation are drawn here from `self.generator`, so a checkpoint
    stores both and `resume_from` continues an epoch at a batch with the same crops and flips. Each sample's
    augmentation depends on (epoch seed, image index) only, so it is the same whichever process or worker decodes
    it (a torchrun job sees the images a single process sees).

    The DataLoader and its workers are made once and live across epochs (persistent workers: no fork and start-up
    per epoch), with pinned memory on CUDA; batches travel as uint8 and are normalised on the device.
    `decode="gpu"` (training only) hands the workers' JPEG bytes to the device, which decodes and crops them in
    batches (decode_batch); where that is unavailable the CPU path runs and `decode_note` says why.
    """

    def __init__(self, dataset: StreamingImageFolder, indices, *, batch_size: int, device, train: bool, mean, std,
                 dtype=torch.float32, channels_last: bool = True, workers: int = 4, seed: int = 0,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1, decode: str = "cpu"):
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
        self.epoch_seed = 0
        self.decode, self.decode_note = "cpu", None
        if decode == "gpu" and train:
            problem = gpu_decode_problem(self.device)
            if problem is None and dataset.skip_bad_images:
                problem = "--skip-bad-images needs each file decoded in the workers"
            self.decode = "cpu" if problem else "gpu"
            self.decode_note = ("JPEG decode: on the device, in batches (torchvision decode_jpeg, nvJPEG)"
                                if self.decode == "gpu" else f"JPEG decode: CPU workers (--decode gpu unavailable: "
                                                             f"{problem})")
        dataset.encoded = self.decode == "gpu"  # the workers hand over bytes only when the device decodes
        self._batches = _EpochBatches()
        self._loader = None

    @property
    def num_examples(self) -> int:
        return len(self.indices)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "epoch_seed": self.epoch_seed}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.epoch_seed = state.get("epoch_seed", 0)  # checkpoints before the per-sample seeds lack it

    def _data_loader(self) -> DataLoader:
        # Built once: with persistent workers every epoch reuses the same processes; they read each epoch's keys
        # from self._batches, which the main process alone iterates.
        if self._loader is None:
            self._loader = DataLoader(
                self.dataset, batch_sampler=self._batches, num_workers=self.workers,
                persistent_workers=self.workers > 0, pin_memory=self.device.type == "cuda",
                collate_fn=collate_encoded if self.decode == "gpu" else None)
        return self._loader

    def __iter__(self):
        resuming = self._resume is not None
        first = self.next_order()
        if not resuming:
            self.epoch_seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        keys = self.indices[self.order].tolist()
        # (index, seed) keys; the seed mixes the image's index into the epoch's, the same on every rank
        shares = [[(i, (self.epoch_seed << 32) + i) for i in keys[slice(*self.bounds(b))]][self.rank::self.world_size]
                  for b in range(first, len(self))]
        # A rank's share of a batch smaller than the job is empty: it yields an empty batch (every rank must take
        # as many steps), which the DataLoader cannot collate, so it is never asked for one.
        self._batches.batches = [share for share in shares if share]
        batches = iter(self._data_loader()) if self._batches.batches else None
        for share in shares:
            if share:
                x, y = self._on_device(next(batches))
            else:
                x = torch.empty(0, self.dataset.image_size, self.dataset.image_size, 3, dtype=torch.uint8,
                                device=self.device)
                y = torch.empty(0, dtype=torch.int64, device=self.device)
            yield self._to_model_input(x, self.mean, self.std, self.dtype, self.channels_last, layout="nhwc"), y

    def _on_device(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """A collated batch as (uint8 NHWC images, labels) on the device; GPU decoding happens here."""
        if self.decode == "gpu":
            *packed, params, y = batch
            x = decode_batch(unpack_encoded(*packed), params, self.dataset.image_size, self.device, self.dataset.path)
        else:
            x, y = batch
            x = x.to(self.device, non_blocking=True)
        return x, y.to(self.device, non_blocking=True)
