"""`cnnlab report RUN... -o DIR`: what the command does (cli.py declares its arguments and prints its results)."""

from pathlib import Path

from cnnlab.errors import CnnlabError
from cnnlab.report.curves import save_curves
from cnnlab.report.page import write_report
from cnnlab.report.records import load_runs


def report_main(run_dirs, out_dir) -> Path:
    """Write the report for `run_dirs` (run folders or folders of runs) into `out_dir`; return out_dir."""
    write_report(run_dirs, out_dir)
    return Path(out_dir)


def write_curves(run_dirs, out_dir) -> list[Path]:
    """Each run's learning curves, drawn from its metrics.csv, as a small OUT_DIR/<run name>.png; nothing else."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CnnlabError(f"{out} is a file; give -o a folder for the curves")
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(run_dirs)
    return [save_curves(run.metrics, out / f"{run.name}.png", small=True,
                        title=f"{run.name}: {run.config.get('model')} on {run.config.get('dataset')}")
            for run in runs]
