"""`cnnlab report RUN... -o DIR`: the comparison report from the command line (registered by cli.py)."""

from pathlib import Path

from cnnlab.errors import CnnlabError
from cnnlab.report.curves import save_curves
from cnnlab.report.page import write_report
from cnnlab.report.runs import load_runs


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


def add_report_parser(subparsers):
    """Register `report` on an argparse subparsers object; the parsed args' `run` callable does the work."""
    parser = subparsers.add_parser(
        "report", help="compare runs: overlaid curves, results table, mean ± std over seeds → HTML + Markdown")
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="run folders, or folders holding run folders (a sweep: its sub-folders that are runs)")
    parser.add_argument("-o", "--out", required=True, metavar="DIR",
                        help="where to write index.html (self-contained) and results.md")
    parser.add_argument("--curves-only", action="store_true",
                        help="write only each run's learning curves, DIR/<run name>.png (small, e.g. for docs/)")
    parser.set_defaults(run=_report)
    return parser


def _report(args) -> None:
    if args.curves_only:
        for path in write_curves(args.runs, args.out):
            print(f"curves: {path}")
        return
    out = report_main(args.runs, args.out)
    print(f"report: {out / 'index.html'}  (tables also in {out / 'results.md'})")
