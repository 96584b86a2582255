"""How fast the quick commands start: `cnnlab --help` and `cnnlab presets` as whole processes, against the bare
interpreter (`python -c pass`) measured in the same run.

Each command is a fresh `python -m cnnlab …` process, timed from start to exit. The commands and the reference take
turns for R rounds, the order flipping every round, so load from other processes falls on all alike; the median
round is the typical one, the best round the least disturbed (load only ever adds time). ratio = median seconds /
the reference's median seconds.

Then each command runs once more under `python -X importtime` to list what it loaded: `--help` and the listings
must load neither torch, torchvision nor matplotlib (tests/test_cli.py checks the same in-process).

    python benchmarks/cli_startup.py            # 15 rounds (~10 s)
    python benchmarks/cli_startup.py --quick    # 5 rounds

Target: `cnnlab --help` ≤ 0.5 s on 2 cores — printed, never enforced. The script exits 1 when a command fails or
loads one of those modules.
"""

import os
import platform
import statistics
import subprocess
import sys
import time

import cnnlab
from common import cpu_name, exit_if_wrong, parser

COMMANDS = [["--help"], ["presets"]]
HEAVY = ("torch", "torchvision", "matplotlib")
TARGET_SECONDS = {"--help": 0.5}


def run_seconds(argv: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=120)
    return time.perf_counter() - start, done


def loaded_heavy(args: list[str]) -> list[str]:
    """The heavy packages a `cnnlab ARGS` process imports, read from -X importtime's report on stderr."""
    _, done = run_seconds(["-X", "importtime", "-m", "cnnlab", *args])
    names = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines()
             if line.startswith("import time:")}
    return sorted(names & set(HEAVY))


def main() -> None:
    cli = parser(__doc__)
    cli.add_argument("--quick", action="store_true", help="5 rounds instead of 15")
    cli.add_argument("--rounds", type=int, help="rounds of every command (default: 15, or 5 with --quick)")
    args = cli.parse_args()
    rounds = args.rounds or (5 if args.quick else 15)

    print(f"machine: CPU ({cpu_name()}), {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; Python "
          f"{platform.python_version()}; cnnlab from {os.path.dirname(cnnlab.__file__)}")
    runs = {"python -c pass": ["-c", "pass"], **{"cnnlab " + " ".join(c): ["-m", "cnnlab", *c] for c in COMMANDS}}
    seconds = {name: [] for name in runs}
    failed = {}
    for r in range(rounds):
        for name in runs if r % 2 == 0 else reversed(runs):
            elapsed, done = run_seconds(runs[name])
            seconds[name].append(elapsed)
            if done.returncode != 0:
                failed[name] = f"`{name}` exited with {done.returncode}: {done.stderr.strip()[-300:]}"
    problems = list(failed.values())
    reference = statistics.median(seconds["python -c pass"])
    print(f"{rounds} rounds, whole processes (interpreter start to exit):")
    print(f"  {'command':<18} {'median s':>9} {'best s':>8} {'ratio':>7}  target")
    for name, times in seconds.items():
        median = statistics.median(times)
        target = TARGET_SECONDS.get(name.removeprefix("cnnlab "))
        print(f"  {name:<18} {median:>9.3f} {min(times):>8.3f} {median / reference:>6.1f}×  "
              + (f"≤ {target} s: {'met' if median <= target else 'missed'}" if target else "—"))
    for command in COMMANDS:
        name, heavy = "cnnlab " + " ".join(command), loaded_heavy(command)
        print(f"  {name} loaded: " + (", ".join(heavy) if heavy else "none of " + ", ".join(HEAVY)))
        if heavy:
            problems.append(f"`{name}` imports {', '.join(heavy)}; it must start without them")
    exit_if_wrong(problems)


if __name__ == "__main__":
    main()
