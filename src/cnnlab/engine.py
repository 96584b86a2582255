"""One plain training loop: `fit` prepares, then calls `train_one_epoch` and `evaluate` once per epoch.

The few things that vary are small objects the loop calls: EarlyStopping, the run folder, the checkpoint writer.
"""

import contextlib
import math
import os
import sys
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from cnnlab import distributed
from cnnlab.averaging import Lookahead
from cnnlab.checkpoint import load_checkpoint
from cnnlab.config import TrainConfig
from cnnlab.data.loader import DeviceLoader
from cnnlab.distributed import Dist, any_true, barrier, broadcast
from cnnlab.errors import CnnlabError
from cnnlab.early_stopping import EarlyStopping
from cnnlab.interrupt import StopRequest
from cnnlab.metrics import Sums
from cnnlab.models import count_params, create_model, model_info
from cnnlab.optim import build_optimizer, build_scheduler
from cnnlab.progress import Progress
from cnnlab.tta import tta_logits
from cnnlab.runs import METRIC_COLUMNS, TOP5_COLUMNS, RunFolder, default_run_path, environment
from cnnlab.prepare import Data, build_data, model_options, resolve_data, resolve_device

DIST_STOP_CHECK_EVERY = 16  # steps between the ranks' checks for a stop request (SIGINT/SIGTERM)
INIT_IMAGES = 5000  # training images a model's init_from_data sees (speednet's patch statistics)


def loss_fn(task: str, label_smoothing: float = 0.0):
    if task == "regression":
        return lambda out, y: 0.5 * (out - y).square().mean()  # the seed's ½(ŷ − y)², averaged
    return lambda out, y: F.cross_entropy(out, y, label_smoothing=label_smoothing)


def train_one_epoch(model, data: Data, optimizer, scheduler, criterion, autocast, config: TrainConfig, epoch: int,
                    stop: StopRequest, sums: Sums, log, first_batch: int = 0, bad_step=None, d: Dist = Dist(),
                    lookahead: Lookahead | None = None):
    """One pass over the training loader. Returns the index of the next batch (len(loader) when complete).

    With several processes each holds a shard of every global batch. Its mean loss is weighted by
    shard size × processes / global batch size, so DDP's average over processes is the global batch's mean.
    """
    model.train()
    full = config.full_batch
    loader = data.train
    progress = Progress(len(loader), epoch, config.epochs, log)
    step = first_batch
    if full:
        optimizer.zero_grad(set_to_none=True)
    for step, (x, y) in enumerate(loader, start=first_batch):
        with autocast:
            out = model(x)
            loss = criterion(out.float(), y)
        if full:
            # Weight each chunk by its share so the summed gradient is the exact mean over the training set.
            (loss * (len(y) * d.world_size / data.n_train)).backward()
        else:
            first, end = loader.bounds(step)
            global_n = end - first
            optimizer.zero_grad(set_to_none=True)
            (loss * (len(y) * d.world_size / global_n)).backward()
            optimizer.step()
            scheduler.step()
            if lookahead is not None:
                lookahead.step(scheduler.last_epoch)
        sums.add(loss, out.float(), y, data.task)
        if bad_step is not None:
            bad_step.copy_(torch.where((bad_step < 0) & ~torch.isfinite(loss), step, bad_step))
        progress.update(sums.n, sums)
        # Under torchrun agreeing on a stop costs an all-reduce and a host sync, so ranks confer every few steps.
        confer = not d.enabled or (step + 1) % DIST_STOP_CHECK_EVERY == 0
        if not full and confer and any_true(stop.check(epoch, step + 1), d, loss.device):
            progress.close()
            return step + 1
    if full:
        optimizer.step()
        scheduler.step()
        if lookahead is not None:
            lookahead.step(scheduler.last_epoch)
    progress.close()
    return len(loader)


@torch.no_grad()
def evaluate(model, loader: DeviceLoader, task: str, num_classes: int, autocast=nullcontext(),
             return_predictions: bool = False, d: Dist = Dist(), tta: str = "none"):
    """Mean loss (plain cross-entropy or ½ squared error), top-1 and top-5 over a loader (all processes' shards),
    optionally of the logits averaged over test-time views (`tta_logits`)."""
    model.eval()
    sums = Sums(loader.device, d)
    criterion = loss_fn(task)
    predictions = []
    for x, y in loader:
        with autocast:
            out = tta_logits(model, x, tta).float()
        sums.add(criterion(out, y), out, y, task)
        if return_predictions:
            predictions.append(out.argmax(1).cpu())
    result = sums.result(task, num_classes)
    if return_predictions:
        return result, torch.cat(predictions)
    return result


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
    rest = data.train.merged_rest
    if rest:
        data.notes["merged_last_batch"] = rest


def describe_method(config: TrainConfig, data: Data) -> str:
    """The optimisation method in the seed's words, so that e.g. `--batch-size all` with the default momentum is
    not mistaken for plain gradient descent."""
    if config.full_batch:
        method = f"full-batch gradient descent (the exact mean gradient over all {data.n_train} examples)"
    elif config.batch_size == 1:
        method = "stochastic gradient descent (one example per step)"
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
    rest = data.notes.get("merged_last_batch")
    if rest:
        line += (f"; the last batch of each epoch would hold {rest} image{'s' if rest > 1 else ''}, too few for "
                 f"batch norm, so it joins the batch before it ({data.train.batch_size + rest} images)")
    return line


def _checkpoint_state(model, optimizer, scheduler, early, data: Data, config: TrainConfig, options: dict,
                      epoch: int, best: dict, position: dict | None = None, lookahead: Lookahead | None = None) -> dict:
    state = {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "early_stopping": early.state_dict() if early else None,
        "lookahead": lookahead.state_dict() if lookahead else None,
        "rng": {"torch": torch.get_rng_state(), "loader": data.train.state_dict(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "epoch": epoch, "best": best, "config": _plain(vars(config)), "model_options": _plain(options),
        "classes": list(data.classes), "task": data.task, "image_shape": list(data.image_shape),
        "mean": data.mean, "std": data.std, "position": position,
    }
    return state


def _plain(d: dict) -> dict:
    """Only what weights_only loading accepts: numbers, strings, bools, None, lists (a Path becomes its string)."""
    return {k: (list(v) if isinstance(v, tuple) else os.fspath(v) if isinstance(v, os.PathLike) else v)
            for k, v in d.items()}


def _say(run: RunFolder | None, line: str, err: bool = False) -> None:
    if run is not None and run.readonly:  # other ranks stay quiet: one log per job
        return
    print(line, file=sys.stderr if err else sys.stdout, flush=True)
    if run is not None:
        run.log(line)


def fit(config: TrainConfig | None, resume: str | None = None, should_stop=None) -> RunFolder:
    """Train `config` into its run folder, or continue the run in `resume` (config may then carry new epochs).

    The run folder is locked for the whole run; a new one is created only after data and model are built, so
    bad input leaves nothing behind.
    """
    d = distributed.setup(config.device if config is not None else "auto")
    try:
        return _fit(config, resume, should_stop, d)
    finally:
        distributed.teardown()


def _fit(config, resume, should_stop, d: Dist) -> RunFolder:
    with contextlib.ExitStack() as stack:
        run, checkpoint, rewrite_config = None, None, False
        if resume:
            run = RunFolder.open(resume)
            if d.is_main:  # rank 0 is the only writer, so the only one that needs the lock
                stack.enter_context(run.lock())
            else:
                run.readonly = True
            checkpoint = load_checkpoint(run.file("last.pt"))
            missing = [k for k in ("model", "optimizer", "scheduler", "rng", "epoch", "position") if k not in checkpoint]
            if missing:
                raise CnnlabError(f"{run.file('last.pt')} is not a cnnlab checkpoint for training "
                                  f"(no {missing[0]!r}); it cannot be resumed")
            epochs = config.epochs if config is not None else None
            config = run.config()
            if epochs is not None and epochs != config.epochs:
                config.epochs = epochs
                rewrite_config = True  # written by _train once the run's files have passed their checks
        resolve_data(config.validate())
        device = resolve_device(config.device)
        if device.type == "cuda" and d.enabled:
            device = torch.device("cuda", d.local_rank)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels once
        torch.manual_seed(config.seed)
        wall_start = time.perf_counter()
        data = build_data(config, device, d=d)
        options = model_options(config, data.image_shape, len(data.classes) or 1, data.task)
        try:
            model = create_model(**options).to(device)
        except (MemoryError, RuntimeError) as e:  # e.g. --hidden 100000000000
            raise CnnlabError(f"cannot build {options['name']}: not enough memory for its layers "
                              f"({str(e).splitlines()[0][:80]}); use smaller --hidden sizes or another model") from None
        if has_batch_norm(model):
            guard_batch_norm(config, data, d)
        if checkpoint is None and hasattr(model, "init_from_data"):
            if not hasattr(data.train, "first_images"):
                raise CnnlabError(f"{options['name']} sets its first layer from training images held in memory; "
                                  f"{config.dataset} is streamed from disk, so use another model for it")
            start = time.perf_counter()
            model.init_from_data(data.train.first_images(INIT_IMAGES))  # e.g. speednet's whitening filters
            data.notes["init_seconds"] = round(time.perf_counter() - start, 4)
        if device.type == "cuda" and model_info(options["name"]).family in ("vgg", "resnet", "speednet"):
            model = model.to(memory_format=torch.channels_last)
        if config.sync_bn and d.enabled:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if run is None:
            config.out = broadcast(config.out or default_run_path(config), d)  # one folder, named by rank 0
            if d.is_main:
                run = stack.enter_context(RunFolder.create(config).lock())
            else:
                run = RunFolder(config.out, readonly=True)
        return _train(config, run, checkpoint, should_stop, device, wall_start, data, options, model,
                      rewrite_config, d)


def _train(config, run, checkpoint, should_stop, device, wall_start, data, options, model,
           rewrite_config=False, d: Dist = Dist()) -> RunFolder:
    train_model = model
    if d.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    train_model = torch.compile(train_model) if config.compile else train_model
    optimizer = build_optimizer(model, config)
    steps_per_epoch = 1 if config.full_batch else len(data.train)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)
    tta = config.tta if data.task == "classification" else "none"
    criterion = loss_fn(data.task, config.label_smoothing)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
    early = (EarlyStopping(config.early_stop_metric, config.early_stop_delta, config.early_stop_patience,
                           config.early_stop_rule) if config.early_stop_metric else None)
    lookahead = (Lookahead(model, (config.lookahead_epoch - 1) * steps_per_epoch, config.epochs * steps_per_epoch)
                 if config.lookahead_epoch else None)
    monitor = config.early_stop_metric or ("val_acc" if data.task == "classification" else "val_loss")
    best = {"metric": monitor, "value": None, "epoch": None}
    start_epoch, position = 1, None
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if early and checkpoint["early_stopping"]:
            early.load_state_dict(checkpoint["early_stopping"])
        if lookahead and checkpoint.get("lookahead"):
            lookahead.load_state_dict(checkpoint["lookahead"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        loader_state = checkpoint["rng"]["loader"]
        data.train.load_state_dict(loader_state if isinstance(loader_state, dict) else {"generator": loader_state})
        if checkpoint["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
        best = checkpoint["best"]
        position = checkpoint["position"]
        start_epoch = checkpoint["epoch"] + 1
        run.truncate_metrics(checkpoint["epoch"])
        if rewrite_config and not run.readonly:
            run.file("config.toml").write_text(config.to_toml(), encoding="utf-8")
        _say(run, f"resuming {run.path} after epoch {checkpoint['epoch']}"
             + (f", inside epoch {position['epoch']} at step {position['batch']}" if position else ""))
    else:
        _say(run, f"training {options['name']} ({count_params(model):,} parameters) on {config.dataset}: "
             f"{data.n_train} train / {data.val.num_examples if data.val else 0} val / "
             f"{data.test.num_examples} test, {device} → {run.path}")
        _say(run, describe_method(config, data))

    columns = METRIC_COLUMNS + (TOP5_COLUMNS if len(data.classes) > 10 else [])
    num_classes = len(data.classes)
    stop_reason, last_epoch = "completed all epochs", start_epoch - 1
    bad_step = torch.full((), -1, device=device, dtype=torch.int64)
    with StopRequest(should_stop) as stop:
        for epoch in range(start_epoch, config.epochs + 1):
            sums = Sums(device, d)
            first_batch = 0
            if position is not None:
                data.train.resume_from(position["order"], position["batch"])
                sums.load(position["sums"])
                first_batch, position = position["batch"], None
            epoch_start = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            done = train_one_epoch(train_model, data, optimizer, scheduler, criterion, autocast, config, epoch,
                                   stop, sums, lambda line: _say(run, line), first_batch, bad_step, d, lookahead)
            if any_true(int(bad_step) >= 0 or not math.isfinite(float(sums.loss)), d, device):
                stop_reason = (f"loss became NaN or infinite in epoch {epoch} (step {int(bad_step) + 1}); "
                               "the last good checkpoint is kept — lower the learning rate (--lr) and try again")
                _say(run, stop_reason, err=True)
                break
            if done < len(data.train):  # interrupted inside the epoch: save the position and leave
                position = {"epoch": epoch, "batch": done, "order": data.train.order.cpu(), "sums": sums.state()}
                run.save_checkpoint(_checkpoint_state(model, optimizer, scheduler, early, data, config, options,
                                                      epoch - 1, best, position, lookahead), "last.pt")
                _say(run, f"stopped by {stop.signal_name} in epoch {epoch} after step {done}; checkpoint saved. "
                     f"Resume with: cnnlab train --resume {run.path}", err=True)
                raise SystemExit(130)
            if lookahead is not None:
                lookahead.end_epoch()  # evaluation and checkpoints see the averaged weights
            train_result = sums.result(data.task, num_classes)  # waits for the GPU: the epoch's time is real
            train_seconds = time.perf_counter() - epoch_start
            val_result = evaluate(model, data.val, data.task, num_classes, autocast, d=d, tta=tta) if data.val else {}
            row = {"epoch": epoch, "train_loss": train_result["loss"], "train_acc": train_result.get("acc"),
                   "train_top5": train_result.get("top5"), "val_loss": val_result.get("loss"),
                   "val_acc": val_result.get("acc"), "val_top5": val_result.get("top5"), "lr": lr,
                   "epoch_seconds": time.perf_counter() - epoch_start,
                   "images_per_second": train_result["n"] / train_seconds, "step": scheduler.last_epoch}
            if not run.readonly:
                row["elapsed_seconds"] = row["epoch_seconds"] + sum(float(r["epoch_seconds"]) for r in run.metrics())
            run.append_metrics(row, columns)
            last_epoch = epoch
            _say(run, f"epoch {epoch}/{config.epochs}  train loss {row['train_loss']:.4f}"
                 + (f" acc {row['train_acc']:.4f}" if row["train_acc"] is not None else "")
                 + (f"  val loss {row['val_loss']:.4f}" if val_result else "")
                 + (f" acc {row['val_acc']:.4f}" if row["val_acc"] is not None else "")
                 + f"  {row['images_per_second']:.0f} img/s  {row['epoch_seconds']:.1f} s")
            value = row.get(monitor) if data.val else None
            improved = value is None or best["value"] is None or (
                value < best["value"] if monitor == "val_loss" else value > best["value"])
            if improved:
                best = {"metric": monitor, "value": value, "epoch": epoch}
            stop_now, reason = early.step(value, epoch) if early else (False, "")
            interrupted = not stop_now and any_true(stop.check(epoch, None), d, device)
            write_last = (epoch % config.checkpoint_every == 0 or stop_now or interrupted
                          or epoch == config.epochs)  # an interrupted run resumes from this epoch, not an older one
            # Without a validation split every epoch "improves": best.pt then goes with last.pt, not every epoch.
            write_best = improved and (data.val is not None or write_last)
            if write_best or write_last:
                state = _checkpoint_state(model, optimizer, scheduler, early, data, config, options, epoch, best,
                                          lookahead=lookahead)
            if write_best:
                run.save_checkpoint(state, "best.pt")
            if write_last:
                run.save_checkpoint(state, "last.pt")
            if stop_now:
                stop_reason = f"early stopping after epoch {epoch}: {reason}"
                _say(run, stop_reason)
                break
            if interrupted:
                _say(run, f"stopped by {stop.signal_name} after epoch {epoch}; checkpoint saved. "
                     f"Resume with: cnnlab train --resume {run.path}", err=True)
                raise SystemExit(130)
    finish(run, config, model, data, options, best, stop_reason, last_epoch, time.perf_counter() - wall_start,
           device, autocast, d)
    return run


def finish(run, config, model, data, options, best, stop_reason, epochs_run, wall, device, autocast,
           d: Dist = Dist()) -> dict:
    """Evaluate the best checkpoint once on the test split; write summary.json and curves.png."""
    summary = {"model": options["name"], "dataset": config.dataset, "parameters": count_params(model),
               "epochs_run": epochs_run, "stop_reason": stop_reason, "best_metric": best["metric"],
               "best_value": best["value"], "best_epoch": best["epoch"], "seed": config.seed,
               "val_size": data.notes.get("val_size"), "test_size": data.test.num_examples,
               "test_subset": config.test_subset, "wall_seconds": round(wall, 2)}
    rows = run.metrics()
    if rows:
        # All images over all training seconds (a harmonic mean): a slow first epoch counts for its real time.
        ips = [float(r["images_per_second"]) for r in rows if r["images_per_second"]]
        summary["images_per_second"] = round(len(ips) / sum(1 / v for v in ips), 1)
        # Training time proper: the epochs (with their validation passes), not data loading, checkpoints or plots.
        summary["train_seconds"] = round(sum(float(r["epoch_seconds"]) for r in rows), 4)
    if "init_seconds" in data.notes:
        summary["init_seconds"] = data.notes["init_seconds"]
    barrier(d)  # rank 0 has written best.pt
    if run.file("best.pt").is_file():
        model.load_state_dict(load_checkpoint(run.file("best.pt"), device)["model"])
        start = time.perf_counter()
        test = evaluate(model, data.test, data.task, len(data.classes), autocast, d=d,
                        tta=config.tta if data.task == "classification" else "none")
        summary.update({"test_loss": test["loss"], "test_top1": test.get("acc"), "test_top5": test.get("top5"),
                        "test_seconds": round(time.perf_counter() - start, 4), "tta": config.tta})
        if options["name"] == "linreg" and "true_w" in data.notes:
            w = model.linear.weight.detach().cpu().flatten().tolist()
            b = float(model.linear.bias.detach().cpu())
            summary.update({"learned_w": w, "learned_b": b, "true_w": data.notes["true_w"],
                            "true_b": data.notes["true_b"],
                            "w_error": max(abs(a - t) for a, t in zip(w, data.notes["true_w"])),
                            "b_error": abs(b - data.notes["true_b"])})
    summary.update(environment(device))
    run.write_summary(summary)
    if rows and not run.readonly:
        from cnnlab.report.curves import save_curves

        save_curves(rows, run.file("curves.png"), title=f"{options['name']} on {config.dataset}")
    test_text = (f"test top-1 {summary['test_top1']:.4f}" if summary.get("test_top1") is not None
                 else f"test loss {summary.get('test_loss', float('nan')):.6f}")
    best_text = (f"best {best['metric']} {best['value']:.4f} at epoch {best['epoch']}" if best["value"] is not None
                 else f"no validation split, so the last epoch ({best['epoch']}) is kept")
    _say(run, f"done: {stop_reason}; {best_text}; {test_text}; run folder {run.path}")
    return summary
