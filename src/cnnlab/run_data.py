"""The data a run trains on: which copy of the dataset (`resolve_data`), then loaded or streamed, subset, split
into train / validation / test and wrapped in loaders with the run's augmentation (`build_data` → `Data`).
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cnnlab.config import TrainConfig
from cnnlab.data import DATASETS, STREAMED, check_imagenet_root, detect_dataset, home, load_dataset, split_train_val
from cnnlab.data.loader import AUGMENT_PRESETS, Augment, DeviceLoader, augment_preset, channel_stats
from cnnlab.data.stream import StreamingImageFolder, StreamLoader
from cnnlab.distributed import Dist
from cnnlab.errors import CnnlabError
from cnnlab.models import model_info

FULL_BATCH_CHUNK = 1024  # full-batch GD accumulates the exact mean gradient over chunks of this size


def wants_channels_last(name: str, device: torch.device) -> bool:
    """Convolutional models in channels_last (NHWC) memory on CUDA and on the CPU, where cuDNN's and oneDNN's
    NHWC kernels are the fast ones (ResNet-18 on 2 CPU cores: 1.4× in fp32)."""
    return device.type in ("cuda", "cpu") and model_info(name).channels_last


def resolve_data(config: TrainConfig, say=print) -> TrainConfig:
    """Check the run's data before anything is built: --data, else --dataset's copy in the data home (fetched there
    first under --download); the path exists, holds the dataset named (or detect which one it holds), and is stored
    absolute, so `cnnlab eval RUN` works from any folder. Cheap: no image decoded, nothing fetched but what
    --download must. Returns the resolved copy (data, dataset, cache_dir filled in); `config` stays as asked.

    Sweeps call this for every planned run before the first one starts.
    """
    if config.dataset == "synthetic-linear":
        return config
    config = dataclasses.replace(config)
    _find_copy(config, say)
    path = Path(config.data).expanduser()
    if not path.exists():
        raise CnnlabError(f"--data {config.data} does not exist; pass the dataset's folder or archive, or leave "
                          "--data out to use the data home's copy of --dataset")
    config.data = str(path.resolve())
    if config.cache_dir is not None:
        config.cache_dir = str(Path(config.cache_dir).expanduser().resolve())
    if config.dataset in STREAMED:
        check_imagenet_root(path)
        return config
    found = detect_dataset(path, config.cache_dir)
    if config.dataset is None:
        if found not in DATASETS:
            raise CnnlabError(f"cannot tell which dataset {config.data} holds (its class folders name none that "
                              f"cnnlab knows); pass --dataset, one of: {', '.join(DATASETS)}")
        config.dataset = found
    elif found not in ("images", config.dataset):
        raise CnnlabError(f"{config.data} holds {found}, not {config.dataset}; pass --dataset {found} or the right path")
    return config


def _find_copy(config: TrainConfig, say) -> None:
    """Set config.data where --data names no existing files: the data home's copy of --dataset, or under
    --download the official files fetched into the data home. Say which copy the run reads: results on two copies
    may differ (a JPEG-recompressed CIFAR-10, a subset of Tiny ImageNet)."""
    given = config.data
    if given is not None and (Path(given).expanduser().exists() or not config.download):
        if config.download:
            say(f"data: {given} (it exists, so nothing is downloaded)")
        return  # an existing --data is used as given; a missing one is refused by the caller
    if config.dataset is None:
        if config.download:
            raise CnnlabError("--download needs --dataset NAME to know what to fetch")
        raise CnnlabError("say what to train on: --dataset NAME (its files are found in the data home), --data "
                          "PATH (its dataset is detected from the files) or --dataset synthetic-linear")
    try:
        found = home.locate(config.dataset, config.data_root)
    except home.Missing:
        if not config.download:
            raise
        config.data = str(home.fetch(config.dataset, config.data_root))
        missing = f"{given} does not exist and the data home has no copy, so this run reads " if given else ""
        say(f"data: {missing}the official {config.dataset} files, downloaded into {config.data} and MD5-checked")
        return
    config.data = str(found.path)
    say(f"data: {found.path} ({config.dataset} from {home.data_home(config.data_root).said}, "
        f"{found.describe()})")


@dataclass
class Data:
    train: DeviceLoader
    val: DeviceLoader | None
    test: DeviceLoader
    classes: list[str]
    task: str
    image_shape: tuple
    mean: list | None
    std: list | None
    n_train: int
    notes: dict = field(default_factory=dict)


# Settings that add to whichever augmentation preset a run uses, when set to other than their default.
ADDED_AUGMENTATION = ("cutout", "auto_augment", "randaugment_n", "randaugment_m", "mixup", "cutmix", "mix_prob")
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _subset(n: int, subset: int | None) -> np.ndarray:
    """`subset` indices by a fixed shuffle: archives are often sorted by class, and the first N hold one class."""
    if subset is None or subset >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).permutation(n)[:subset])


def _split(config: TrainConfig, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices into the full training set: the subset first, then the stratified hold-out."""
    keep = _subset(len(labels), config.subset)
    train_idx, val_idx = split_train_val(labels[keep], config.val_split, config.seed)
    return keep[train_idx], keep[val_idx]


def _batch_sizes(config: TrainConfig, n_train: int) -> tuple[int, int]:
    """(training, evaluation) batch sizes; full-batch GD runs its one step over chunks of FULL_BATCH_CHUNK."""
    batch = min(FULL_BATCH_CHUNK, n_train) if config.full_batch else config.batch_size
    return batch, max(batch, 512)


def build_data(config: TrainConfig, device: torch.device, dtype=torch.float32, d: Dist = Dist()) -> Data:
    """Load (cached) or stream, take the subset, hold out the stratified validation split, build the loaders."""
    data = (_streamed_data if config.dataset in STREAMED else _resident_data)(config, device, dtype, d)
    data.train.full_batch, data.train.accumulate = config.full_batch, config.accumulate
    if config.static_shapes:
        # A split smaller than one batch (a preset tried on --subset) cannot drop its rest: it trains its one
        # short batch, and the method line says static shapes are off. Speed settings never refuse a run.
        data.train.drop_last = len(data.train) > 0
        # Padding costs the padded images' compute (2 % of a CIFAR-10 test pass at batch 512, measured on 2 CPU
        # cores) and pays only where a fixed shape is worth it: CUDA (graphs, cuDNN plans) or a compiled model.
        for loader in (data.val, data.test):
            if loader is not None:
                loader.pad_last = device.type == "cuda" or config.compile
    data.notes.update(val_size=data.val.num_examples if data.val else 0, val_seed=config.seed)
    return data


def _streamed_data(config: TrainConfig, device: torch.device, dtype, d: Dist) -> Data:
    """ImageNet-style folders: decoded by DataLoader workers, normalised on the device with ImageNet statistics."""
    batched = sorted(set(_added_augmentation(config)) & {"auto_augment", "mixup", "cutmix"})
    if batched:
        raise CnnlabError(f"--{batched[0].replace('_', '-')} works on datasets held in memory; {config.dataset} is "
                          "streamed from disk, so leave it out")
    root = Path(config.data).expanduser()
    sizes = (config.image_size, config.resize_size)
    train_set = StreamingImageFolder(root / "train", True, *sizes, seed=config.seed)
    eval_set = StreamingImageFolder(root / "train", False, *sizes)
    test_set = StreamingImageFolder(root / "val", False, *sizes)
    if test_set.classes != train_set.classes:
        raise CnnlabError(f"train and val class folders of {root} differ; both splits need the same classes")
    train_idx, val_idx = _split(config, train_set.targets)
    batch, _ = _batch_sizes(config, len(train_idx))  # decoded images are large: evaluate at the training batch
    common = {"device": device, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "dtype": dtype,
              "channels_last": wants_channels_last(config.model, device), "workers": config.workers, "rank": d.rank,
              "world_size": d.world_size}
    train = StreamLoader(train_set, train_idx, batch_size=batch, train=True, seed=config.seed, decode=config.decode,
                         drop_last=config.static_shapes, **common)
    val = StreamLoader(eval_set, val_idx, batch_size=batch, train=False, **common) if len(val_idx) else None
    test = StreamLoader(test_set, _subset(len(test_set), config.test_subset), batch_size=batch, train=False,
                        **common)
    shape = (config.image_size, config.image_size, 3)
    return Data(train, val, test, train_set.classes, "classification", shape, IMAGENET_MEAN, IMAGENET_STD,
                len(train_idx), {"augment": "random-resized-crop + flip"})


def _resident_data(config: TrainConfig, device: torch.device, dtype, d: Dist) -> Data:
    """A dataset held in memory as uint8 arrays, moved to the device once (DeviceLoader)."""
    ds = load_dataset(config.dataset, config.data, labels=config.labels, cache_dir=config.cache_dir)
    x, y = ds.train.images, ds.train.labels
    train_idx, val_idx = _split(config, y)
    is_image = x.dtype == np.uint8
    mean, std = channel_stats(x[train_idx]) if is_image else (None, None)
    augment = _augmentation(config, ds.name, is_image, device)
    batch, eval_batch = _batch_sizes(config, len(train_idx))
    common = {"device": device, "mean": mean, "std": std, "dtype": dtype,
              "channels_last": wants_channels_last(config.model, device), "rank": d.rank,
              "world_size": d.world_size}
    train = DeviceLoader(x[train_idx], y[train_idx], batch_size=batch, train=True, drop_last=config.static_shapes,
                         augment=augment, seed=config.seed, num_classes=len(ds.classes), **common)
    val = DeviceLoader(x[val_idx], y[val_idx], batch_size=eval_batch, **common) if len(val_idx) else None
    keep_test = _subset(len(ds.test.labels), config.test_subset)
    test = DeviceLoader(ds.test.images[keep_test], ds.test.labels[keep_test], batch_size=eval_batch, **common)
    return Data(train, val, test, ds.classes, ds.task, tuple(x.shape[1:]), mean, std, len(train_idx),
                dict(ds.notes, augment=str(augment)))


def _added_augmentation(config: TrainConfig) -> dict:
    """The augmentation settings that add to a preset (ADDED_AUGMENTATION) which the config sets."""
    return {name: getattr(config, name) for name in ADDED_AUGMENTATION
            if getattr(config, name) != getattr(Augment(), name)}


def _augmentation(config: TrainConfig, dataset: str, is_image: bool, device: torch.device) -> Augment:
    """The dataset's preset unless --augment names another, plus --cutout, --auto-augment and mixing; feature
    vectors get none."""
    added = _added_augmentation(config)
    if not is_image:
        for_images = sorted(set(added) - {"cutout"})
        if for_images:
            raise CnnlabError(f"--{for_images[0].replace('_', '-')} augments images, but {config.dataset} holds "
                              "feature vectors; leave it out")
        return augment_preset("none")
    return augment_preset(config.augment or (dataset if dataset in AUGMENT_PRESETS else "none"), **added)
