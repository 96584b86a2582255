"""One plain training loop. `fit` builds a run (`build.start`), then each epoch trains, evaluates, records a
metrics.csv row and checkpoints (`run_epoch`), then `finish` tests the best weights and writes the summary.

One optimizer step reads top to bottom here: `train_step` (zero the gradients, forward and backward per batch) and,
after a step's last batch, `optimizer_step` (clip → optimizer, through the fp16 loss scaler → schedule → Lookahead
→ EMA). What a checkpoint restores is one object, `TrainState` (state.py); what stays fixed through a run is one
`Setup` (build.py). The few things that vary are small objects the loop calls: EarlyStopping, Lookahead, the
weights' EMA, StopRequest (SIGINT/SIGTERM), TensorBoardLog, the run folder.
"""

import contextlib
import math
import re
import time
import warnings
from contextlib import nullcontext

import torch

from cnnlab import runfiles
from cnnlab import distributed
from cnnlab.build import Setup, bare_setup, start
from cnnlab.config import TrainConfig
from cnnlab.data.home import data_notes
from cnnlab.data.loader import DeviceLoader
from cnnlab.distributed import Dist, any_true, barrier
from cnnlab.errors import CnnlabError
from cnnlab.run_data import FULL_BATCH_CHUNK
from cnnlab.checkpoint import load_checkpoint
from cnnlab.interrupt import StopRequest
from cnnlab.metrics import Sums, has_top5, loss_fn
from cnnlab.models import count_params
from cnnlab.progress import Progress
from cnnlab.runfolder import METRIC_COLUMNS, TOP5_COLUMNS, RunFolder, environment
from cnnlab.state import Position, TrainState
from cnnlab.tta import tta_logits

OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)  # torch.OutOfMemoryError: ≥ 2.5
DIST_STOP_CHECK_EVERY = 16  # optimizer steps between the ranks' checks for a stop request (SIGINT/SIGTERM)


# -- one step, one epoch, one evaluation ------------------------------------------------------------------------
def forward_backward(setup: Setup, state: TrainState, x, y, weight: float):
    """The loss of one batch and its gradient, scaled by `weight` (the batch's share of what one step averages)
    and, under fp16, by the loss scaler."""
    with setup.autocast:
        out = setup.train_model(x)
        loss = setup.criterion(out.float(), y)
    state.scaler.scale(loss * weight).backward()
    return loss, out


def train_step(setup: Setup, state: TrainState, x, y, global_n: int, first: bool = True, last: bool = True):
    """One batch's part of an optimizer step over `global_n` examples: a whole step by default; with gradient
    accumulation (and full-batch GD) `first` zeroes the gradients and `last` steps, after the step's last batch.

    Each batch's mean loss is weighted by its share of the step's examples, so the summed gradient is their mean.
    With several processes each holds a shard of the global batch, weighted by shard size × processes / global_n:
    DDP's average over processes, taken in the step's last backward pass only, is then the step's mean.
    Returns (loss, logits, the gradients' norm before clipping or None).
    """
    if setup.graphed is not None:  # a whole step per batch, as graphs.refusal made sure; replayed after a capture
        loss, out = setup.graphed(x, y)
        after_update(state)
        return loss, out, None
    if first:
        state.optimizer.zero_grad(set_to_none=True)
    with distributed.gradient_sync(setup.train_model, last):
        loss, out = forward_backward(setup, state, x, y, len(y) * setup.dist.world_size / global_n)
    return loss, out, optimizer_step(state) if last else None


def optimizer_step(state: TrainState) -> torch.Tensor | None:
    """One optimizer step on the gradients accumulated since the last: clip them (when asked), step (through the
    fp16 loss scaler), then the schedule, Lookahead and the EMA. Returns the gradients' global norm before
    clipping (None without clipping)."""
    norm = None
    if state.clip_grad_norm:
        # Under fp16 the gradients are still multiplied by the loss scale: clip the true ones. The scaler notes the
        # unscaling and does not repeat it in its step (and it is a no-op when fp16 loss scaling is off).
        state.scaler.unscale_(state.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), state.clip_grad_norm)
    if state.scaler.is_enabled():
        # A step whose gradients overflowed is skipped and the scale lowered. The scale is a device tensor;
        # comparing it there costs no host sync (get_scale() would, every step).
        before = state.scaler._scale.clone()
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.add_skipped((state.scaler._scale < before).sum())
    else:
        state.optimizer.step()
    after_update(state)
    return norm


def after_update(state: TrainState) -> None:
    """What follows the optimizer's update, eagerly (also after a replayed CUDA graph): the schedule, Lookahead and
    the EMA."""
    with warnings.catch_warnings():
        # The schedule counts steps, skipped ones too; torch warns when the very first step was skipped.
        warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))
        state.scheduler.step()
    if state.lookahead is not None:
        state.lookahead.step(state.scheduler.last_epoch)
    if state.ema is not None:
        state.ema.update(state.model)  # after Lookahead: the average follows the weights training goes on from


def step_function(config: TrainConfig, model, device: torch.device, steps_per_epoch: int = 1):
    """`step(x, y) -> loss`: the engine's own minibatch step for `model`, set up as `fit` sets it up (optimizer
    groups, schedule, autocast, loss with label smoothing, channels_last, torch.compile, a CUDA graph where
    `--cuda-graphs` allows one for a fixed batch), without data or a run folder — for benchmarks that time steps."""
    setup, state = bare_setup(config, model, device, steps_per_epoch)
    if setup.graphed is None:
        return lambda x, y: train_step(setup, state, x, y, len(y))[0].detach()
    return lambda x, y: train_step(setup, state, x, y, len(y))[0].clone()  # the graph's next replay overwrites it


def _unit(loader: DeviceLoader) -> str:
    """What the loop's batch index counts: optimizer steps, or batches where several make one step."""
    return "step" if loader.batches_per_step == 1 else "batch"


def train_one_epoch(setup: Setup, state: TrainState, stop: StopRequest, epoch: int) -> tuple[Sums, int]:
    """One pass over the training loader, from where a resumed run stopped inside it, if it did.

    Returns the epoch's sums and the index of the next batch (len(loader) when complete). An optimizer step adds
    up `loader.batches_per_step` batches (one; K with --accumulate K; all for full-batch gradient descent), and a
    stop is honoured only after a step, so a resumed run never holds half a step's gradients.
    """
    data, loader, d, board = setup.data, state.loader, setup.dist, setup.tensorboard
    sums, first = Sums(setup.device, data.task, setup.num_classes, d), 0
    if state.position is not None:
        loader.resume_from(state.position["order"], state.position["batch"])
        sums.load(state.position["sums"])
        first, state.position = state.position["batch"], None
    state.model.train()
    progress = Progress(len(loader), epoch, setup.config.epochs, setup.say, _unit(loader))
    # Each batch's loss goes to its slot, on the device; the first NaN/inf among them is looked for once, at the
    # epoch's end (per batch that search would cost ten operators, and reading it a wait for the device).
    losses = torch.zeros(len(loader), device=setup.device)
    for batch, (x, y) in enumerate(loader, start=first):
        step_first, step_last, step_examples = loader.step_span(batch)
        # --tensorboard logs every Nth optimizer step, numbered as the schedule counts them (from 1): its loss is
        # what the sums gain over its batches, per example (this process's share), its lr the one it steps with.
        logged = board is not None and board.wants(state.scheduler.last_epoch + 1)
        if logged and batch == step_first:
            loss_before, seen_before, step_lr = sums.loss.clone(), sums.n, state.optimizer.param_groups[0]["lr"]
        loss, out, grad_norm = train_step(setup, state, x, y, step_examples, batch == step_first, batch == step_last)
        sums.add(loss, out, y)  # in the model's dtype: argmax of bf16 logits is that of their exact float32 copy
        if logged and batch == step_last:  # a whole step, every N steps only: reading its loss waits for the device
            board.step(state.scheduler.last_epoch, (sums.loss - loss_before) / (sums.n - seen_before), step_lr)
        if grad_norm is not None:
            sums.add_grad_norm(grad_norm)
        losses[batch] = loss.detach()
        progress.update(sums.n, sums)
        # Under torchrun agreeing on a stop costs an all-reduce and a host sync, so ranks confer every few steps.
        confer = not d.enabled or (batch + 1) % (DIST_STOP_CHECK_EVERY * loader.batches_per_step) == 0
        if batch == step_last and confer and any_true(stop.check(epoch, batch + 1), d, loss.device):
            progress.close()
            _note_nonfinite(setup, losses[first:batch + 1], first)
            return sums, batch + 1
    progress.close()
    _note_nonfinite(setup, losses[first:], first)
    return sums, len(loader)


def _note_nonfinite(setup: Setup, losses: torch.Tensor, first: int) -> None:
    """Set setup.nonfinite_step to the batch index of the first NaN/inf among `losses` (batches from `first` on),
    if the run has none yet — on the device, with no wait for it."""
    bad = ~torch.isfinite(losses)
    found = torch.where(bad.any(), first + bad.int().argmax(), -1)
    setup.nonfinite_step.copy_(torch.where(setup.nonfinite_step < 0, found, setup.nonfinite_step))


def pad_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """`x` with copies of its last image appended up to `size` images (a batch of `size` or more: unchanged).

    Every image is classified on its own in evaluation (batch norm uses its running statistics), so the padding
    changes no real image's output; the caller slices the outputs back to the real images."""
    missing = size - len(x)
    if missing <= 0:
        return x
    return torch.cat([x, x[-1:].expand(missing, *x.shape[1:])]).contiguous(memory_format=_memory_format_of(x))


def _memory_format_of(x: torch.Tensor):
    return torch.channels_last if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format


@torch.no_grad()
def evaluate(model, loader: DeviceLoader, task: str, num_classes: int, autocast=nullcontext(),
             return_logits: bool = False, d: Dist = Dist(), tta: str = "none"):
    """Mean loss (plain cross-entropy or ½ squared error), top-1 and top-5 over a loader (all processes' shards),
    optionally of the logits averaged over test-time views (`tta_logits`); with `return_logits`, also this
    process's (N, outputs) float32 logits on the CPU in the loader's order."""
    model.eval()
    sums = Sums(loader.device, task, num_classes, d)
    criterion = loss_fn(task)
    logits = []
    for x, y in loader:
        if not len(y):  # under DDP a rank's share of a short last batch can be empty: nothing to add
            continue
        x = pad_batch(x, loader.shard_size) if loader.pad_last else x
        with autocast:
            out = tta_logits(model, x, tta).float()[:len(y)]
        sums.add(criterion(out, y), out, y)
        if return_logits:
            logits.append(out.cpu())
    result = sums.result()
    if return_logits:
        return result, torch.cat(logits)
    return result


# -- the run ----------------------------------------------------------------------------------------------------
def fit(config: TrainConfig | None, resume: str | None = None, should_stop=None, notes=(),
        on_epoch=None) -> RunFolder:
    """Train `config` into its run folder, or continue the run in `resume` (config may then carry new epochs).
    `notes`: lines for a new run's log about how its settings were put together (config_from_args' notes).
    `on_epoch(epoch, row) -> str | None`, if given, sees each epoch's metrics.csv row once it is recorded and may
    end the run there, as early stopping does, by returning the reason (`cnnlab tune` prunes a trial this way).

    The run folder is locked for the whole run; a new one is created only after data and model are built, so
    bad input leaves nothing behind.
    """
    d = distributed.setup(config.device if config is not None else "auto")
    try:
        with contextlib.ExitStack() as stack:
            setup, state = start(config, resume, d, stack, notes)
            stop_reason = None
            with StopRequest(should_stop) as stop, _out_of_memory_is_one_line(setup, state):
                for epoch in range(state.epoch + 1, setup.config.epochs + 1):
                    stop_reason = run_epoch(setup, state, stop, epoch, on_epoch)
                    if stop_reason:
                        break
            finish(setup, state, stop_reason or "completed all epochs")
            return setup.run
    finally:
        distributed.teardown()


def run_epoch(setup: Setup, state: TrainState, stop: StopRequest, epoch: int, on_epoch=None) -> str | None:
    """Train, evaluate, record and checkpoint one epoch; return why the run stops here, or None to go on.

    A stop request (Ctrl-C, SIGTERM) saves where the run is and leaves with exit status 130.
    """
    config, data, d = setup.config, setup.data, setup.dist
    epoch_start, lr = time.perf_counter(), state.optimizer.param_groups[0]["lr"]
    if state.position is not None:  # resumed inside the epoch: its row reports the lr it started with
        lr = state.position.get("lr", lr)
    sums, done = train_one_epoch(setup, state, stop, epoch)
    if any_true(int(setup.nonfinite_step) >= 0 or not math.isfinite(float(sums.loss)), d, setup.device):
        reason = (f"loss became NaN or infinite in epoch {epoch} ({_unit(state.loader)} "
                  f"{int(setup.nonfinite_step) + 1}); "
                  "the last good checkpoint is kept — lower the learning rate (--lr) and try again")
        setup.say(reason, err=True)
        return reason
    if done < len(state.loader):  # interrupted inside the epoch: save the position and leave
        state.position = Position(epoch=epoch, batch=done, order=state.loader.order.cpu(), sums=sums.state(),
                                  lr=lr)
        setup.save(state, runfiles.LAST)
        _exit_stopped(setup, stop, f"in epoch {epoch} after step {done}")
    if state.lookahead is not None:
        state.lookahead.end_epoch()  # evaluation and checkpoints see the averaged weights (or their EMA)
    row = record_epoch(setup, state, epoch, sums, epoch_start, lr)
    state.epoch = epoch
    value = row.get(state.monitor.metric) if data.val else None
    improved = state.record(epoch, value)
    stop_now, reason = state.early.step(value, epoch) if state.early else (False, "")
    if stop_now:
        reason = f"early stopping after epoch {epoch}: {reason}"
    elif on_epoch is not None:
        reason = on_epoch(epoch, row)
        stop_now = reason is not None
    interrupted = not stop_now and any_true(stop.check(epoch, None), d, setup.device)
    # An interrupted run resumes from this epoch, not an older one.
    write_last = epoch % config.checkpoint_every == 0 or stop_now or interrupted or epoch == config.epochs
    # Without a validation split every epoch "improves": best.pt then goes with last.pt, not every epoch.
    if improved and (data.val is not None or write_last):
        setup.save(state, runfiles.BEST)
    if write_last:
        setup.save(state, runfiles.LAST)
    if interrupted:
        _exit_stopped(setup, stop, f"after epoch {epoch}")
    if stop_now:
        setup.say(reason)
        return reason
    return None


@contextlib.contextmanager
def _out_of_memory_is_one_line(setup: Setup, state: TrainState):
    """A batch too large for the device ends the run with one line naming a batch size to try, not a traceback.

    Nothing is saved: the failed step may have left gradients or optimizer state half-updated, so the run folder
    keeps the checkpoints of its last complete epoch, which `--resume` continues from.
    """
    try:
        yield
    except OUT_OF_MEMORY:
        size = setup.config.batch_size
        smaller = FULL_BATCH_CHUNK if setup.config.full_batch else max(1, size // 2)
        kept = [name for name in (runfiles.LAST, runfiles.BEST) if setup.run.file(name).exists()]
        reason = (f"{setup.device.type.upper()} out of memory at batch {size}: try --batch-size {smaller}"
                  + (" or --cuda-graphs off (a graphed step keeps its activations' memory for the whole run)"
                     if setup.graphed is not None and setup.graphed.graphed else "")
                  + (f" (the run folder keeps {' and '.join(kept)} from epoch {state.epoch})" if kept else ""))
        setup.run.log(reason)  # the CLI prints it, once
        raise CnnlabError(reason) from None


def _exit_stopped(setup: Setup, stop: StopRequest, where: str):
    """Say where a stop request (SIGINT/SIGTERM) left the run and how to resume it; exit with status 130."""
    setup.say(f"stopped by {stop.signal_name} {where}; checkpoint saved. "
              f"Resume with: cnnlab train --resume {setup.run.path}", err=True)
    raise SystemExit(130)


def record_epoch(setup: Setup, state: TrainState, epoch: int, sums: Sums, epoch_start: float, lr: float) -> dict:
    """Evaluate on the validation split, append the epoch's metrics.csv row and log it; return the row."""
    data, run = setup.data, setup.run
    train = sums.result()  # waits for the GPU: the epoch's time is real
    train_seconds = time.perf_counter() - epoch_start
    skipped = state.end_epoch()
    val = evaluate(state.eval_model, data.val, data.task, setup.num_classes, setup.autocast, d=setup.dist,
                   tta=setup.tta) if data.val else {}
    row = {"epoch": epoch, "train_loss": train["loss"], "train_acc": train.get("acc"),
           "train_top5": train.get("top5"), "val_loss": val.get("loss"), "val_acc": val.get("acc"),
           "val_top5": val.get("top5"), "lr": lr, "epoch_seconds": time.perf_counter() - epoch_start,
           "images_per_second": train["n"] / train_seconds, "step": state.scheduler.last_epoch,
           "grad_norm": train.get("grad_norm")}
    if not run.readonly:
        row["elapsed_seconds"] = row["epoch_seconds"] + sum(float(r["epoch_seconds"]) for r in run.metrics())
    run.append_metrics(row, METRIC_COLUMNS + (TOP5_COLUMNS if has_top5(data.task, setup.num_classes) else []))
    if setup.tensorboard is not None:
        setup.tensorboard.epoch(row)
    setup.say(f"epoch {epoch}/{setup.config.epochs}  train loss {row['train_loss']:.4f}"
              + (f" acc {row['train_acc']:.4f}" if row["train_acc"] is not None else "")
              + (f"  val loss {row['val_loss']:.4f}" if val else "")
              + (f" acc {row['val_acc']:.4f}" if row["val_acc"] is not None else "")
              + f"  {row['images_per_second']:.0f} img/s  {row['epoch_seconds']:.1f} s"
              + (f"  ({skipped} steps skipped: fp16 gradients overflowed)" if skipped else ""))
    return row


# -- the end ----------------------------------------------------------------------------------------------------
def finish(setup: Setup, state: TrainState, stop_reason: str) -> dict:
    """Evaluate the best checkpoint once on the test split; write summary.json and curves.png."""
    config, data, run, best = setup.config, setup.data, setup.run, state.best
    summary = {"model": setup.options["name"], "dataset": config.dataset, **data_notes(config.data, config.dataset),
               "parameters": count_params(state.model),
               "epochs_run": state.epoch, "stop_reason": stop_reason, "best_metric": best["metric"],
               "best_value": best["value"], "best_epoch": best["epoch"], "seed": config.seed,
               "val_size": data.notes.get("val_size"), "test_size": data.test.num_examples,
               "test_subset": config.test_subset, "wall_seconds": round(time.perf_counter() - setup.wall_start, 2),
               "precision": setup.precision.name, "precision_reason": setup.precision.reason,
               "skipped_steps": state.skipped_steps, "threads": setup.threads, "deterministic": config.deterministic,
               "channels_last": setup.model_channels_last,
               "cuda_graphs": setup.graphed is not None and setup.graphed.graphed}
    rows = run.metrics()
    summary.update(_timings(rows, setup.init_seconds))
    barrier(setup.dist)  # rank 0 has written best.pt
    if run.file(runfiles.BEST).is_file():
        summary.update(_test(setup, state))
    summary.update(environment(setup.device))
    run.write_summary(summary)
    if rows and not run.readonly:
        from cnnlab.report.curves import save_curves  # here: matplotlib costs ~0.5 s; eval and predict import the loop

        save_curves(rows, run.file(runfiles.CURVES), title=f"{setup.options['name']} on {config.dataset}")
    test_text = (f"test top-1 {summary['test_top1']:.4f}" if summary.get("test_top1") is not None
                 else f"test loss {summary.get('test_loss', float('nan')):.6f}")
    best_text = (f"best {best['metric']} {best['value']:.4f} at epoch {best['epoch']}" if best["value"] is not None
                 else f"no validation split, so the last epoch ({best['epoch']}) is kept")
    setup.say(f"done: {stop_reason}; {best_text}; {test_text}; run folder {run.path}")
    return summary


def _timings(rows: list[dict], init_seconds: float | None) -> dict:
    timings = {}
    if rows:
        # All images over all training seconds (a harmonic mean): a slow first epoch counts for its real time.
        ips = [float(r["images_per_second"]) for r in rows if r["images_per_second"]]
        timings["images_per_second"] = round(len(ips) / sum(1 / v for v in ips), 1)
        # Training time proper: the epochs (with their validation passes), not data loading, checkpoints or plots.
        timings["train_seconds"] = round(sum(float(r["epoch_seconds"]) for r in rows), 4)
    if init_seconds is not None:
        timings["init_seconds"] = init_seconds
    return timings


def _test(setup: Setup, state: TrainState) -> dict:
    """The best checkpoint's weights on the test split (and, for linear regression, against the true w and b)."""
    model, data = state.model, setup.data
    model.load_state_dict(load_checkpoint(setup.run.file(runfiles.BEST), setup.device)["model"])
    begin = time.perf_counter()
    test = evaluate(model, data.test, data.task, setup.num_classes, setup.autocast, d=setup.dist, tta=setup.tta)
    result = {"test_loss": test["loss"], "test_top1": test.get("acc"), "test_top5": test.get("top5"),
              "test_seconds": round(time.perf_counter() - begin, 4), "tta": setup.config.tta}
    if setup.options["name"] == "linreg" and "true_w" in data.notes:
        w = model.linear.weight.detach().cpu().flatten().tolist()
        b = float(model.linear.bias.detach().cpu())
        result.update({"learned_w": w, "learned_b": b, "true_w": data.notes["true_w"], "true_b": data.notes["true_b"],
                       "w_error": max(abs(a - t) for a, t in zip(w, data.notes["true_w"])),
                       "b_error": abs(b - data.notes["true_b"])})
    return result
