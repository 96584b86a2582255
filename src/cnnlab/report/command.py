"""`cnnlab report RUN... -o DIR`: the comparison report from the command line (registered by cli.py)."""

from pathlib import Path

from cnnlab.report.page import write_report


def report_main(run_dirs, out_dir) -> Path:
    """Write the report for `run_dirs` (run folders or folders of runs) into `out_dir`; return out_dir."""
    write_report(run_dirs, out_dir)
    return Path(out_dir)


def add_report_parser(subparsers):
    """Register `report` on an argparse subparsers object; the parsed args' `run` callable does the work."""
    parser = subparsers.add_parser(
        "report", help="compare runs: overlaid curves, results table, mean ± std over seeds → HTML + Markdown")
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="run folders, or folders holding run folders (a sweep: its sub-folders that are runs)")
    parser.add_argument("-o", "--out", required=True, metavar="DIR",
                        help="where to write index.html (self-contained) and results.md")
    parser.set_defaults(run=_report)
    return parser


def _report(args) -> None:
    out = report_main(args.runs, args.out)
    print(f"report: {out / 'index.html'}  (tables also in {out / 'results.md'})")
