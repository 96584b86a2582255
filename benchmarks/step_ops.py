"""Operators dispatched per training step: cnnlab's speedrun and ResNet-18 steps against a minimal step.

On a big GPU a small model's step is bound by how many kernels it launches, not by arithmetic (issue 26: the
speedrun step took as long at batch 1024 as at 512). Every kernel is an ATen operator dispatched from Python, so
counting operators on the CPU — exactly, with a TorchDispatchMode, no GPU needed — counts the launches to come.

cnnlab's count is of its real training loop: `cnnlab.engine.fit` trains a run of the preset on a small generated
image folder (32×32, the CIFAR-10 classes) for 2 epochs, and the 2nd epoch's `train_one_epoch` is counted whole —
loader, forward and backward, optimizer, schedule, Lookahead, metric sums — and divided by its steps. Each operator
goes to the part of the step it ran in. The minimal step, written here, is what any training step must do: one
gather of an already normalised resident batch, forward, loss, backward, one fused optimizer step, under the same
precision and memory format as cnnlab's run.

    python benchmarks/step_ops.py            # speedrun-cifar10 and resnet18
    python benchmarks/step_ops.py --quick    # the same (the count needs only a few steps)

Prints `ops per step: cnnlab N, minimal M, ratio R` per model, and where cnnlab's extra operators go. Target
(issue 26): ratio ≤ 1.15 for both — printed, never enforced. Exits 1 only on a wrong result: a run that fails, a
count of zero, or a minimal step whose loss is not finite.
"""

import collections
import contextlib
import dataclasses
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

import cnnlab.engine as engine
from cnnlab.averaging import Lookahead
from cnnlab.config import TrainConfig
from cnnlab.data.loader import DeviceLoader
from cnnlab.models import create_model
from cnnlab.presets import preset_path
from common import cpu_name, exit_if_wrong, parser

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
BATCH, PER_CLASS = 64, 64  # 640 training images: 10 steps an epoch, two of them with a Lookahead pull
TARGET = 1.15


class Counter(TorchDispatchMode):
    """Counts every ATen operator dispatched while active, under the label of the part of the step running."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()
        self.part = "bookkeeping"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[self.part] += 1
        return func(*args, **(kwargs or {}))

    @contextlib.contextmanager
    def labelled(self, part: str):
        outer, self.part = self.part, part
        try:
            yield
        finally:
            self.part = outer


def write_images(root: Path) -> Path:
    """root/{train,test}/<class>/<i>.png: random 32×32 images, PER_CLASS per training class, 2 per test class."""
    rng = np.random.default_rng(0)
    for split, n in (("train", PER_CLASS), ("test", 2)):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / split / name / f"{i}.png")
    return root


@contextlib.contextmanager
def counting_epoch(counter: Counter, epoch: int, result: dict):
    """While active, `engine.fit` counts epoch `epoch`'s training pass in `counter` (its steps go to `result`)."""
    patched = {}

    def patch(owner, name, wrapper):
        patched[(owner, name)] = getattr(owner, name)
        setattr(owner, name, wrapper(getattr(owner, name)))

    def in_part(part):
        def wrapper(fn):
            def run(*args, **kwargs):
                with counter.labelled(part):
                    return fn(*args, **kwargs)
            return run
        return wrapper

    def loader_iter(fn):
        def run(self):
            batches = fn(self)
            while True:
                with counter.labelled("loader"):
                    batch = next(batches, None)
                if batch is None:
                    return
                yield batch
        return run

    def epoch_pass(fn):
        def run(setup, state, stop, e):
            if e != epoch:
                return fn(setup, state, stop, e)
            with counter:
                sums, done = fn(setup, state, stop, e)
            result["steps"] = done
            return sums, done
        return run

    patch(engine, "train_one_epoch", epoch_pass)
    patch(engine, "forward_backward", in_part("forward + backward"))
    patch(engine, "optimizer_step", in_part("optimizer + schedule"))
    patch(Lookahead, "step", in_part("Lookahead"))
    patch(DeviceLoader, "__iter__", loader_iter)
    try:
        yield
    finally:
        for (owner, name), original in patched.items():
            setattr(owner, name, original)


def cnnlab_count(config: TrainConfig) -> tuple[float, dict, dict]:
    """(ops per step, ops per step by part, the run's summary) of epoch 2 of `config`'s run."""
    counter, result = Counter(), {}
    with counting_epoch(counter, 2, result):
        run = engine.fit(config)
    summary = __import__("json").loads((run.path / "summary.json").read_text())
    steps = result.get("steps", 0)
    if not steps:
        return 0.0, {}, summary
    return sum(counter.ops.values()) / steps, {k: v / steps for k, v in counter.ops.items()}, summary


def minimal_count(config: TrainConfig, summary: dict, steps: int = 10) -> tuple[float, dict, float]:
    """(ops per step, by part, last loss) of the minimal step with the model, precision and memory format of the
    run that produced `summary`."""
    torch.manual_seed(0)
    model = create_model(config.model, 10, **({"hidden": config.hidden} if config.hidden else {}))
    memory_format = torch.channels_last if summary["channels_last"] else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    images = torch.randn(PER_CLASS * 10, 3, 32, 32).to(memory_format=memory_format)  # resident, normalised
    labels = torch.randint(0, 10, (len(images),))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4,
                                fused=True)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(summary["precision"])
    autocast = torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()
    counter, loss = Counter(), torch.tensor(float("nan"))

    def step(idx):
        with counter.labelled("loader"):
            x, y = images[idx], labels[idx]
        with counter.labelled("forward + backward"):
            with autocast:
                loss = F.cross_entropy(model(x).float(), y, label_smoothing=0.2)
            loss.backward()
        with counter.labelled("optimizer + schedule"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    model.train()
    order = torch.randperm(len(images))
    step(order[:BATCH])  # the first step creates the momentum buffers: not a steady-state step
    with counter:
        for s in range(steps):
            loss = step(order[s * BATCH % len(images):][:BATCH])
    return sum(counter.ops.values()) / steps, {k: v / steps for k, v in counter.ops.items()}, loss.item()


CONFIGS = {
    # The speedrun preset as it is, shrunk to the generated folder: Lookahead from the first epoch so the counted
    # epoch pulls as a late speedrun epoch does (every 5th step).
    "speedrun-cifar10": lambda root, out: dataclasses.replace(
        TrainConfig.from_toml(preset_path("speedrun-cifar10")), data=str(root), batch_size=BATCH, epochs=2,
        lookahead_epoch=1, warmup_epochs=0.5, device="cpu", out=str(out / "speedrun"),
        cache_dir=str(out / "cache")),
    "resnet18": lambda root, out: TrainConfig(
        model="resnet18", dataset="cifar10", data=str(root), batch_size=BATCH, epochs=2, val_split=0.0,
        device="cpu", out=str(out / "resnet18"), cache_dir=str(out / "cache")),
}


def main() -> None:
    cli = parser(__doc__)
    cli.add_argument("--quick", action="store_true", help="the same counts (accepted for `make bench`)")
    cli.parse_args()
    print(f"machine: CPU ({cpu_name()}), {os.cpu_count()} cores; Python {platform.python_version()}, "
          f"torch {torch.__version__}; counts are exact, not timings")
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        root = write_images(Path(tmp) / "images")
        for name, make in CONFIGS.items():
            config = make(root, Path(tmp))
            ops, parts, summary = cnnlab_count(config)
            minimal, minimal_parts, loss = minimal_count(config, summary)
            if not ops or not minimal or not np.isfinite(loss):
                problems.append(f"{name}: nothing counted (cnnlab {ops}, minimal {minimal}, loss {loss})")
                continue
            print(f"{name} ({summary['precision']}, {'channels_last' if summary['channels_last'] else 'NCHW'}), "
                  f"batch {BATCH}: ops per step: cnnlab {ops:.0f}, minimal {minimal:.0f}, ratio {ops / minimal:.2f} "
                  f"(target ≤ {TARGET}: {'met' if ops / minimal <= TARGET else 'missed'})")
            for part in sorted(set(parts) | set(minimal_parts), key=lambda p: -parts.get(p, 0)):
                print(f"    {part:<22} cnnlab {parts.get(part, 0):6.1f}   minimal {minimal_parts.get(part, 0):6.1f}")
    exit_if_wrong(problems)


if __name__ == "__main__":
    sys.exit(main())
