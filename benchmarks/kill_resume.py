"""Kill a CPU training run with SIGKILL at random moments, resume it each time, compare with a run left alone.

The run (an MLP with dropout and batch norm on synthetic-linear, a checkpoint every epoch) is started as
`python -m cnnlab train …`, killed `--kills` times and continued with `cnnlab train --resume DIR` until it finishes.
Its final metrics.csv (without the timing columns) and the model weights of last.pt and best.pt must equal those of
an uninterrupted run with the same settings, to the bit.

The first two kills hit a fresh run before it has a checkpoint:
  start-up          — a random moment in the first second (imports, data: no run folder yet)
  no checkpoint yet — as soon as config.toml appears in the new run folder, before epoch 1 ends
The others land at one of three kinds of moment, drawn at random:
  random time       — a random delay (0–3 s) after the resumed process starts, often during its start-up
  mid-epoch         — a random fraction of an epoch after epoch k's row appears in metrics.csv
  checkpoint write  — as soon as a checkpoint's temporary file (.last.pt.xxxx / .best.pt.xxxx) appears
A process killed before its first checkpoint leaves no last.pt (or no run folder at all). There is nothing to
resume then: the benchmark checks that `--resume` refuses with one clear line (exit 2, no traceback), deletes the
folder and starts the run again from scratch, as a user would.

Prints one line per kill, `N/N resumed`, the completed epochs each kill cost (epochs whose row was in metrics.csv
but that were redone because last.pt was older), and a final OK or FAIL line (exit status 0 or 1).

    python benchmarks/kill_resume.py [--kills 10] [--epochs 24] [--seed 0] [--workdir DIR]
"""

import argparse
import csv
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

TRAIN = ["--model", "mlp", "--hidden", "32", "--dropout", "0.2", "--batch-norm", "true", "--dataset",
         "synthetic-linear", "--batch-size", "50", "--lr", "0.01", "--momentum", "0.9", "--checkpoint-every", "1",
         "--device", "cpu", "--seed", "3"]
TIMING = ("epoch_seconds", "images_per_second", "elapsed_seconds")  # differ between any two runs
FIRST_MOMENTS = ("start-up", "no checkpoint yet")
MOMENTS = ("random time", "mid-epoch", "checkpoint write")


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
    missed: int = 0  # planned kills the run outran (it finished first)
    metrics_equal: bool = False
    weights_equal: bool = False
    leftovers: list = field(default_factory=list)
    problems: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.metrics_equal and self.weights_equal and not self.leftovers and not self.problems
                and all(k.recovered for k in self.kills))


def command(*args) -> list[str]:
    return [sys.executable, "-m", "cnnlab", "train", *map(str, args)]


def environment(workdir: Path) -> dict:
    # One thread: the same reduction order in every process, and room for the watcher on a small machine.
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", CNNLAB_CACHE_DIR=str(workdir / "cache"))


def complete_rows(run: Path, _seen={}) -> int:
    """Rows of metrics.csv that were written whole (a kill can cut the last one); re-read only when it grows."""
    path = run / "metrics.csv"
    try:
        size = path.stat().st_size
        if _seen.get(path, (None,))[0] != size:
            _seen[path] = (size, max(path.read_bytes().count(b"\n") - 1, 0))
    except OSError:
        return 0
    return _seen[path][1]


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


def watch_and_kill(proc, run: Path, moment: str, target: int, epoch_time: float, rng: random.Random) -> str | None:
    """Wait for the chosen moment and SIGKILL the process; None if it finished first."""
    start = time.perf_counter()
    delay = rng.uniform(0.0, 1.0 if moment == "start-up" else 3.0)
    fraction = rng.random()
    reached = None
    while proc.poll() is None:
        if moment == "no checkpoint yet":
            if (run / "config.toml").is_file():
                proc.send_signal(signal.SIGKILL)
                return "run folder created, epoch 1 not finished"
        elif moment in ("start-up", "random time"):
            if time.perf_counter() - start >= delay:
                proc.send_signal(signal.SIGKILL)
                return f"{delay:.2f} s after start"
        elif complete_rows(run) >= target:
            if moment == "checkpoint write":
                if temporaries(run):
                    proc.send_signal(signal.SIGKILL)
                    return f"writing a checkpoint after epoch {target} or later"
            else:
                reached = reached or time.perf_counter()
                if time.perf_counter() - reached >= fraction * epoch_time:
                    proc.send_signal(signal.SIGKILL)
                    return f"{fraction:.0%} of an epoch after epoch {complete_rows(run)}'s row"
        time.sleep(0.001)
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


def run_benchmark(kills: int = 10, epochs: int = 24, seed: int = 0, workdir: Path | None = None,
                  say=print) -> Result:
    rng = random.Random(seed)
    own = workdir is None
    workdir = Path(workdir or tempfile.mkdtemp(prefix="cnnlab-kill-resume-"))
    env = environment(workdir)
    result = Result()
    try:
        straight, killed = workdir / "straight", workdir / "killed"
        start = time.perf_counter()
        done = subprocess.run(command(*TRAIN, "--epochs", epochs, "--out", straight), capture_output=True,
                              text=True, env=env, timeout=600)
        if done.returncode != 0:
            result.problems.append(f"the uninterrupted run failed: {done.stderr.strip()[-300:]}")
            return result
        reference = time.perf_counter() - start
        rows = metrics_rows(straight)
        epoch_time = max(0.01, sum(float(r) for r in _column(straight, "epoch_seconds")) / len(rows))
        say(f"uninterrupted: {epochs} epochs in {reference:.1f} s ({epoch_time:.2f} s per epoch)")

        # Kill moments spread over the run: sorted target epochs, each a random kind of moment.
        plan = sorted(rng.randint(1, epochs - 1) for _ in range(kills))
        moments = [*FIRST_MOMENTS, *(rng.choice(MOMENTS) for _ in range(kills))][:kills]
        pending = []  # kills whose recovery has not been seen yet
        segment = 0
        while True:
            segment += 1
            log = workdir / f"segment{segment}.log"
            if checkpoint_epoch(killed) is None:
                if killed.exists() or segment > 1:
                    line, problem = resume_refusal(killed, env)
                    say(f"         resume refused: {line.strip()[:160]}")
                    if problem:
                        result.problems.append(problem)
                    for k in pending:
                        k.recovered, k.note = not problem, "no checkpoint yet: resume refused, restarted from scratch"
                    pending = []
                shutil.rmtree(killed, ignore_errors=True)
                argv = command(*TRAIN, "--epochs", epochs, "--out", killed)
            else:
                argv = command("--resume", killed)
            before = set(temporaries(killed)), _stamp(killed / "metrics.csv")
            with open(log, "w") as out:
                proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
                i = len(result.kills)
                at = None
                if i < kills:
                    target = max(plan[i], complete_rows(killed) + 1)
                    at = watch_and_kill(proc, killed, moments[i], target, epoch_time, rng)
                proc.wait(timeout=600)
            text = log.read_text(errors="replace")
            _mark_resumed(pending, text)
            if at is None:
                if i < kills:
                    result.missed = kills - i
                if proc.returncode != 0:
                    result.problems.append(f"segment {segment} exited {proc.returncode}: {text.strip()[-300:]}")
                break
            kill = Kill(moments[i], at, checkpoint_epoch(killed), mid_write=bool(set(temporaries(killed)) - before[0]))
            # Rows this process wrote beyond last.pt will be redone (rows left by an earlier kill were counted then).
            if _stamp(killed / "metrics.csv") != before[1]:
                kill.epochs_lost = complete_rows(killed) - (kill.checkpoint_epoch or 0)
            result.kills.append(kill)
            pending.append(kill)
            say(f"kill {i + 1:2d}: {kill.moment:<16} ({at}) → "
                + (f"last.pt at epoch {kill.checkpoint_epoch}" if kill.checkpoint_epoch is not None
                   else "no checkpoint yet")
                + f", {kill.epochs_lost} completed epoch(s) lost"
                + (", a half-written checkpoint left behind" if kill.mid_write else ""))
        if pending:
            result.problems.append(f"{len(pending)} kill(s) never saw a successful resume")

        result.metrics_equal = metrics_rows(killed) == rows
        result.weights_equal = all(same_weights(straight / n, killed / n) for n in ("last.pt", "best.pt"))
        result.leftovers = sorted(temporaries(killed) + [p.name for p in killed.glob("*.tmp")])
        return result
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs before the run may finish (default 10)")
    parser.add_argument("--epochs", type=int, default=24, help="epochs of the run (default 24)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill plan (default 0)")
    parser.add_argument("--workdir", type=Path, help="keep the run folders and logs here (default: a temporary "
                                                     "folder, removed afterwards)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    result = run_benchmark(args.kills, args.epochs, args.seed, args.workdir)
    n = len(result.kills)
    recovered = sum(k.recovered for k in result.kills)
    restarted = sum(k.checkpoint_epoch is None for k in result.kills)
    lost = [k.epochs_lost for k in result.kills]
    print(f"{recovered}/{n} resumed ({n - restarted} from last.pt; {restarted} killed before the first checkpoint: "
          "resume refused in one line, run restarted from scratch)")
    if result.missed:
        print(f"{result.missed} planned kill(s) missed: the run finished first")
    print(f"epochs lost per kill: {lost} (max {max(lost, default=0)}); killed during a checkpoint write: "
          f"{sum(k.mid_write for k in result.kills)}")
    print(f"metrics.csv {'identical' if result.metrics_equal else 'DIFFERENT'} (ignoring {', '.join(TIMING)}); "
          f"weights of last.pt and best.pt {'identical' if result.weights_equal else 'DIFFERENT'}"
          + (f"; left behind: {result.leftovers}" if result.leftovers else ""))
    for problem in result.problems:
        print(f"problem: {problem}")
    ok = result.ok and n >= args.kills
    print(f"{'OK' if ok else 'FAIL'} ({time.perf_counter() - start:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
