"""What a run builds before its loop — not `cnnlab data prepare`, which only fills the dataset cache.

Its data (run_data.py: checked paths, loaders), the device, the model, the run folder, and the two objects the loop
works with: `Setup` (built once) and `TrainState` (what a checkpoint restores). `start` does it in that order, so bad
input fails before anything is written, and resolves the config once on the way (data copy, recipe, run folder).
"""

import math
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

import torch

from cnnlab import runfiles
from cnnlab.averaging import EMA, Lookahead
from cnnlab.checkpoint import load_checkpoint
from cnnlab.config import TrainConfig, not_allowed
from cnnlab.data import DATASETS
from cnnlab.distributed import Dist, broadcast, gather
from cnnlab.finetune import freeze_backbone, load_initial_weights
from cnnlab.graphs import GraphedStep, decide as graphs_decision
from cnnlab.early_stopping import EarlyStopping
from cnnlab.errors import CnnlabError
from cnnlab.hardware import (Precision, resolve_device, resolve_precision, reuse_freed_memory, set_deterministic,
                             set_threads)
from cnnlab.metrics import loss_fn
from cnnlab.models import count_params, create_model, model_info
from cnnlab.monitor import Monitor, default_monitor
from cnnlab.optim import build_optimizer, build_scheduler
from cnnlab.optimizers import OPTIMIZERS
from cnnlab.recipes import apply_recipe, describe as describe_recipe
from cnnlab.run_data import Data, wants_channels_last, build_data, resolve_data
from cnnlab.runfolder import RunFolder, default_run_path
from cnnlab.state import RESUME_KEYS, TrainState
from cnnlab.tensorboard import FOLDER as TENSORBOARD_FOLDER, TensorBoardLog, charts, summary_writer

INIT_IMAGES = 5000  # training images a model's init_from_data sees (speednet's patch statistics)


def validate_config(config: TrainConfig) -> TrainConfig:
    """`config.validate()`, after the two names only the registries know: the model's (or its paper letter) and the
    dataset's. Here, not in config.py, which stays below the model zoo and the data package."""
    model_info(config.model)  # unknown names list the valid ones
    if config.dataset is not None and config.dataset not in DATASETS:
        raise not_allowed("dataset", config.dataset, "choose one of: " + ", ".join(DATASETS))
    return config.validate()


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
class Setup:
    """What a run is built with, once, in `start`: its settings (as asked and as resolved), data, device, folder,
    how a step computes, and two outlets the loop writes through: the device flag of the first non-finite loss
    (updated in place each batch, read at the epoch's end) and, with --tensorboard, its log (attached once the
    state is restored, because a resumed log starts at the restored step)."""

    config: TrainConfig  # resolved: the data's copy, the recipe's settings and the run folder filled in
    data: Data
    device: torch.device
    run: RunFolder
    options: dict  # the model's registry options
    train_model: torch.nn.Module  # the model as stepped: wrapped by DDP and torch.compile when asked
    criterion: object
    autocast: object
    dist: Dist = field(default_factory=Dist)  # the processes of a torchrun job (one: Dist())
    wall_start: float = field(default_factory=time.perf_counter)
    precision: Precision = field(default_factory=lambda: Precision("fp32", "default"))
    threads: int | None = None
    memory: str | None = None  # what hardware.reuse_freed_memory did, for the log
    init_seconds: float | None = None  # time of the model's init_from_data, when it has one
    nonfinite_step: torch.Tensor | None = None  # first step whose loss was NaN/inf (-1: none), kept on the device
    tensorboard: TensorBoardLog | None = None  # with --tensorboard, in the process that writes the run folder
    graphed: GraphedStep | None = None  # the step as a CUDA graph (graphs.py); None: eager
    no_graphs: str | None = None  # on CUDA, why the step is not graphed
    asked: TrainConfig | None = None  # the config as given (a resumed run: its config.toml, with new --epochs)

    @property
    def tta(self) -> str:
        return self.config.tta if self.data.task == "classification" else "none"

    @property
    def model_channels_last(self) -> bool:
        return wants_channels_last(self.options["name"], self.device)

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
        checkpoint = {**state.state_dict(), **self.describe()}
        if self.dist.enabled:  # each process draws its own crops, flips and dropout: keep every one's random state
            checkpoint["rng_by_rank"] = gather(checkpoint["rng"], self.dist)
        self.run.save_checkpoint(checkpoint, name)


def _plain(d: dict) -> dict:
    """Only what weights_only loading accepts: numbers, strings, bools, None, lists (a Path becomes its string)."""
    return {k: (list(v) if isinstance(v, tuple) else os.fspath(v) if isinstance(v, os.PathLike) else v)
            for k, v in d.items()}


def start(config: TrainConfig | None, resume: str | None, d: Dist, stack, notes=()) -> tuple[Setup, TrainState]:
    """Open (resume) or plan the run, build data and model, create the run folder last, restore the state. A new
    run's log gives `notes` (how its settings were put together: fit_to_epochs') after its first line."""
    run, checkpoint, rewrite_config = None, None, False
    if resume:
        run, checkpoint, config, rewrite_config = _reopen(resume, config, d, stack)
    # Resolved once, here, as new objects: `asked` stays what the user gave; `config` gains the data's copy, the
    # recipe's settings and the run folder's path (config.toml saves it; the log says what each step filled in).
    asked = validate_config(config)
    config = resolve_data(asked, say=print if d.is_main else lambda line: None)
    if config.tensorboard:
        summary_writer()  # a missing package is one line now, before anything is built or written
    device = _device(config, d)
    if device.type == "mps" and config.auto_augment != "none":  # a check for training only: eval never augments
        raise CnnlabError("--auto-augment reproduces torchvision's rounding in float64, which Apple's MPS lacks; "
                          "use --device cpu or leave it out")
    precision = resolve_precision(config.precision, device, model_info(config.model).channels_last)
    threads = set_threads(config.threads)
    memory = reuse_freed_memory() if device.type == "cpu" else None
    torch.manual_seed(config.seed)
    wall_start = time.perf_counter()
    data = build_data(config, device, d=d)
    no_graphs = graphs_decision(config, device, d.world_size, data.train, precision.name)  # before the run folder
    # What the user left open, from the model's recipe (a resumed run's config.toml is complete: nothing to fill).
    config, recipe = apply_recipe(config, input_features=math.prod(data.image_shape), train_images=data.n_train)
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
        if device.type != "cuda":  # PyTorch's SyncBatchNorm runs on CUDA only: DDP refuses it with a traceback
            raise CnnlabError(f"--sync-bn needs CUDA GPUs (PyTorch's SyncBatchNorm has no {device.type} kernels); "
                              "leave it out here, and each process normalises its own share of the batch")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if run is None:
        run, config = _create_run(config, d, stack)
    setup = Setup(config=config, asked=asked, data=data, device=device, run=run, options=options,
                  train_model=_train_model(model, config, device, d),
                  criterion=loss_fn(data.task, config.label_smoothing),
                  autocast=precision.autocast(device), precision=precision, threads=threads, memory=memory,
                  dist=d, wall_start=wall_start, init_seconds=init_seconds,
                  nonfinite_step=torch.full((), -1, device=device, dtype=torch.int64), no_graphs=no_graphs)
    state = _state(model, setup)
    if no_graphs is None:
        setup.graphed = GraphedStep(setup.train_model, state.optimizer, setup.criterion, precision.dtype,
                                    say=setup.say, must=config.cuda_graphs == "on")
    if checkpoint is None:
        _introduce(setup, model, recipe, tuning, notes)
    else:
        _restore(setup, state, checkpoint, rewrite_config)
    if config.tensorboard and not run.readonly:
        setup.tensorboard = _tensorboard(setup, None if checkpoint is None else state.scheduler.last_epoch, stack)
    return setup, state


def _introduce(setup: Setup, model, recipe: dict, tuning: list[str], notes=()) -> None:
    """A new run's first lines: what trains on what, how its settings were put together (`notes`), the recipe's
    choices, the method, the processes, the machine."""
    config, data, d = setup.config, setup.data, setup.dist
    setup.say(f"training {setup.options['name']} ({count_params(model):,} parameters) on {config.dataset}: "
              f"{data.n_train} train / {data.val.num_examples if data.val else 0} val / "
              f"{data.test.num_examples} test, {setup.device} → {setup.run.path}")
    for line in notes:
        setup.say(line)
    if recipe:
        setup.say(describe_recipe(config.model, recipe, config.epochs * data.n_train, config.optimizer))
    setup.say(describe_method(config, data))
    for line in tuning:
        setup.say(line)
    if d.enabled:
        setup.say(describe_processes(config, d))
    if getattr(data.train, "mixer", None):
        setup.say(data.train.mixer.describe())
    if getattr(data.train, "decode_note", None):
        setup.say(data.train.decode_note)
    setup.say(describe_machine(setup))


def _restore(setup: Setup, state: TrainState, checkpoint: dict, rewrite_config: bool) -> None:
    """Continue a run from its checkpoint: the state, metrics.csv cut back to it, config.toml with new --epochs."""
    run = setup.run
    by_rank = checkpoint.get("rng_by_rank") or []
    if len(by_rank) == setup.dist.world_size:  # the same processes as saved it: each takes its own random state back
        checkpoint = {**checkpoint, "rng": by_rank[setup.dist.rank]}
    state.load_state_dict(checkpoint)
    run.truncate_metrics(state.epoch)
    if rewrite_config:
        run.write_config(setup.config)
    position = state.position
    setup.say(f"resuming {run.path} after epoch {state.epoch}"
              + (f", inside epoch {position['epoch']} at step {position['batch']}" if position else ""))


def _tensorboard(setup: Setup, resumed_at: int | None, stack) -> TensorBoardLog:
    """The run's TensorBoard writer, closed with the run. A run resumed at global step S hides what the killed run
    logged after its checkpoint: SummaryWriter's purge_step T drops the folder's earlier events at steps ≥ T, and
    T = S + 1 because the checkpoint's own epoch row (or, inside an epoch, step S's scalars) was logged at exactly S
    and must stay."""
    log = TensorBoardLog(setup.run.file(TENSORBOARD_FOLDER), setup.config.tensorboard_every,
                         charts(setup.data.task, setup.num_classes), setup.data.train.steps_per_epoch,
                         purge_step=None if resumed_at is None else resumed_at + 1)
    stack.callback(log.close)
    return log


def bare_setup(config: TrainConfig, model, device: torch.device, steps_per_epoch: int = 1,
               task: str = "classification") -> tuple[Setup, TrainState]:
    """Setup and TrainState for stepping `model` as `start` would, without data or a run folder (benchmarks)."""
    config, _ = apply_recipe(config)
    model = _memory_format(model.to(device), config.model, device)
    precision = resolve_precision(config.precision, device, model_info(config.model).channels_last)
    setup = Setup(config=config, data=None, device=device, run=None, options={},
                  train_model=_train_model(model, config, device, Dist()),
                  criterion=loss_fn(task, config.label_smoothing), autocast=precision.autocast(device),
                  precision=precision)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)
    # One fixed batch per step is what a graph needs from the data; the rest of graphs.refusal's rules apply.
    one_batch = SimpleNamespace(drop_last=True, batches_per_step=1)
    if graphs_decision(replace(config, static_shapes=True), device, 1, one_batch, precision.name) is None:
        setup.graphed = GraphedStep(setup.train_model, optimizer, setup.criterion, precision.dtype,
                                    must=config.cuda_graphs == "on")
    return setup, TrainState(model, optimizer, scheduler, None, default_monitor(task),
                             scaler=precision.scaler(device), ema=_ema(model, config),
                             clip_grad_norm=config.clip_grad_norm)


def _memory_format(model, name: str, device: torch.device):
    return model.to(memory_format=torch.channels_last) if wants_channels_last(name, device) else model


def _reopen(resume: str, config: TrainConfig | None, d: Dist, stack):
    """(run folder, checkpoint, its config, whether --epochs changed it) of a run to resume, locked by rank 0."""
    run = RunFolder.open(resume)
    if d.is_main:  # rank 0 is the only writer, so the only one that needs the lock
        stack.enter_context(run.lock())
    else:
        run.readonly = True
    checkpoint = load_checkpoint(run.file(runfiles.LAST))
    missing = [k for k in RESUME_KEYS if k not in checkpoint]
    if missing:
        raise CnnlabError(f"{run.file('last.pt')} is not a cnnlab checkpoint for training "
                          f"(no {missing[0]!r}); it cannot be resumed")
    epochs = config.epochs if config is not None else None
    config = run.config()
    if epochs is not None and epochs != config.epochs:
        # written once the run's files have passed their checks
        return run, checkpoint, replace(config, epochs=epochs), True
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


def _create_run(config: TrainConfig, d: Dist, stack) -> tuple[RunFolder, TrainConfig]:
    """The new run's folder, locked, and the config with its path as `out`."""
    config = replace(config, out=broadcast(config.out or default_run_path(config), d))  # one folder, named by rank 0
    if d.is_main:
        run = stack.enter_context(RunFolder.create(config).lock())
        return run, replace(config, out=str(run.path))
    return RunFolder(config.out, readonly=True), config


def _train_model(model, config: TrainConfig, device: torch.device, d: Dist):
    if d.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if not config.compile:
        return model
    # Static shapes: one graph per batch shape, no symbolic sizes (which CUDA graphs and autotuning would retrace).
    return torch.compile(model, mode=None if config.compile_mode == "default" else config.compile_mode,
                         dynamic=False if config.static_shapes else None)


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
    if setup.memory:
        line += f"; {setup.memory}"
    config = setup.config
    if config.compile:
        line += f"; torch.compile (mode {config.compile_mode}" + (", fixed shapes)" if config.static_shapes else ")")
    if setup.graphed is not None:
        line += "; CUDA graphs: the step is captured once and replayed (--cuda-graphs off: eager)"
    elif setup.device.type == "cuda":
        line += f"; no CUDA graphs: {setup.no_graphs}"
    return (line + ("; deterministic kernels" if config.deterministic else "")
            + ("; cuDNN autotuning" if config.autotune and setup.device.type == "cuda" else ""))


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
    method += OPTIMIZERS[config.optimizer].describe(config)
    decay = f"weight decay {config.weight_decay}" if config.weight_decay else "no weight decay"
    line = f"method: {method}; lr {config.lr}, {config.schedule} schedule; {decay}"
    if config.clip_grad_norm:
        line += f"; gradient norm clipped to {config.clip_grad_norm}"
    if config.ema_decay:
        line += f"; validated and tested with the weights' EMA (decay {config.ema_decay})"
    if config.static_shapes and not data.train.drop_last:
        line += (f"; static shapes off: the training split's {data.n_train} images do not fill one batch of "
                 f"{data.train.batch_size}, so each epoch trains on them as one short batch")
    elif config.static_shapes:
        skipped = data.train.skipped
        line += (f"; static shapes: every batch holds {data.train.batch_size} images, so each epoch skips the last "
                 f"{skipped} of its shuffled order (a different {skipped} each epoch)" if skipped else
                 f"; static shapes: every batch holds {data.train.batch_size} images (none skipped)")
        line += (", and evaluation pads its last batch, counting only the real images" if data.test.pad_last else
                 "; evaluation keeps its short last batch (padding it pays only on CUDA or with --compile)")
    rest = data.train.merged_rest
    if rest:
        line += (f"; the last batch of each epoch would hold {rest} image{'s' if rest > 1 else ''}, too few for "
                 f"batch norm, so it joins the batch before it ({data.train.batch_size + rest} images)")
    return line
