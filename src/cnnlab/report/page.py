"""The comparison report as files: a self-contained index.html and a results.md with the same content.

The content is assembled once as a list of blocks (heading, paragraph, table, image) and rendered twice, so the
HTML and the Markdown cannot drift apart. The HTML embeds every PNG as a data: URI and carries its CSS inline, with
a Content-Security-Policy that forbids any other load: it opens from disk with no network.
"""

import base64
import html
import io
import time
from pathlib import Path

from cnnlab import __version__
from cnnlab.errors import CnnlabError
from cnnlab.report.compare import (GROUP_IGNORED, IDENTITY, IGNORED, Stat, best_run, differing_fields, factors,
                                   format_value, group_runs, grouped_table, primary_metric, results_table,
                                   run_metrics)
from cnnlab.report.plots import factor_figures, plot_runs
from cnnlab.report.records import CONFUSION_PNG, EVAL_JSON, confused_pairs, load_runs

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HEADERS = {"best_val_acc": "best val acc", "best_val_loss": "best val loss", "test_top1": "test top-1",
           "test_top5": "test top-5", "test_loss": "test loss", "wall_seconds": "wall s",
           "images_per_second": "images/s"}
FORMATS = {"best_val_acc": ".4f", "test_top1": ".4f", "test_top5": ".4f", "best_val_loss": ".4g",
           "test_loss": ".4g", "parameters": ",.0f", "epochs": ".3g", "wall_seconds": ".1f",
           "images_per_second": ",.0f"}
CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 0; background: #fff; }
main { max-width: 1400px; margin: 0 auto; padding: 16px 24px 48px; }
h1 { font-size: 22px; margin: 8px 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 12.5px; width: max-content; }
th, td { border: 1px solid #d0d0d0; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f2f4f7; white-space: nowrap; } tr:nth-child(even) td { background: #fafafa; }
td { max-width: 22em; } td:first-child { white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.scroll { overflow-x: auto; } img { max-width: 100%; height: auto; display: block; margin: 6px 0 14px; }
img.square { max-width: min(100%, 640px); }
.note { color: #666; font-style: italic; } .meta { color: #555; }
"""


def write_report(runs, out_dir) -> Path:
    """Write out_dir/index.html (self-contained) and out_dir/results.md (+ its PNGs); return the index.html path."""
    runs = load_runs(runs)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CnnlabError(f"{out} is a file; give -o a folder for index.html and results.md")
    out.mkdir(parents=True, exist_ok=True)
    blocks = report_blocks(runs)
    images = {b[1]: b[2] for b in blocks if b[0] == "img"}
    for name, data in images.items():  # results.md links these; index.html embeds them
        (out / name).write_bytes(data)
    (out / "results.md").write_text(render_markdown(blocks), encoding="utf-8")
    index = out / "index.html"
    index.write_text(render_html(blocks), encoding="utf-8")
    return index


def report_blocks(runs) -> list[tuple]:
    """The report's content: ("h1"|"h2"|"p"|"note", text), ("table", rows) or ("img", file name, PNG bytes, alt)."""
    runs = load_runs(runs)
    metric = primary_metric(runs)
    blocks = [("h1", f"cnnlab report: {len(runs)} run{'s' if len(runs) != 1 else ''}"),
              ("p", f"Generated {time.strftime('%Y-%m-%d %H:%M')} by cnnlab {__version__} from each run's "
                    "metrics.csv and summary.json (never from checkpoints).")]
    blocks += [("h2", "Curves"),
               ("img", "curves.png", png(plot_runs(runs, "val_acc" if metric == "best_val_acc" else "val_loss")),
                "training curves per epoch for every run, train dashed, validation solid")]
    if len({str(r.config.get("batch_size")) for r in runs}) > 1:
        # Different batch sizes take different numbers of steps per epoch: compare per step and per second too.
        curve_metric = "val_acc" if metric == "best_val_acc" else "val_loss"
        blocks += [("img", "curves_step.png", png(plot_runs(runs, curve_metric, x="step")),
                    "the same curves against optimizer steps"),
                   ("img", "curves_time.png", png(plot_runs(runs, curve_metric, x="elapsed_seconds")),
                    "the same curves against training seconds")]
    blocks += [("h2", "Results"), ("table", results_table(runs)),
               ("p", "Columns between dataset and parameters are the settings that differ between the runs "
                     f"({', '.join(IGNORED)} are not compared). Best val acc and loss are the best epoch's, from "
                     "metrics.csv; test numbers are the best checkpoint's, from summary.json.")]
    copies = dict.fromkeys((r.summary.get("data_label"), r.summary.get("data_copy")) for r in runs
                           if r.summary.get("data_copy"))
    if copies:
        blocks.append(("p", "Data: " + "; ".join(f"{label}: {what}" for label, what in copies) + "."))
    shared = _shared_settings(runs)
    if shared:
        blocks.append(("p", "Settings shared by all runs: " + shared + "."))
    groups = group_runs(runs)
    if any(len(g.runs) > 1 for g in groups):
        blocks += [("h2", "Mean ± std over seeds"), ("table", grouped_table(runs)),
                   ("p", "Runs whose configs are equal except for " + ", ".join(GROUP_IGNORED) + " form a group; "
                         "each cell is mean ± sample standard deviation (n − 1) [95 % confidence interval of the "
                         "mean, Student's t with n − 1 degrees of freedom] over the group's n runs. With n = 3 the "
                         "interval is ±2.48 sd: a few seeds pin a mean down only loosely.")]
        for factor, fig in factor_figures(runs, metric):
            blocks.append(("img", f"factor_{_file_part(factor)}.png", png(fig), f"{metric} by {factor}"))
    blocks += _best_run_blocks(runs, metric)
    blocks += [("h2", "Run folders"),
               ("table", [{"run": r.name, "folder": str(r.path), "stopped": r.summary.get("stop_reason"),
                           "git": r.summary.get("git_revision"), "torch": r.summary.get("torch")} for r in runs])]
    blocks += [("note", note) for r in runs for note in r.notes]
    return blocks


MAX_GROUP_SECTIONS = 8  # beyond this many seed groups only the best run overall is shown in detail


def _best_run_blocks(runs, metric) -> list[tuple]:
    """The best run's evaluation pictures and tables, then the same for the best run of every other seed group."""
    best = best_run(runs)
    if best is None:
        return [("h2", "Best run"), ("note", "No run has a validation result to choose the best run by "
                                             "(trained with --val-split 0); confusion matrix left out.")]
    value = run_metrics(best)[metric]
    why = f"chosen by {HEADERS[metric]} {value:.4g}" if value is not None else "the only run"
    blocks = [("h2", f"Best run: {best.name}"), ("p", f"{best.path} — {why}, never by the test split.")]
    blocks += _evaluation_blocks(best, "best")
    groups = group_runs(runs)
    others = [g for g in groups if best not in g.runs]
    if others and len(groups) > MAX_GROUP_SECTIONS:
        return blocks + [("note", f"The runs form {len(groups)} seed groups: only the best run overall is shown in "
                                  f"detail (up to {MAX_GROUP_SECTIONS} groups each get their best run's section); "
                                  "report on fewer runs to see each group's.")]
    varied = factors(groups)
    for number, group in enumerate(others, start=1):
        run = best_run(group.runs)
        if run is None:
            continue
        value = run_metrics(run)[metric]
        settings = ", ".join(f"{k}={format_value(group.config.get(k))}" for k in varied)
        blocks += [("h2", f"Best of its group: {run.name}"),
                   ("p", f"{run.path} — the best of the {len(group.runs)} run{'s' if len(group.runs) > 1 else ''} "
                         f"with {settings}" + (f", by {HEADERS[metric]} {value:.4g}" if value is not None else "")
                         + ".")]
        blocks += _evaluation_blocks(run, f"group{number}")
    return blocks


def _evaluation_blocks(run, tag: str) -> list[tuple]:
    """What `cnnlab eval` left in a run folder: confusion matrix, calibration, the first layer's weights, the most
    confident mistakes, per-class accuracy and the most-confused pairs; a note for what is missing."""
    if run.summary.get("test_top1") is None and run.best("val_acc") is None:
        return []  # regression: there is no confusion matrix or per-class accuracy to show
    blocks = []
    data = run.confusion_png.read_bytes() if run.confusion_png else b""
    if data.startswith(PNG_SIGNATURE):
        blocks.append(("img", f"confusion_{tag}.png", data, f"confusion matrix on the test split for {run.name}"))
    else:
        blocks.append(("note", f"No confusion matrix: {run.path} has no readable {CONFUSION_PNG}; run "
                               f"`cnnlab eval {run.path}` to make one."))
    reliability = run.reliability_png.read_bytes() if run.reliability_png else b""
    if run.ece is not None and reliability.startswith(PNG_SIGNATURE):
        blocks += [("p", f"Calibration on the test split: expected calibration error {run.ece:.4f} (15 "
                         "equal-width confidence bins; 0 means each confidence equals the accuracy at it)."),
                   ("img", f"reliability_{tag}.png", reliability, f"reliability diagram on the test split for "
                                                                  f"{run.name}")]
    for path, name, alt in ((run.filters_png, "filters", "the first layer's weights as images"),
                            (run.mistakes_png, "mistakes", "the most confident mistakes on the test split")):
        picture = path.read_bytes() if path else b""
        if picture.startswith(PNG_SIGNATURE):
            blocks.append(("img", f"{name}_{tag}.png", picture, f"{alt} for {run.name}"))
    if run.per_class:
        blocks += [("p", "Per-class test accuracy:"),
                   ("table", [{"class": c, "accuracy": a} for c, a in run.per_class.items()])]
        pairs = confused_pairs(run.confusion, list(run.per_class)) if run.confusion else []
        if pairs:
            blocks += [("p", "The most-confused pairs on the test split (true class → predicted class):"),
                       ("table", pairs)]
    else:
        blocks.append(("note", f"No per-class accuracy in the run folder ({EVAL_JSON}); left out."))
    return blocks


def png(fig) -> bytes:
    """A figure as PNG bytes; no Software tag, so the same figure gives the same bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def render_html(blocks: list[tuple]) -> str:
    """A standalone page: inline CSS, images as data: URIs, every piece of text escaped."""
    title = next((b[1] for b in blocks if b[0] == "h1"), "cnnlab report")
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             # Forbid every load but the embedded images and the inline style: proof that nothing is fetched.
             '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
             'style-src \'unsafe-inline\'">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body><main>"]
    for kind, *rest in blocks:
        if kind in ("h1", "h2"):
            parts.append(f"<{kind}>{html.escape(rest[0])}</{kind}>")
        elif kind in ("p", "note"):
            parts.append(f'<p class="{"note" if kind == "note" else "meta"}">{html.escape(rest[0])}</p>')
        elif kind == "img":
            name, data, alt = rest
            parts.append(f'<img src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}" '
                         f'alt="{html.escape(alt)}" title="{html.escape(name)}"'
                         + (' class="square">' if name.startswith(("confusion", "filters")) else ">"))
        elif kind == "table":
            headers, cells, numeric = _cells(rest[0])
            head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
            body = "".join("<tr>" + "".join(f'<td{" class=num" if n else ""}>{html.escape(c)}</td>'
                                            for c, n in zip(row, numeric)) + "</tr>" for row in cells)
            parts.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
                         "</table></div>")
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


def render_markdown(blocks: list[tuple]) -> str:
    """The same content as GitHub-flavoured Markdown; images link the PNG files written beside it."""
    lines = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2"):
            lines += [("# " if kind == "h1" else "## ") + rest[0], ""]
        elif kind in ("p", "note"):
            lines += [f"*{rest[0]}*" if kind == "note" else rest[0], ""]
        elif kind == "img":
            lines += [f"![{rest[2]}]({rest[0]})", ""]
        elif kind == "table":
            headers, cells, numeric = _cells(rest[0])
            lines.append("| " + " | ".join(map(_md, headers)) + " |")
            lines.append("|" + "|".join("---:" if n else "---" for n in numeric) + "|")
            lines += ["| " + " | ".join(map(_md, row)) + " |" for row in cells]
            lines.append("")
    return "\n".join(lines)


def _cells(rows: list[dict]) -> tuple[list[str], list[list[str]], list[bool]]:
    """Headers, formatted cells and which columns are numeric; columns empty in every row are dropped."""
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if any(r.get(k) is not None for r in rows)]
    cells = [[format_cell(k, r.get(k)) for k in keys] for r in rows]
    numeric = [k in FORMATS or k in ("n", "accuracy") for k in keys]
    return [HEADERS.get(k, k.replace("_", " ")) for k in keys], cells, numeric


def format_cell(key: str, value) -> str:
    """A table value as text: metrics to a fixed precision, Stat as mean ± std [95 % CI], settings as the CLI spells
    them."""
    if value is None:
        return "—"
    spec = FORMATS.get(key, ".4f" if key == "accuracy" else None)
    if isinstance(value, Stat):
        mean = format(value.mean, spec or ".4g")
        if not value.std:  # one run, or the same value in every run (parameters, epochs): the value says it all
            return mean
        lo, hi = value.ci95
        return f"{mean} ± {format(value.std, spec or '.4g')} [{format(lo, spec or '.4g')}, {format(hi, spec or '.4g')}]"
    if spec and isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, spec)
    if key == "seeds":
        return ", ".join(map(str, value))
    return format_value(value)


def _shared_settings(runs) -> str:
    configs = [r.config for r in runs]
    skip = set(differing_fields(configs, ignore=())) | set(IGNORED) | set(IDENTITY)
    return ", ".join(f"{k}={format_value(v)}" for k, v in configs[0].items() if k not in skip and v is not None)


def _md(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _file_part(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)
