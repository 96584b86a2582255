"""What a run needs before the loop: the device, the data loaders and the model's registry options."""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cnnlab.config import TrainConfig
from cnnlab.data import load_dataset, split_train_val
from cnnlab.data.loader import PRESETS, DeviceLoader, augment_preset, channel_stats
from cnnlab.distributed import Dist
from cnnlab.errors import CnnlabError
from cnnlab.models import model_info

FULL_BATCH_CHUNK = 1024  # full-batch GD accumulates the exact mean gradient over chunks of this size


def resolve_device(name: str) -> torch.device:
    if name not in ("auto", "cpu", "cuda"):
        raise CnnlabError(f"--device {name!r} is not allowed; choose one of: auto, cpu, cuda")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CnnlabError("--device cuda was asked for, but PyTorch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(name)


def resolve_data(config: TrainConfig) -> TrainConfig:
    """Check the run's data before anything is built: the path exists, holds the dataset named (or detect which
    one it holds), and is stored absolute, so `cnnlab eval RUN` works from any folder. Cheap: no image decoded.

    Sweeps call this for every planned run before the first one starts.
    """
    from cnnlab.data import DATASETS, check_imagenet_root, detect_dataset

    if config.dataset == "synthetic-linear":
        return config
    if config.data is None:
        if config.dataset is None:
            raise CnnlabError("say what to train on: --data PATH (its dataset is detected from the files) "
                              "or --dataset synthetic-linear")
        raise CnnlabError(f"{config.dataset} needs --data PATH (its folder or official archive)")
    path = Path(config.data).expanduser()
    if not path.exists():
        raise CnnlabError(f"--data {config.data} does not exist; pass the dataset's folder or archive")
    config.data = str(path.resolve())
    if config.cache_dir is not None:
        config.cache_dir = str(Path(config.cache_dir).expanduser().resolve())
    if config.dataset == "imagenet":
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


def model_options(config: TrainConfig, image_shape: tuple, num_classes: int, task: str | None = None) -> dict:
    """The registry options for this config and data: small images get the CIFAR head/stem unless told otherwise."""
    spec = model_info(config.model)
    if spec.name == "linreg" and task not in (None, "regression"):
        raise CnnlabError(f"linreg is linear regression (one real-valued output, squared loss), but "
                          f"{config.dataset} has class labels; use softmax (softmax regression) or another "
                          "classifier, or --dataset synthetic-linear for regression")
    if task == "regression" and spec.family != "mlp" and spec.name != "linreg":
        raise CnnlabError(f"{spec.name} is a classifier, but {config.dataset} holds regression targets; "
                          "use linreg (or mlp)")
    if len(image_shape) == 1 and spec.family in ("vgg", "resnet", "speednet"):
        raise CnnlabError(f"model {spec.name} needs images, but {config.dataset} holds feature vectors; "
                          "use linreg, softmax or mlp")
    small = len(image_shape) == 3 and image_shape[0] <= 64
    options = {"head": config.head or ("cifar" if small else "imagenet"),
               "stem": config.stem or ("cifar" if small else "imagenet"),
               "dropout": config.dropout, "hidden": config.hidden, "activation": config.activation,
               "batch_norm": config.batch_norm}
    if len(image_shape) == 1:
        options["in_features"] = image_shape[0]
    options = {k: v for k, v in options.items() if k in spec.options and v is not None}
    size = image_shape[0] if len(image_shape) == 3 else 1
    channels = image_shape[2] if len(image_shape) == 3 else 1
    return {"name": spec.name, "num_classes": num_classes, "in_channels": channels, "image_size": size, **options}


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


IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _subset(n: int, subset: int | None) -> np.ndarray:
    """`subset` indices by a fixed shuffle: archives are often sorted by class, and the first N hold one class."""
    if subset is None or subset >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).permutation(n)[:subset])


def build_streamed_data(config: TrainConfig, device: torch.device, dtype=torch.float32, d: Dist = Dist()) -> Data:
    """ImageNet-style folders: decoded by DataLoader workers, normalised on the device with ImageNet statistics."""
    from cnnlab.data.stream import StreamingImageFolder, StreamLoader

    if config.data is None:
        raise CnnlabError("dataset imagenet needs --data PATH (the folder holding train/ and val/)")
    root = Path(config.data).expanduser()
    sizes = (config.image_size, config.resize_size)
    train_set = StreamingImageFolder(root / "train", True, *sizes, seed=config.seed)
    eval_set = StreamingImageFolder(root / "train", False, *sizes)
    test_set = StreamingImageFolder(root / "val", False, *sizes)
    if test_set.classes != train_set.classes:
        raise CnnlabError(f"train and val class folders of {root} differ; both splits need the same classes")
    keep = _subset(len(train_set), config.subset)
    train_idx, val_idx = split_train_val(train_set.targets[keep], config.val_split, config.seed)
    batch = min(FULL_BATCH_CHUNK, len(train_idx)) if config.full_batch else config.batch_size
    common = {"device": device, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "dtype": dtype,
              "channels_last": device.type == "cuda", "workers": config.workers, "rank": d.rank,
              "world_size": d.world_size}
    train = StreamLoader(train_set, keep[train_idx], batch_size=batch, train=True, seed=config.seed, **common)
    val = StreamLoader(eval_set, keep[val_idx], batch_size=batch, train=False, **common) if len(val_idx) else None
    test = StreamLoader(test_set, _subset(len(test_set), config.test_subset), batch_size=batch, train=False,
                        **common)
    shape = (config.image_size, config.image_size, 3)
    notes = {"val_size": int(len(val_idx)), "val_seed": config.seed, "augment": "random-resized-crop + flip"}
    return Data(train, val, test, train_set.classes, "classification", shape, IMAGENET_MEAN, IMAGENET_STD,
                len(train_idx), notes)


def build_data(config: TrainConfig, device: torch.device, dtype=torch.float32, d: Dist = Dist()) -> Data:
    """Load (cached), take the subset, hold out the stratified validation split, build the three loaders."""
    if config.dataset == "imagenet":
        return build_streamed_data(config, device, dtype, d)
    ds = load_dataset(config.dataset, config.data, labels=config.labels, cache_dir=config.cache_dir)
    x, y = ds.train.images, ds.train.labels
    if config.subset is not None and config.subset < len(y):
        keep = _subset(len(y), config.subset)
        x, y = x[keep], y[keep]
    train_idx, val_idx = split_train_val(y, config.val_split, config.seed)
    is_image = x.dtype == np.uint8
    mean, std = channel_stats(x[train_idx]) if is_image else (None, None)
    # The dataset's preset unless --augment names another; --cutout adds to whichever it is.
    preset = config.augment or (ds.name if ds.name in PRESETS else "none")
    augment = augment_preset(preset, **({"cutout": config.cutout} if config.cutout else {}))
    full = config.full_batch
    batch = min(FULL_BATCH_CHUNK, len(train_idx)) if full else config.batch_size
    eval_batch = max(batch, 512)
    common = {"device": device, "mean": mean, "std": std, "dtype": dtype,
              "channels_last": device.type == "cuda", "rank": d.rank, "world_size": d.world_size}
    train = DeviceLoader(x[train_idx], y[train_idx], batch_size=batch, train=True,
                         augment=augment if is_image else augment_preset("none"), seed=config.seed, **common)
    val = DeviceLoader(x[val_idx], y[val_idx], batch_size=eval_batch, **common) if len(val_idx) else None
    keep_test = _subset(len(ds.test.labels), config.test_subset)
    test = DeviceLoader(ds.test.images[keep_test], ds.test.labels[keep_test], batch_size=eval_batch, **common)
    notes = dict(ds.notes, val_size=int(len(val_idx)), val_seed=config.seed, augment=str(augment))
    return Data(train, val, test, ds.classes, ds.task, tuple(x.shape[1:]), mean, std, len(train_idx), notes)
