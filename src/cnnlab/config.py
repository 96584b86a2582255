"""Every training setting in one typed dataclass: TOML in, TOML out; cli.py generates a flag from each field.

Precedence: dataclass defaults < `--config FILE` (or a preset's name, see cnnlab.presets) < explicit command-line
flags; then, for lr, weight_decay, schedule and label_smoothing left at None by all three, the model's default
recipe (recipes.py, at the start of a run). Validation happens once, in `validate()`, and names the field and
what it allows; the model's and the dataset's names are checked where their registries are known
(`cnnlab.build.validate_config`), so that this module, at the bottom of the package, imports nothing but
cnnlab.errors and the torch-free tables beside it (cnnlab.optimizers, cnnlab.datasets).
"""

import json
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from cnnlab.datasets import DATASETS
from cnnlab.errors import CnnlabError, one_of
from cnnlab.optimizers import OPTIMIZERS


END_OF_CONFIG = "# end of cnnlab config"  # lets a reader tell a complete config.toml from a truncated one
_STREAMED = ", ".join(s.name for s in DATASETS.values() if s.streamed)  # for help strings: "imagenet"


def _setting(default, help, choices=None):
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, "choices": choices})
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    # what to train
    model: str = _setting("mlp", "model name from `cnnlab models` (or a paper letter A…E)")
    dropout: float | None = _setting(None, "dropout probability for mlp/vgg (default: the model's own)")
    head: str | None = _setting(None, "VGG head: imagenet or cifar (default: cifar for images ≤ 64 px)")
    stem: str | None = _setting(None, "ResNet stem: imagenet or cifar (default: cifar for images ≤ 64 px)")
    hidden: list[int] | None = _setting(None, "MLP hidden layer sizes, e.g. 256,128; speednet: its three group widths")
    activation: str | None = _setting(None, "MLP activation: relu, sigmoid or tanh")
    batch_norm: bool | None = _setting(None, "MLP batch norm between affine map and activation")
    # data
    dataset: str | None = _setting(None, one_of(DATASETS) + " (default: detected from --data)")
    data: str | None = _setting(None, "the dataset's folder or archive (default: --dataset's files found in the data "
                                "home, see --data-root)")
    data_root: str | None = _setting(None, "the data home: the folder where --dataset NAME is looked for when --data "
                                     "is not given (default: $CNNLAB_DATA, else ~/.cache/cnnlab/datasets; `cnnlab data "
                                     "list` shows what it holds)")
    download: bool = _setting(False, "where --data does not exist (or is not given) and the data home holds no copy, "
                              "fetch the dataset's official files into the data home first, MD5-checked (needs "
                              "--dataset); the run's first line says which copy it used")
    labels: str = _setting("fine", "CIFAR-100 label set", ("fine", "coarse"))
    val_split: float = _setting(0.1, "fraction of the training set held out for validation (stratified)")
    subset: int | None = _setting(None, "train on N training images, drawn by a fixed shuffle (archives are sorted by "
                                  "class), before the validation split")
    test_subset: int | None = _setting(None, "test on N test images, drawn by a fixed shuffle, for quick runs "
                                       "(summary.json records test_size)")
    augment: str | None = _setting(None, "augmentation preset (default: the dataset's; `none` switches it off)")
    cutout: int = _setting(0, "cutout square size in pixels (0 = off)")
    auto_augment: str = _setting("none", "automatic augmentation on the device after the preset's crop and flip, its "
                                 "own op and magnitude per image: trivialaugment (TrivialAugment Wide) or randaugment",
                                 ("none", "trivialaugment", "randaugment"))
    randaugment_n: int = _setting(2, "randaugment: ops applied to each image, one after another")
    randaugment_m: int = _setting(9, "randaugment: magnitude of every op, a bin from 0 (none) to 30 (strongest)")
    mixup: float = _setting(0.0, "mixup α: each training image is blended with its neighbour in the batch by λ ~ "
                            "Beta(α, α) and so is its target (0 = off; 0.2 is common)")
    cutmix: float = _setting(0.0, "CutMix α: each training image gets a box of its neighbour's pixels, λ ~ Beta(α, α) "
                             "corrected to the box's area (0 = off; 1.0 is common). With --mixup as well, each mixed "
                             "batch uses one of the two, chosen with probability ½ (as timm does)")
    mix_prob: float = _setting(1.0, "share of training batches that --mixup/--cutmix mix")
    cache_dir: str | None = _setting(None, "prepared-dataset cache (default: ~/.cache/cnnlab)")
    image_size: int = _setting(224, f"streamed datasets ({_STREAMED}): training crop and evaluation centre-crop size")
    resize_size: int = _setting(256, "streamed datasets: the shorter side is resized to this before the centre crop")
    workers: int = _setting(4, "streamed datasets: DataLoader worker processes")
    decode: str = _setting("cpu", "streamed datasets: where training JPEGs are decoded: cpu (in the workers) or gpu "
                           "(the workers send the bytes; the device decodes and crops them in batches with "
                           "torchvision's decode_jpeg; needs CUDA and torchvision, else the CPU path runs and the log "
                           "says why)", ("cpu", "gpu"))
    # optimisation
    epochs: int = _setting(10, "passes over the training split; changing the epochs a --config file sets rescales its "
                           "warm-up, milestones and Lookahead start (unless given too), and the log says so")
    batch_size: int | str = _setting(128, "examples per step: 1 is SGD, `all` full-batch gradient descent (the exact "
                                     "mean gradient, accumulated over chunks of 1024; batch norm then normalises each "
                                     "chunk with its own statistics). Momentum applies unless --momentum 0")
    accumulate: int = _setting(1, "gradient accumulation: K batches of --batch-size per optimizer step, exactly one "
                               "step on a K× batch for models without batch norm (batch norm normalises each batch by "
                               "its own statistics); the schedule counts optimizer steps")
    optimizer: str = _setting("sgd", one_of(s.help for s in OPTIMIZERS.values()), tuple(OPTIMIZERS))
    lr: float | None = _setting(None, "learning rate α (default: the model family's recipe, scaled to the batch size)")
    momentum: float = _setting(0.9, "momentum β (sgd); 0 for plain SGD")
    nesterov: bool | None = _setting(None, "Nesterov momentum (sgd; default: the recipe's, on for ResNet)")
    weight_decay: float | None = _setting(None, "λ of the L2 penalty λ/2‖w‖² (sgd) or decoupled decay (adamw); "
                                          "default: the recipe's, 0 for linear models")
    decay_all: bool = _setting(False, "also decay biases and batch-norm parameters")
    norm_lr_scale: float = _setting(1.0, "lr multiplier for batch-norm parameters; their decay is divided by it, so "
                                    "the decay per step stays (speedrun: 64)")
    schedule: str | None = _setting(None, "learning-rate schedule (default: the recipe's); triangular rises linearly "
                                    "during the warm-up, then falls linearly to 0 (not PyTorch's cosine OneCycleLR; "
                                    "`onecycle` is read as triangular)",
                                    (None, "constant", "step", "cosine",
                                                                         "triangular"))
    milestones: list[int] = _setting([], "step schedule: epochs at which lr is multiplied by gamma")
    gamma: float = _setting(0.1, "step schedule factor")
    warmup_epochs: float = _setting(0.0, "linear warm-up length in epochs (triangular: the rising part; default 30 %)")
    label_smoothing: float | None = _setting(None, "label smoothing ε for the cross-entropy (default: the recipe's)")
    lookahead_epoch: int = _setting(0, "from this epoch on, every 5 steps pull the weights to their moving average "
                                    "(Lookahead; the average's decay rises to 0.95⁵ by the end); 0 = off")
    clip_grad_norm: float = _setting(0.0, "clip the gradients' global L2 norm to this before each optimizer step "
                                     "(after fp16 loss unscaling); metrics.csv's grad_norm logs the epoch's mean norm "
                                     "before clipping; 0 = off")
    ema_decay: float = _setting(0.0, "keep an exponential moving average of the weights and batch-norm statistics with "
                                "this decay (warmed up as min(D, (1+t)/(10+t)) over the first steps t), and validate, "
                                "test and save for eval/predict the averaged weights; 0 = off")
    init_from: str | None = _setting(None, "start from these weights: a run folder (its best.pt), a cnnlab checkpoint "
                                     "or a state dict such as torchvision's .pth; a classifier whose class count "
                                     "differs is replaced by a fresh one")
    freeze_backbone: bool = _setting(False, "train only the classifier (the last linear layer); the backbone's "
                                     "batch-norm layers keep their running statistics")
    head_lr_mult: float = _setting(1.0, "the classifier's learning rate is the lr times this (e.g. 10 when "
                                        "fine-tuning)")
    tta: str = _setting("none", "test-time augmentation for val/test: average logits over flips (and 1-pixel shifts)",
                        ("none", "flip", "flip-translate"))
    early_stop_metric: str | None = _setting(None, "stop early on val_loss or val_acc (default: off)",
                                             (None, "val_loss", "val_acc"))
    early_stop_delta: float = _setting(0.0, "ε: an epoch improves only if it beats the reference (see "
                                       "--early-stop-rule) by more than this")
    early_stop_patience: int = _setting(3, "epochs in a row without improvement before stopping")
    early_stop_rule: str = _setting("best", "improvement over the best value so far, or over the previous epoch (the "
                                    "seed's rule)", ("best", "previous"))
    # engine
    precision: str = _setting("auto", "auto (bf16 autocast where the CPU or GPU computes bf16 natively, fp16 autocast "
                              "with loss scaling on GPUs without bf16, else fp32), fp32, bf16 or fp16",
                              ("auto", "fp32", "bf16", "fp16"))
    compile: bool = _setting(False, "torch.compile the model")
    compile_mode: str = _setting("default", "torch.compile's mode, with --compile: default, reduce-overhead (CUDA "
                                 "graphs: each step's kernels replayed in one launch; CUDA only) or max-autotune "
                                 "(also times Triton kernels for the convolutions and matmuls: minutes to compile). "
                                 "With --static-shapes the model is compiled for fixed shapes (dynamic=False)",
                                 ("default", "reduce-overhead", "max-autotune"))
    cuda_graphs: str = _setting("auto", "capture the training step (forward, backward, SGD's update) as a CUDA graph "
                                "and replay it: one launch per step instead of hundreds. auto: on where it is safe "
                                "(one CUDA process, --static-shapes, SGD, no --accumulate, fp16 loss scaling, "
                                "clipping or --compile), else off; the log says which and why. on: refuse a run "
                                "where it is not safe", ("auto", "on", "off"))
    static_shapes: bool = _setting(False, "every batch the model sees has one shape: training skips each epoch's last "
                                   "partial batch (a different one each epoch; the log says how many images) and, on "
                                   "CUDA or with --compile, evaluation pads its last batch, leaving the padding out of "
                                   "every metric; a compiled model then never recompiles (speedrun: on)")
    threads: int | None = _setting(None, "CPU threads for PyTorch's kernels (default: every core this process may use)")
    deterministic: bool = _setting(False, "deterministic kernels (torch.use_deterministic_algorithms, no cuDNN "
                                   "autotuning): two runs with one seed give identical numbers, a little slower")
    autotune: bool = _setting(False, "let cuDNN time its convolution algorithms for each new shape (cudnn.benchmark): "
                              "seconds at the start of a run, and no faster on an H100 with bf16 channels_last "
                              "(BENCHMARKS.md); worth trying on long runs on other GPUs")
    sync_bn: bool = _setting(False, "under torchrun: batch-norm statistics over the global batch (SyncBatchNorm)")
    device: str = _setting("auto", "auto (CUDA, else Apple's MPS, else the CPU), cpu, cuda or mps",
                           ("auto", "cpu", "cuda", "mps"))
    seed: int = _setting(0, "seed for initialisation, split, shuffling and augmentation")
    out: str | None = _setting(None, "run folder (default: runs/<model>-<dataset>-<time>)")
    checkpoint_every: int = _setting(1, "write last.pt every N epochs")
    tensorboard: bool = _setting(False, "also write TensorBoard event files to RUN/tensorboard/ — every metrics.csv "
                                 "number per epoch, plus the training loss (under torchrun: rank 0's share of the "
                                 "batch) and lr every --tensorboard-every steps; view with `tensorboard --logdir "
                                 "runs`; needs `pip install 'cnnlab[tensorboard]'`")
    tensorboard_every: int = _setting(50, "--tensorboard: optimizer steps between the per-step scalars (training loss "
                                      "and lr); 0 = per epoch only")

    @property
    def full_batch(self) -> bool:
        """`--batch-size all`: full-batch gradient descent."""
        return self.batch_size == "all"

    @property
    def step_batch(self) -> int | str:
        """Examples per optimizer step: --batch-size × --accumulate, or `all` for full-batch gradient descent."""
        return "all" if self.full_batch else self.batch_size * self.accumulate

    def validate(self) -> "TrainConfig":
        """Each setting against its own rules (ranges, choices, combinations); see the module's docstring for the
        model's and the dataset's names."""
        def need(ok, name, allowed):
            if not ok:
                raise not_allowed(name, getattr(self, name), allowed)

        need(self.image_size >= 1 and self.resize_size >= self.image_size, "resize_size",
             "use a size ≥ --image-size")
        need(self.workers >= 0, "workers", "use an integer ≥ 0")
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices:
                need(getattr(self, f.name) in choices, f.name,
                     "choose one of: " + ", ".join(str(c) for c in choices if c is not None))
        need(self.epochs >= 1, "epochs", "use a positive integer")
        need(self.batch_size == "all" or (isinstance(self.batch_size, int) and self.batch_size >= 1), "batch_size",
             "use a positive integer or `all`")
        for name in ("lr", "weight_decay", "early_stop_delta", "warmup_epochs", "cutout", "lookahead_epoch", "mixup",
                     "cutmix"):
            value = getattr(self, name)
            need(value is None or isinstance(value, (int, float)) and math.isfinite(value) and value >= 0, name,
                 "use a finite number ≥ 0")
        need(self.lr is None or 0 < self.lr <= 1e6, "lr", "use a number in (0, 1e6]")
        need(isinstance(self.accumulate, int) and self.accumulate >= 1, "accumulate", "use a positive integer")
        need(self.compile or self.compile_mode == "default", "compile_mode", "give --compile too")
        need(self.cuda_graphs != "on" or not self.compile, "cuda_graphs",
             "torch.compile makes its own CUDA graphs (--compile-mode reduce-overhead); drop one of the two")
        need(self.cuda_graphs != "on" or self.device in ("auto", "cuda"), "cuda_graphs",
             f"CUDA graphs need --device cuda, not {self.device}; use --cuda-graphs auto or off")
        need(not (self.static_shapes and self.full_batch), "static_shapes",
             "--batch-size all adds up every example's gradient, so no batch can be skipped; drop --static-shapes")
        need(self.accumulate == 1 or not self.full_batch, "accumulate",
             "--batch-size all already adds up the whole training set's gradient in one step; drop --accumulate")
        need(math.isfinite(self.clip_grad_norm) and self.clip_grad_norm >= 0, "clip_grad_norm",
             "use a norm > 0, or 0 for no clipping")
        need(0 <= self.ema_decay < 1, "ema_decay", "use a decay in (0, 1) such as 0.999, or 0 for no averaging")
        need(math.isfinite(self.head_lr_mult) and self.head_lr_mult > 0, "head_lr_mult",
             "use a positive factor such as 10 (1 = the same lr as the backbone)")
        need(isinstance(self.seed, int) and 0 <= self.seed < 2**63, "seed", "use an integer in [0, 2**63)")
        need(self.warmup_epochs <= self.epochs, "warmup_epochs", "use at most --epochs")
        need(0 <= self.momentum < 1, "momentum", "use a number in [0, 1)")
        need(self.label_smoothing is None or 0 <= self.label_smoothing < 1, "label_smoothing",
             "use a number in [0, 1)")
        need(0 <= self.val_split < 1, "val_split", "use a fraction in [0, 1)")
        need(0 < self.gamma <= 1, "gamma", "use a number in (0, 1]")
        need(0 < self.mix_prob <= 1, "mix_prob", "use a number in (0, 1]")
        need(1 <= self.randaugment_n <= 16, "randaugment_n", "use an integer from 1 to 16")
        need(0 <= self.randaugment_m <= 30, "randaugment_m", "use an integer from 0 to 30 (magnitude bins)")
        need(isinstance(self.norm_lr_scale, (int, float)) and 0 < self.norm_lr_scale <= 1e6, "norm_lr_scale",
             "use a number in (0, 1e6]")
        need(self.early_stop_patience >= 1, "early_stop_patience", "use a positive integer")
        need(self.subset is None or self.subset >= 2, "subset", "use an integer ≥ 2")
        need(self.test_subset is None or self.test_subset >= 1, "test_subset", "use a positive integer")
        need(self.threads is None or 1 <= self.threads <= 4096, "threads", "use a positive integer")
        need(self.checkpoint_every >= 1, "checkpoint_every", "use a positive integer")
        need(isinstance(self.tensorboard_every, int) and self.tensorboard_every >= 0, "tensorboard_every",
             "use an integer ≥ 0 (0 = per epoch only)")
        need(not self.nesterov or self.momentum > 0, "nesterov", "Nesterov needs --momentum > 0")
        need(self.early_stop_metric is None or self.val_split > 0, "early_stop_metric",
             "early stopping needs a validation split (--val-split > 0)")
        return self

    # -- TOML ----------------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict, origin: str = "config") -> "TrainConfig":
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise CnnlabError(f"{origin}: unknown setting {unknown[0]!r}; known settings: {', '.join(known)}")
        config = cls()
        for name, value in values.items():
            setattr(config, name, coerce(known[name], value, origin))
        return config

    @classmethod
    def from_toml(cls, path) -> "TrainConfig":
        return cls.from_dict(read_toml(path), str(path))

    def to_toml(self) -> str:
        lines = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                lines.append(f"# {f.name} = (default)")
            else:
                lines.append(f"{f.name} = {_toml_value(value)}")
        return "\n".join(lines + [END_OF_CONFIG]) + "\n"


def not_allowed(name: str, value, allowed: str) -> CnnlabError:
    """The error for a setting whose value breaks its rule: the flag, the value, and what it allows."""
    return CnnlabError(f"--{name.replace('_', '-')} {value!r} is not allowed; {allowed}")


def read_toml(path, kind: str = "config file") -> dict:
    """A TOML file's tables as TOML gives them; an unreadable file is one CnnlabError line naming `kind`.
    Checking them is the caller's business: TrainConfig is strict, a report compares, a sweep plans."""
    path = Path(path)
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CnnlabError(f"{kind} {path} does not exist") from None
    except IsADirectoryError:
        raise CnnlabError(f"{kind} {path} is a folder; pass a .toml file") from None
    except OSError as e:
        raise CnnlabError(f"cannot read {kind} {path} ({e.strerror or e})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise CnnlabError(f"{path} is not valid TOML ({e})") from None
    if kind != "config file":
        return values
    values.pop("cnnlab", None)  # provenance table written by to_toml
    return values


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    # JSON's escapes are valid in TOML basic strings; TOML also forbids a raw DEL.
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")


def coerce(f, value, origin: str):
    """Turn a TOML or command-line value into the field's type; one clear line if it does not fit."""
    kind = f.type.__name__ if isinstance(f.type, type) else str(f.type)  # "float", "list[int] | None"…
    try:
        if value is None:
            return None
        if "list[int]" in kind:
            if isinstance(value, str):
                value = [v for v in value.replace(" ", "").split(",") if v]
            return [int(v) for v in value]
        if "bool" in kind:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            if not isinstance(value, bool):
                raise ValueError
            return value
        if f.name == "batch_size":
            return "all" if value == "all" else _int(value)
        if f.name == "schedule" and value == "onecycle":
            return "triangular"  # its old name, in config files written before the rename
        if "int" in kind and "float" not in kind:
            return _int(value)
        if "float" in kind:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        expected = {"int | str": "positive integer or `all`", "list[int] | None": "list of integers such as 256,128",
                    "list[int]": "list of integers such as 30,60", "int": "integer", "int | None": "integer",
                    "float": "number", "float | None": "number", "bool": "true or false",
                    "bool | None": "true or false"}.get(kind, kind.replace(" | None", ""))
        raise CnnlabError(f"{origin}: {f.name} = {value!r} is not a valid {expected}") from None


def _int(value) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError
    return int(value)


# Settings that name a position in the run's schedule, in epochs (early-stopping patience counts epochs too, but
# it is a length of waiting, not a place in the schedule).
EPOCH_POSITIONS = ("warmup_epochs", "milestones", "lookahead_epoch")


def fit_to_epochs(file: dict, given: dict, source: str = "the config's") -> tuple[dict, list[str]]:
    """Rescale the schedule positions a config file wrote for its own epochs when `given` (what the user set on top
    of the file: flags, a sweep's --set) changes the epochs; return ({setting: new value}, one note per change).

    Each position is multiplied by given epochs / file epochs, both ways (a longer run keeps the schedule's shape as
    a shorter one does): warm-up 2.3 of 10 → 0.23 of 1 (4 significant digits); milestones [30, 60] of 90 →
    [10, 20] of 30, rounded half up but not below 1, duplicates merged and those ≥ the epochs dropped (they would
    never apply); Lookahead, which starts with epoch `lookahead_epoch` (1-based; 0 = off), keeps the share of the
    run before it: the epochs before it are rescaled and rounded half up, and it is switched off (0) when that
    leaves no epoch for it. Nothing changes when the file does not set `epochs` itself (its positions were not
    written for a run length), nor a setting `given` sets too: the user's own value is kept, and validate() names it
    if it does not fit. Values of the wrong type are left for validate() too.
    """
    if "epochs" not in file or "epochs" not in given:
        return {}, []
    try:
        old = TrainConfig.from_dict({k: file[k] for k in ("epochs", *EPOCH_POSITIONS) if k in file})
        epochs = TrainConfig.from_dict({"epochs": given["epochs"]}).epochs
    except CnnlabError:
        return {}, []
    if epochs == old.epochs or epochs < 1 or old.epochs < 1:
        return {}, []

    def scaled(value):
        return value * epochs / old.epochs

    milestones = {max(1, _half_up(scaled(m))) if m >= 1 else m for m in old.milestones}
    before_lookahead = _half_up(scaled(old.lookahead_epoch - 1))  # whole epochs trained before it starts
    new = {"warmup_epochs": float(f"{scaled(old.warmup_epochs):.4g}"),
           "milestones": sorted(m for m in milestones if m < epochs),
           "lookahead_epoch": before_lookahead + 1 if old.lookahead_epoch and before_lookahead < epochs else 0}
    changes = {k: v for k, v in new.items() if k in file and k not in given and v != getattr(old, k)}
    how = f"{source} {old.epochs} epochs {'shortened' if epochs < old.epochs else 'lengthened'} to {epochs}"
    notes = [f"{k} {getattr(old, k)} → {v} ({'off: ' if k == 'lookahead_epoch' and not v else ''}{how})"
             for k, v in changes.items()]
    return changes, notes


def _half_up(x: float) -> int:
    return math.floor(x + 0.5)  # not round(): its ties go to the even number, 0.5 → 0 but 1.5 → 2
