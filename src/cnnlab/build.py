"""What a run builds before its loop: checked data paths, the device, the loaders, the model, the run folder,
and the two objects the loop works with — `Setup` (fixed through the run) and `TrainState` (what a checkpoint
restores). `start` does it in that order, so bad input fails before anything is written.

(Not to be confused with `cnnlab data prepare`, which only fills the dataset cache.)
"""

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cnnlab.averaging import EMA, Lookahead
from cnnlab.checkpoint import load_checkpoint
from cnnlab.config import TrainConfig
from cnnlab.data import load_dataset, split_train_val
from cnnlab.data.loader import PRESETS, Augment, DeviceLoader, augment_preset, channel_stats
from cnnlab.distributed import Dist, broadcast
from cnnlab.finetune import freeze_backbone, load_initial_weights
from cnnlab.early_stopping import EarlyStopping
from cnnlab.errors import CnnlabError
from cnnlab.hardware import Precision, resolve_device, resolve_precision, set_deterministic, set_threads
from cnnlab.metrics import loss_fn
from cnnlab.models import count_params, create_model, model_info
from cnnlab.monitor import Monitor, default_monitor
from cnnlab.optim import build_optimizer, build_scheduler
from cnnlab.recipes import apply_recipe, describe as describe_recipe
from cnnlab.runs import RunFolder, default_run_path
from cnnlab.state import RESUME_KEYS, TrainState

FULL_BATCH_CHUNK = 1024  # full-batch GD accumulates the exact mean gradient over chunks of this size
INIT_IMAGES = 5000  # training images a model's init_from_data sees (speednet's patch statistics)


def resolve_data(config: TrainConfig, say=print) -> TrainConfig:
    """Check the run's data before anything is built: the path exists, holds the dataset named (or detect which
    one it holds), and is stored absolute, so `cnnlab eval RUN` works from any folder. Cheap: no image decoded,
    nothing fetched but what --download must.

    Sweeps call this for every planned run before the first one starts.
    """
    from cnnlab.data import DATASETS, check_imagenet_root, detect_dataset

    if config.dataset == "synthetic-linear":
        return config
    if config.download:
        _choose_copy(config, say)
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


def _choose_copy(config: TrainConfig, say) -> None:
    """--download: keep --data where it exists, else take the official files from the cache (fetching them the
    first time). Say which copy the run reads: results on two copies may differ (the shared CIFAR-10 is
    JPEG-recompressed, the official one is not)."""
    from cnnlab.data import download_to_cache

    given = config.data
    if given is not None and Path(given).expanduser().exists():
        say(f"data: {given} (it exists, so nothing is downloaded)")
        return
    if config.dataset is None:
        raise CnnlabError("--download needs --dataset NAME to know what to fetch")
    config.data = str(download_to_cache(config.dataset, config.cache_dir))
    missing = f"{given} does not exist, so this run reads " if given is not None else ""
    say(f"data: {missing}the official {config.dataset} files, downloaded into {config.data} and MD5-checked")


def model_options(config: TrainConfig, image_shape: tuple, num_classes: int, task: str | None = None) -> dict:
    """The registry options for this config and data: small images get the CIFAR head/stem unless told otherwise."""
    spec = model_info(config.model)
    if task is not None and task not in spec.tasks:
        if task == "classification":  # linreg: the only model without a classifier's output
            raise CnnlabError(f"{spec.name} is linear regression (one real-valued output, squared loss), but "
                              f"{config.dataset} has class labels; use softmax (softmax regression) or another "
                              "classifier, or --dataset synthetic-linear for regression")
        raise CnnlabError(f"{spec.name} is a classifier, but {config.dataset} holds regression targets; "
                          "use linreg (or mlp)")
    if len(image_shape) == 1 and spec.takes_images:
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
    data = (_streamed_data if config.dataset == "imagenet" else _resident_data)(config, device, dtype, d)
    data.train.full_batch, data.train.accumulate = config.full_batch, config.accumulate
    data.notes.update(val_size=data.val.num_examples if data.val else 0, val_seed=config.seed)
    return data


def _streamed_data(config: TrainConfig, device: torch.device, dtype, d: Dist) -> Data:
    """ImageNet-style folders: decoded by DataLoader workers, normalised on the device with ImageNet statistics."""
    from cnnlab.data.stream import StreamingImageFolder, StreamLoader

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
              "channels_last": _wants_channels_last(config.model, device), "workers": config.workers, "rank": d.rank,
              "world_size": d.world_size}
    train = StreamLoader(train_set, train_idx, batch_size=batch, train=True, seed=config.seed, **common)
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
              "channels_last": _wants_channels_last(config.model, device), "rank": d.rank,
              "world_size": d.world_size}
    train = DeviceLoader(x[train_idx], y[train_idx], batch_size=batch, train=True,
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
    return augment_preset(config.augment or (dataset if dataset in PRESETS else "none"), **added)


@dataclass
class Setup:
    """What stays fixed through a run: its settings, data, device, folder, and how a step computes."""

    config: TrainConfig
    data: Data
    device: torch.device
    run: RunFolder
    options: dict  # the model's registry options
    train_model: torch.nn.Module  # the model as stepped: wrapped by DDP and torch.compile when asked
    criterion: object
    autocast: object
    d: Dist = field(default_factory=Dist)
    wall_start: float = field(default_factory=time.perf_counter)
    precision: Precision = field(default_factory=lambda: Precision("fp32", "default"))
    threads: int | None = None
    init_seconds: float | None = None  # time of the model's init_from_data, when it has one
    nonfinite_step: torch.Tensor | None = None  # first step whose loss was NaN/inf (-1: none), kept on the device

    @property
    def tta(self) -> str:
        return self.config.tta if self.data.task == "classification" else "none"

    @property
    def model_channels_last(self) -> bool:
        return _wants_channels_last(self.options["name"], self.device)

    @property
    def num_classes(self) -> int:
        return len(self.data.classes)

    def say(self, line: str, err: bool = False) -> None:
        if self.run.readonly:  # other ranks stay quiet: one log per job
            return
        print(line, file=sys.stderr if err else sys.stdout, flush=True)
        self.run.log(line)

    def describe(self) -> dict:
        """What a checkpoint carries besides the training state: enough to rebuild the model and its inputs."""
        data = self.data
        return {"config": _plain(vars(self.config)), "model_options": _plain(self.options),
                "classes": list(data.classes), "task": data.task, "image_shape": list(data.image_shape),
                "mean": data.mean, "std": data.std}

    def save(self, state: TrainState, name: str) -> None:
        self.run.save_checkpoint({**state.state_dict(), **self.describe()}, name)


def _plain(d: dict) -> dict:
    """Only what weights_only loading accepts: numbers, strings, bools, None, lists (a Path becomes its string)."""
    return {k: (list(v) if isinstance(v, tuple) else os.fspath(v) if isinstance(v, os.PathLike) else v)
            for k, v in d.items()}


def start(config: TrainConfig | None, resume: str | None, d: Dist, stack) -> tuple[Setup, TrainState]:
    """Open (resume) or plan the run, build data and model, create the run folder last, restore the state."""
    run, checkpoint, rewrite_config = None, None, False
    if resume:
        run, checkpoint, config, rewrite_config = _reopen(resume, config, d, stack)
    resolve_data(config.validate(), say=print if d.is_main else lambda line: None)
    device = _device(config, d)
    if device.type == "mps" and config.auto_augment != "none":  # a check for training only: eval never augments
        raise CnnlabError("--auto-augment reproduces torchvision's rounding in float64, which Apple's MPS lacks; "
                          "use --device cpu or leave it out")
    precision = resolve_precision(config.precision, device, model_info(config.model).channels_last)
    threads = set_threads(config.threads)
    torch.manual_seed(config.seed)
    wall_start = time.perf_counter()
    data = build_data(config, device, d=d)
    # What the user left open, from the model's recipe (a resumed run's config.toml is complete: nothing to fill).
    recipe = apply_recipe(config, input_features=math.prod(data.image_shape))
    options = model_options(config, data.image_shape, len(data.classes) or 1, data.task)
    model = _model(options, device)
    if has_batch_norm(model):
        guard_batch_norm(config, data, d)
    fresh = checkpoint is None
    init_seconds = _init_from_data(model, data, config, options) if fresh and not config.init_from else None
    # A resumed run's weights come from its checkpoint; freezing (requires_grad) is not saved, so it is redone.
    tuning = [load_initial_weights(model, config.init_from, options["name"])] if fresh and config.init_from else []
    if config.freeze_backbone:
        tuning.append(freeze_backbone(model))
    model = _memory_format(model, options["name"], device)
    if config.sync_bn and d.enabled:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if run is None:
        run = _create_run(config, d, stack)
    setup = Setup(config=config, data=data, device=device, run=run, options=options,
                  train_model=_train_model(model, config, device, d),
                  criterion=loss_fn(data.task, config.label_smoothing),
                  autocast=precision.autocast(device), precision=precision, threads=threads,
                  d=d, wall_start=wall_start, init_seconds=init_seconds,
                  nonfinite_step=torch.full((), -1, device=device, dtype=torch.int64))
    state = _state(model, setup)
    if checkpoint is None:
        setup.say(f"training {options['name']} ({count_params(model):,} parameters) on {config.dataset}: "
                  f"{data.n_train} train / {data.val.num_examples if data.val else 0} val / "
                  f"{data.test.num_examples} test, {device} → {run.path}")
        if recipe:
            setup.say(describe_recipe(config.model, recipe))
        setup.say(describe_method(config, data))
        for line in tuning:
            setup.say(line)
        if d.enabled:
            setup.say(describe_processes(config, d))
        if getattr(data.train, "mixer", None):
            setup.say(data.train.mixer.describe())
        setup.say(describe_machine(setup))
        return setup, state
    state.load_state_dict(checkpoint)
    run.truncate_metrics(state.epoch)
    if rewrite_config:
        run.write_config(config)
    position = state.position
    setup.say(f"resuming {run.path} after epoch {state.epoch}"
              + (f", inside epoch {position['epoch']} at step {position['batch']}" if position else ""))
    return setup, state


def bare_setup(config: TrainConfig, model, device: torch.device, steps_per_epoch: int = 1,
               task: str = "classification") -> tuple[Setup, TrainState]:
    """Setup and TrainState for stepping `model` as `start` would, without data or a run folder (benchmarks)."""
    apply_recipe(config)
    model = _memory_format(model.to(device), config.model, device)
    precision = resolve_precision(config.precision, device, model_info(config.model).channels_last)
    setup = Setup(config=config, data=None, device=device, run=None, options={},
                  train_model=_train_model(model, config, device, Dist()),
                  criterion=loss_fn(task, config.label_smoothing), autocast=precision.autocast(device),
                  precision=precision)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)
    return setup, TrainState(model, optimizer, scheduler, None, default_monitor(task),
                             scaler=precision.scaler(device), ema=_ema(model, config),
                             clip_grad_norm=config.clip_grad_norm)


def _wants_channels_last(name: str, device: torch.device) -> bool:
    """Convolutional models in channels_last (NHWC) memory on CUDA and on the CPU, where cuDNN's and oneDNN's
    NHWC kernels are the fast ones (ResNet-18 on 2 CPU cores: 1.4× in fp32)."""
    return device.type in ("cuda", "cpu") and model_info(name).channels_last


def _memory_format(model, name: str, device: torch.device):
    return model.to(memory_format=torch.channels_last) if _wants_channels_last(name, device) else model


def _reopen(resume: str, config: TrainConfig | None, d: Dist, stack):
    """(run folder, checkpoint, its config, whether --epochs changed it) of a run to resume, locked by rank 0."""
    run = RunFolder.open(resume)
    if d.is_main:  # rank 0 is the only writer, so the only one that needs the lock
        stack.enter_context(run.lock())
    else:
        run.readonly = True
    checkpoint = load_checkpoint(run.file("last.pt"))
    missing = [k for k in RESUME_KEYS if k not in checkpoint]
    if missing:
        raise CnnlabError(f"{run.file('last.pt')} is not a cnnlab checkpoint for training "
                          f"(no {missing[0]!r}); it cannot be resumed")
    epochs = config.epochs if config is not None else None
    config = run.config()
    if epochs is not None and epochs != config.epochs:
        config.epochs = epochs  # written once the run's files have passed their checks
        return run, checkpoint, config, True
    return run, checkpoint, config, False


def _device(config: TrainConfig, d: Dist) -> torch.device:
    device = resolve_device(config.device)
    if device.type == "cuda" and d.enabled:
        device = torch.device("cuda", d.local_rank)
    set_deterministic(config.deterministic, config.autotune)
    return device


def _model(options: dict, device: torch.device) -> torch.nn.Module:
    try:
        return create_model(**options).to(device)
    except (MemoryError, RuntimeError) as e:  # e.g. --hidden 100000000000
        raise CnnlabError(f"cannot build {options['name']}: not enough memory for its layers "
                          f"({str(e).splitlines()[0][:80]}); use smaller --hidden sizes or another model") from None


def _init_from_data(model, data: Data, config: TrainConfig, options: dict) -> float | None:
    """Let a model that sets layers from the data do so (speednet's whitening filters); return its seconds."""
    if not hasattr(model, "init_from_data"):
        return None
    if not hasattr(data.train, "first_images"):
        raise CnnlabError(f"{options['name']} sets its first layer from training images held in memory; "
                          f"{config.dataset} is streamed from disk, so use another model for it")
    begin = time.perf_counter()
    model.init_from_data(data.train.first_images(INIT_IMAGES))
    return round(time.perf_counter() - begin, 4)


def _create_run(config: TrainConfig, d: Dist, stack) -> RunFolder:
    config.out = broadcast(config.out or default_run_path(config), d)  # one folder, named by rank 0
    if d.is_main:
        return stack.enter_context(RunFolder.create(config).lock())
    return RunFolder(config.out, readonly=True)


def _train_model(model, config: TrainConfig, device: torch.device, d: Dist):
    if d.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(model) if config.compile else model


def _state(model, setup: Setup) -> TrainState:
    config, loader = setup.config, setup.data.train
    optimizer = build_optimizer(model, config)
    steps = loader.steps_per_epoch
    early = (EarlyStopping(config.early_stop_metric, config.early_stop_delta, config.early_stop_patience,
                           config.early_stop_rule) if config.early_stop_metric else None)
    lookahead = (Lookahead(model, (config.lookahead_epoch - 1) * steps, config.epochs * steps)
                 if config.lookahead_epoch else None)
    monitor = Monitor(config.early_stop_metric) if config.early_stop_metric else default_monitor(setup.data.task)
    return TrainState(model, optimizer, build_scheduler(optimizer, config, steps), loader, monitor, early, lookahead,
                      setup.precision.scaler(setup.device), _ema(model, config), config.clip_grad_norm)


def _ema(model, config: TrainConfig) -> EMA | None:
    """The weights' moving average, of the bare model: DDP and torch.compile wrap it only in Setup.train_model,
    and every process averages the same weights (DDP keeps them equal), so each holds the same average."""
    return EMA(model, config.ema_decay) if config.ema_decay else None


def has_batch_norm(model) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def guard_batch_norm(config: TrainConfig, data: Data, d: Dist) -> None:
    """Batch norm cannot normalise one image (its variance is 0/0): refuse a batch of one, and let a last batch
    that would leave a process one image join the batch before it."""
    per_process = min(data.train.batch_size, data.n_train) // d.world_size
    if per_process < 2:
        size = f"{config.batch_size} over {d.world_size} processes" if d.enabled else str(config.batch_size)
        raise CnnlabError(f"{config.model} uses batch norm, which cannot train on batches of one image (batch "
                          f"size {size}); use --batch-size 2 or more, or a model without batch norm for plain SGD")
    data.train.min_last = 2 * d.world_size


def describe_machine(setup: Setup) -> str:
    """The number format and threads chosen for this machine, and why."""
    line = f"precision {setup.precision.name} ({setup.precision.reason}); {setup.threads} CPU threads"
    if setup.model_channels_last:
        line += "; channels_last"
    return (line + ("; deterministic kernels" if setup.config.deterministic else "")
            + ("; cuDNN autotuning" if setup.config.autotune and setup.device.type == "cuda" else ""))


def describe_processes(config: TrainConfig, d: Dist) -> str:
    """Under torchrun: --batch-size is the global batch, split over the processes (as the lr scaling assumes)."""
    if config.full_batch:
        return (f"torchrun: {d.world_size} processes; --batch-size all is the whole training set, each process "
                f"takes a 1/{d.world_size} share of it")
    share, extra = divmod(config.batch_size, d.world_size)
    each = f"{share}" if not extra else f"{share} or {share + 1}"
    return (f"torchrun: {d.world_size} processes; --batch-size {config.batch_size} is the global batch, each "
            f"process takes {each} images of it per batch (lr and recipes follow the global batch)")


def describe_method(config: TrainConfig, data: Data) -> str:
    """The optimisation method in the seed's words, so that e.g. `--batch-size all` with the default momentum is
    not mistaken for plain gradient descent."""
    if config.full_batch:
        method = f"full-batch gradient descent (the exact mean gradient over all {data.n_train} examples)"
    elif config.batch_size == 1 and config.accumulate == 1:
        method = "stochastic gradient descent (one example per step)"
    elif config.accumulate > 1:
        method = (f"minibatch SGD (batches of {config.step_batch}: the gradients of {config.accumulate} batches of "
                  f"{config.batch_size} added up per step)")
    else:
        method = f"minibatch SGD (batches of {config.batch_size})"
    if config.optimizer == "adamw":
        method += " with AdamW"
    elif config.momentum:
        method += f" with {'Nesterov ' if config.nesterov else ''}momentum {config.momentum} (--momentum 0: none)"
    else:
        method += " without momentum"
    decay = f"weight decay {config.weight_decay}" if config.weight_decay else "no weight decay"
    line = f"method: {method}; lr {config.lr}, {config.schedule} schedule; {decay}"
    if config.clip_grad_norm:
        line += f"; gradient norm clipped to {config.clip_grad_norm}"
    if config.ema_decay:
        line += f"; validated and tested with the weights' EMA (decay {config.ema_decay})"
    rest = data.train.merged_rest
    if rest:
        line += (f"; the last batch of each epoch would hold {rest} image{'s' if rest > 1 else ''}, too few for "
                 f"batch norm, so it joins the batch before it ({data.train.batch_size + rest} images)")
    return line
