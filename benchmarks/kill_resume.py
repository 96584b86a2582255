"""Kill a CPU training run with SIGKILL at planned moments, resume it each time, compare with a run left alone.

The run (an MLP with dropout and batch norm on synthetic-linear, a checkpoint every epoch) is started as
`python -m cnnlab train …`, killed `--kills` times and continued with `cnnlab train --resume DIR` until it finishes.
Its final metrics.csv (without the timing columns) and the model weights of last.pt and best.pt must equal those of
an uninterrupted run with the same settings, to the bit.

Kills are planned against the run's progress, so that each lands before the process can finish, however slow or
busy the machine. The first two hit a fresh run before it has a checkpoint:
  start-up          — a random moment in the first second (imports, data: usually no run folder yet)
  no checkpoint yet — as soon as config.toml appears in the new run folder
For these two the process writes into a pipe that is already full, so its first line (printed once the run folder
exists, before epoch 1) blocks it: it cannot reach a checkpoint, however late the kill comes.
Each other kill waits for a target epoch t, drawn without repeats from 1 … epochs−2 and moved past the epoch the
process resumes from (a run too close to its end for that is killed at once, during start-up), at one of three
kinds of moment, drawn at random:
  random time       — a random delay (0–3 s) after the process starts, often during its start-up, or epoch t's row
                      in metrics.csv, whichever comes first
  mid-epoch         — a random fraction of an epoch after epoch t's row appears
  checkpoint write  — as soon as a checkpoint's temporary file (.last.pt.xxxx / .best.pt.xxxx) appears after
                      epoch t's row
A moment that does not come in time (a write too short to see, a slow epoch) gives way to the next one the run
shows: epoch t+1's row. Neither t nor t+1 is the last epoch, so the process still has an epoch, its test evaluation
and its plots ahead of it. A kill that finds the process gone all the same is reported as a note, not a failure, as
long as at least 4 in 5 of the planned kills land (8 of 10): fewer would test too little to say OK. What fails
besides is a wrong resume — metrics or weights that differ, a resume not refused cleanly, temporaries left over.

A process killed before its first checkpoint leaves no last.pt (or no run folder at all). There is nothing to
resume then: the benchmark checks that `--resume` refuses with one clear line (exit 2, no traceback), deletes the
folder and starts the run again from scratch, as a user would.

Prints one line per kill, `N/N resumed`, the completed epochs each kill cost (epochs whose row was in metrics.csv
but that were redone because last.pt was older), and a final OK or FAIL line (exit status 0 or 1).

    python benchmarks/kill_resume.py [--kills 10] [--epochs 40] [--seed 0] [--workdir DIR]
"""

import argparse
import contextlib
import csv
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

TRAIN = ["--model", "mlp", "--hidden", "32", "--dropout", "0.2", "--batch-norm", "true", "--dataset",
         "synthetic-linear", "--batch-size", "50", "--lr", "0.01", "--momentum", "0.9", "--checkpoint-every", "1",
         "--device", "cpu", "--seed", "3"]
TIMING = ("epoch_seconds", "images_per_second", "elapsed_seconds")  # differ between any two runs
FIRST_MOMENTS = ("start-up", "no checkpoint yet")
MOMENTS = ("random time", "mid-epoch", "checkpoint write")
# A process held at its first line shows its run folder within seconds; one that never does printed something
# earlier (a warning, an error) into the full pipe and is held there: kill it anyway, still without a checkpoint.
FOLDER_PATIENCE = 30.0


@dataclass
class Planned:
    """One kill as planned: the kind of moment, the epoch whose metrics row it waits for, and its random draws."""
    moment: str
    target: int = 1
    delay: float = 0.0  # seconds after the process starts (start-up, random time)
    fraction: float = 0.0  # of an epoch, after the target row (mid-epoch)


@dataclass
class Seen:
    """What the watcher sees of a running process at one look."""
    seconds: float  # since it started
    rows: int  # complete rows in metrics.csv
    folder: bool = False  # config.toml exists
    writing: bool = False  # a checkpoint's temporary file exists
    at_target: float | None = None  # seconds since the rows first reached the target; None: not yet


@dataclass
class Kill:
    moment: str
    at: str = ""
    checkpoint_epoch: int | None = None  # last.pt's epoch after the kill; None: no checkpoint yet
    epochs_lost: int = 0
    mid_write: bool = False  # a checkpoint's temporary file was still there after the kill
    recovered: bool = False
    note: str = ""


@dataclass
class Result:
    kills: list = field(default_factory=list)
    missed: int = 0  # planned kills that found the process finished (a note: timing, not a wrong resume)
    metrics_equal: bool = False
    weights_equal: bool = False
    leftovers: list = field(default_factory=list)
    problems: list = field(default_factory=list)

    @property
    def required(self) -> int:
        """The kills that must land: a missed kill tests less but proves nothing wrong, so one in five may miss;
        more (no kill at all, in the worst case) would pass a run that tested almost nothing."""
        return max(1, int(0.8 * (len(self.kills) + self.missed)))

    @property
    def ok(self) -> bool:
        """Whether enough kills landed and every resume was right."""
        return (self.metrics_equal and self.weights_equal and not self.leftovers and not self.problems
                and len(self.kills) >= self.required and all(k.recovered for k in self.kills))


def plan_kills(kills: int, epochs: int, rng: random.Random) -> list[Planned]:
    """The first two kills hit a fresh run; the others wait for distinct, sorted target epochs in 1 … epochs−2.

    Distinct targets keep each kill after the checkpoint the one before it left; stopping at epochs−2 leaves every
    kill a later row to fall back on (t+1) that is still not the last epoch's.
    """
    if not 1 <= kills <= epochs:
        raise ValueError(f"cannot plan {kills} kills in {epochs} epochs: 1 ≤ kills ≤ epochs")
    plans = [Planned("start-up", delay=rng.uniform(0.0, 1.0)), Planned("no checkpoint yet")]
    for target in sorted(rng.sample(range(1, epochs - 1), max(kills - 2, 0))):
        plans.append(Planned(rng.choice(MOMENTS), target, rng.uniform(0.0, 3.0), rng.random()))
    return plans[:kills]


def retarget(plan: Planned, rows_before: int, epochs: int) -> Planned:
    """The plan for a process that starts with `rows_before` metrics rows (or a checkpoint that far) on disk.

    A run already past the planned epoch is killed at its next one instead; a run too close to its end for that
    (its fallback row would be the last epoch's) is killed at once, during start-up.
    """
    if plan.moment in FIRST_MOMENTS:
        return plan
    target = max(plan.target, rows_before + 1)
    if target > epochs - 2:
        return Planned("start-up", delay=0.0)
    return replace(plan, target=target)


def due(plan: Planned, seen: Seen, epoch_time: float) -> str | None:
    """Why the kill should land now, or None to keep watching."""
    if plan.moment == "start-up":
        if seen.seconds >= plan.delay:
            return f"{plan.delay:.2f} s after start"
        if seen.folder:  # start-up went faster than the delay; the full pipe holds the process before epoch 1
            return f"run folder created {seen.seconds:.2f} s after start"
    elif plan.moment == "no checkpoint yet":
        if seen.folder:
            return "run folder created, first line held back"
        if seen.seconds >= FOLDER_PATIENCE:
            return f"no run folder after {seen.seconds:.0f} s, output held back"
    elif plan.moment == "random time":
        if seen.seconds >= plan.delay:
            return f"{plan.delay:.2f} s after start"
        if seen.rows >= plan.target:
            return f"epoch {seen.rows}'s row, before the {plan.delay:.2f} s delay ended"
    elif seen.rows > plan.target:
        return f"epoch {seen.rows}'s row: the {plan.moment} after epoch {plan.target} was not caught in time"
    elif seen.at_target is not None:
        if plan.moment == "checkpoint write" and seen.writing:
            return f"writing a checkpoint after epoch {plan.target}"
        if plan.moment == "mid-epoch" and seen.at_target >= plan.fraction * epoch_time:
            return f"{plan.fraction:.0%} of an epoch after epoch {plan.target}'s row"
    return None


def command(*args) -> list[str]:
    return [sys.executable, "-m", "cnnlab", "train", *map(str, args)]


def environment(workdir: Path) -> dict:
    # One thread: the same reduction order in every process, and room for the watcher on a small machine.
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", CNNLAB_CACHE_DIR=str(workdir / "cache"))


def complete_rows(run: Path) -> int:
    """Rows of metrics.csv that were written whole (a kill can cut the last one)."""
    try:
        return max((run / "metrics.csv").read_bytes().count(b"\n") - 1, 0)
    except OSError:
        return 0


def checkpoint_epoch(run: Path) -> int | None:
    try:
        return int(torch.load(run / "last.pt", weights_only=True)["epoch"])
    except (OSError, RuntimeError, KeyError):
        return None


def temporaries(run: Path) -> list[str]:
    try:
        return [e.name for e in os.scandir(run) if e.name.startswith((".last.pt.", ".best.pt."))]
    except OSError:
        return []


@contextlib.contextmanager
def started(argv: list[str], log: Path, env: dict, held: bool):
    """The running process, its output in `log`; held: into a full pipe instead, so its first line blocks it.

    Leaving the block kills a process that is still running, so an error in the watcher cannot leave one behind.
    """
    read = write = None
    try:
        if held:
            read, write = os.pipe()
            _fill(write)
            proc = subprocess.Popen(argv, stdout=write, stderr=subprocess.STDOUT, env=env)
            log.write_text("(output held back in a full pipe until the kill)\n")
        else:
            with open(log, "w") as out:
                proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    finally:
        # `read` stays open until the process is gone: closing it first would end a held process with EPIPE.
        for fd in (read, write):
            if fd is not None:
                os.close(fd)


def _fill(fd: int) -> None:
    """Fill the pipe behind `fd` to the brim, so that the next write to it waits for a reader."""
    os.set_blocking(fd, False)
    for size in (4096, 1):
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(fd, b"\n" * size)
    os.set_blocking(fd, True)  # the flag is shared with the child's copy: its writes must wait, not fail


def watch_and_kill(proc, run: Path, plan: Planned, epoch_time: float) -> str | None:
    """Wait for the planned moment and SIGKILL the process; None if it finished first."""
    start, target = time.perf_counter(), plan.target
    reached = None
    while proc.poll() is None:
        now = time.perf_counter()
        rows = complete_rows(run)
        if rows >= target and reached is None:
            reached = now
        seen = Seen(now - start, rows, (run / "config.toml").is_file(), bool(temporaries(run)),
                    None if reached is None else now - reached)
        why = due(plan, seen, epoch_time)
        if why:
            proc.send_signal(signal.SIGKILL)
            return why
        # A checkpoint's temporary file lives for a millisecond or two: look without pause while one is expected.
        time.sleep(0 if plan.moment == "checkpoint write" and reached is not None else 0.001)
    return None


def resume_refusal(run: Path, env: dict) -> tuple[str, str]:
    """`--resume` on a run with nothing to resume must fail with one clear line: (that line, a problem or '')."""
    done = subprocess.run(command("--resume", run), capture_output=True, text=True, env=env, timeout=300)
    err = done.stderr
    if done.returncode != 2 or not err.startswith("cnnlab: error: ") or err.count("\n") != 1 or "Traceback" in err:
        return err, f"resume without a checkpoint did not fail cleanly (exit {done.returncode}): {err.strip()[-300:]}"
    return err.strip(), ""


def metrics_rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def same_weights(a: Path, b: Path) -> bool:
    x, y = torch.load(a, weights_only=True)["model"], torch.load(b, weights_only=True)["model"]
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def run_benchmark(kills: int = 10, epochs: int = 40, seed: int = 0, workdir: Path | None = None,
                  say=print) -> Result:
    plans = plan_kills(kills, epochs, random.Random(seed))
    own = workdir is None
    workdir = Path(workdir or tempfile.mkdtemp(prefix="cnnlab-kill-resume-"))
    env = environment(workdir)
    result = Result()
    try:
        straight, killed = workdir / "straight", workdir / "killed"
        epoch_time = _uninterrupted(straight, epochs, env, result, say)
        if epoch_time is not None and _kill_and_resume(killed, plans, epochs, epoch_time, env, result, say):
            _compare(straight, killed, result)
        return result
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)


def _uninterrupted(run: Path, epochs: int, env: dict, result: Result, say) -> float | None:
    """Train the reference run; its mean epoch time, or None (and a problem) if it failed."""
    start = time.perf_counter()
    done = subprocess.run(command(*TRAIN, "--epochs", epochs, "--out", run), capture_output=True, text=True,
                          env=env, timeout=600)
    if done.returncode != 0:
        result.problems.append(f"the uninterrupted run failed: {done.stderr.strip()[-300:]}")
        return None
    seconds = [float(s) for s in _column(run, "epoch_seconds")]
    epoch_time = max(0.01, sum(seconds) / len(seconds))
    say(f"uninterrupted: {epochs} epochs in {time.perf_counter() - start:.1f} s ({epoch_time:.2f} s per epoch)")
    return epoch_time


def _kill_and_resume(run: Path, plans: list[Planned], epochs: int, epoch_time: float, env: dict, result: Result,
                     say) -> bool:
    """Start, kill and resume the run until it finishes; whether it finished."""
    pending = []  # kills whose recovery has not been seen yet
    segment = 0
    while True:
        segment += 1
        plan = plans[len(result.kills)] if len(result.kills) < len(plans) else None
        if checkpoint_epoch(run) is None:
            if run.exists() or segment > 1:
                pending = _refused_and_restarted(run, pending, env, result, say)
            shutil.rmtree(run, ignore_errors=True)
            argv = command(*TRAIN, "--epochs", epochs, "--out", run)
        else:
            argv = command("--resume", run)
        rows_before = max(complete_rows(run), checkpoint_epoch(run) or 0)
        before = set(temporaries(run)), _stamp(run / "metrics.csv")
        log = run.parent / f"segment{segment}.log"
        at = None
        with started(argv, log, env, held=plan is not None and plan.moment in FIRST_MOMENTS) as proc:
            if plan is not None:
                plan = retarget(plan, rows_before, epochs)
                at = watch_and_kill(proc, run, plan, epoch_time)
            proc.wait(timeout=600)
        text = log.read_text(errors="replace")
        _mark_resumed(pending, text)
        if at is None or proc.returncode != -signal.SIGKILL:  # it ended on its own, whether or not a kill was due
            if plan is not None:
                result.missed = len(plans) - len(result.kills)
            if proc.returncode != 0:
                result.problems.append(f"segment {segment} exited {proc.returncode}: {text.strip()[-300:]}")
            break
        kill = Kill(plan.moment, at, checkpoint_epoch(run), mid_write=bool(set(temporaries(run)) - before[0]))
        # Rows this process wrote beyond last.pt will be redone (rows left by an earlier kill were counted then).
        if _stamp(run / "metrics.csv") != before[1]:
            kill.epochs_lost = complete_rows(run) - (kill.checkpoint_epoch or 0)
        result.kills.append(kill)
        pending.append(kill)
        say(f"kill {len(result.kills):2d}: {kill.moment:<16} ({at}) → "
            + (f"last.pt at epoch {kill.checkpoint_epoch}" if kill.checkpoint_epoch is not None
               else "no checkpoint yet")
            + f", {kill.epochs_lost} completed epoch(s) lost"
            + (", a half-written checkpoint left behind" if kill.mid_write else ""))
    if pending:
        result.problems.append(f"{len(pending)} kill(s) never saw a successful resume")
    return not result.problems


def _refused_and_restarted(run: Path, pending: list, env: dict, result: Result, say) -> list:
    """Check that a run without a checkpoint refuses to resume; the kills that left it count as recovered then."""
    line, problem = resume_refusal(run, env)
    say(f"         resume refused: {line.strip()[:160]}")
    if problem:
        result.problems.append(problem)
    for k in pending:
        k.recovered, k.note = not problem, "no checkpoint yet: resume refused, restarted from scratch"
    return []


def _compare(straight: Path, killed: Path, result: Result) -> None:
    result.metrics_equal = metrics_rows(killed) == metrics_rows(straight)
    result.weights_equal = all(same_weights(straight / n, killed / n) for n in ("last.pt", "best.pt"))
    result.leftovers = sorted(temporaries(killed) + [p.name for p in killed.glob("*.tmp")])


def _stamp(path: Path):
    try:
        st = path.stat()
        return st.st_mtime_ns, st.st_size
    except OSError:
        return None


def _column(run: Path, name: str) -> list[str]:
    with open(run / "metrics.csv", newline="") as f:
        return [row[name] for row in csv.DictReader(f)]


def _mark_resumed(pending: list, log: str) -> None:
    """A kill is recovered once a later process says it resumed from the checkpoint that kill left."""
    resumed = {int(line.split(" after epoch ")[1].split(",")[0].split()[0]) for line in log.splitlines()
               if line.startswith("resuming ") and " after epoch " in line}
    for k in list(pending):
        if k.checkpoint_epoch in resumed:
            k.recovered, k.note = True, f"resumed after epoch {k.checkpoint_epoch}"
            pending.remove(k)


def report(result: Result, say=print) -> bool:
    """Print the summary lines; whether the benchmark passed."""
    n = len(result.kills)
    recovered = sum(k.recovered for k in result.kills)
    restarted = sum(k.checkpoint_epoch is None for k in result.kills)
    lost = [k.epochs_lost for k in result.kills]
    say(f"{recovered}/{n} resumed ({n - restarted} from last.pt; {restarted} killed before the first checkpoint: "
        "resume refused in one line, run restarted from scratch)")
    if n < result.required:
        say(f"problem: only {n} of {n + result.missed} planned kills landed, fewer than the {result.required} "
            "needed to test the resume (the run finished before the rest)")
    elif result.missed:
        say(f"note: {result.missed} planned kill(s) found the run already finished (fewer kills tested; "
            "not a failure)")
    say(f"epochs lost per kill: {lost} (max {max(lost, default=0)}); killed during a checkpoint write: "
        f"{sum(k.mid_write for k in result.kills)}")
    say(f"metrics.csv {'identical' if result.metrics_equal else 'DIFFERENT'} (ignoring {', '.join(TIMING)}); "
        f"weights of last.pt and best.pt {'identical' if result.weights_equal else 'DIFFERENT'}"
        + (f"; left behind: {result.leftovers}" if result.leftovers else ""))
    for problem in result.problems:
        say(f"problem: {problem}")
    return result.ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs before the run may finish (default 10)")
    parser.add_argument("--epochs", type=int, default=40, help="epochs of the run, at least --kills (default 40)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill plan (default 0)")
    parser.add_argument("--workdir", type=Path, help="keep the run folders and logs here (default: a temporary "
                                                     "folder, removed afterwards)")
    args = parser.parse_args(argv)
    if not 1 <= args.kills <= args.epochs:
        parser.error("--kills must be at least 1 and at most --epochs (each later kill waits for its own epoch)")
    start = time.perf_counter()
    ok = report(run_benchmark(args.kills, args.epochs, args.seed, args.workdir))
    print(f"{'OK' if ok else 'FAIL'} ({time.perf_counter() - start:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
