"""The `cnnlab` command: a thin argparse layer over the Python API."""

import argparse
import csv
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Callable, NamedTuple

from cnnlab import __version__, presets
from cnnlab.config import TrainConfig, coerce, fit_to_epochs, read_toml
from cnnlab.datasets import DATASETS
from cnnlab.errors import CnnlabError

# Each command is a pair: `_add_X` declares its arguments, `_run_X` does the work and imports what the work needs
# when it runs. Registering them takes only the settings, the presets and the table of datasets (torch-free, at the
# bottom of the package), so `cnnlab --help`, `presets` and `data info` start without torch and matplotlib
# (together ~2 s on 2 cores), as tests/test_cli.py checks. A new command is a row of COMMANDS; a new `data` action
# a row of DATA_ACTIONS.


# -- models -------------------------------------------------------------------------------------------------------
def _add_models(parser) -> None:
    parser.add_argument("--num-classes", type=int, default=1000, help="output classes (default: 1000)")
    parser.add_argument("--image-size", type=int, default=224, help="input height = width (default: 224)")
    parser.add_argument("--in-channels", type=int, default=3, help="input channels (default: 3)")
    parser.add_argument("--head", default="imagenet", help="VGG head: imagenet or cifar (default: imagenet)")
    parser.add_argument("--stem", default="imagenet", help="ResNet stem: imagenet or cifar (default: imagenet)")
    parser.add_argument("--format", choices=("table", "csv"), default="table")


def _run_models(args) -> None:
    from cnnlab.models.zoo_table import model_table

    rows = model_table(num_classes=args.num_classes, image_size=args.image_size, in_channels=args.in_channels,
                       head=args.head, stem=args.stem)
    if args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return
    header = ["name", "alias", "family", "params", "MACs", "description"]
    cells = [[r["name"], r["alias"], r["family"], f"{r['params']:,}",
              _si(r["macs"]) if r["macs"] is not None else "too small", r["description"]] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    right = {3, 4}
    print(f"{args.num_classes} classes, {args.in_channels}×{args.image_size}×{args.image_size} input, "
          f"VGG head {args.head}, ResNet stem {args.stem}")
    for line in [header, ["-" * w for w in widths], *cells]:
        print("  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths)))
              .rstrip())


def _si(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)


# -- train: one flag per TrainConfig field --------------------------------------------------------------------------
# The names users of timm's and torchvision's training scripts already type, for the same settings.
ALIASES = {"optimizer": ["--opt"], "schedule": ["--sched"], "batch_size": ["-b"], "out": ["--output", "--output-dir"],
           "label_smoothing": ["--smoothing"], "clip_grad_norm": ["--clip-grad"]}


def add_arguments(parser) -> None:
    """One --flag per field (and its aliases); every flag defaults to None so only what the user typed overrides
    the config. `--amp` is `--precision fp16`, mixed precision as timm and torchvision mean it."""
    for f in fields(TrainConfig):
        flags = ["--" + f.name.replace("_", "-"), *ALIASES.get(f.name, [])]
        text = f.metadata["help"].replace("%", "%%")  # argparse formats help strings with %
        if "bool" in str(f.type):
            parser.add_argument(*flags, dest=f.name, default=None, nargs="?", const="true", metavar="BOOL",
                                help=text)
        else:
            parser.add_argument(*flags, dest=f.name, default=None, help=text)
    parser.add_argument("--amp", dest="precision", action="store_const", const="fp16",
                        help="= --precision fp16: float16 autocast with loss scaling (on GPUs without bf16; "
                             "--precision auto already picks the fastest)")


def config_from_args(args, notes: list[str] | None = None) -> TrainConfig:
    """The settings of `cnnlab train`: --config (a TOML file or a preset's name), then the flags given. `notes`, if
    given, receives a line for each of the file's settings in epochs rescaled to --epochs (see fit_to_epochs)."""
    path = presets.find(args.config, "train") if getattr(args, "config", None) else None
    file = read_toml(path) if path else {}
    config = TrainConfig.from_dict(file, str(path))
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    rescaled, lines = fit_to_epochs(file, given)
    if notes is not None:
        notes.extend(lines)
    known = {f.name: f for f in fields(TrainConfig)}
    for name, value in {**given, **rescaled}.items():
        setattr(config, name, coerce(known[name], value, "--" + name.replace("_", "-")))
    return config.validate()


def _add_train(parser) -> None:
    parser.add_argument("--config", help="a preset's name (`cnnlab presets`) or a TOML file of settings; flags "
                                         "override it")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    add_arguments(parser)


def _run_train(args) -> None:
    from cnnlab.engine import fit

    if args.resume:
        config = None
        if args.epochs is not None:  # the one setting a resume may change: train on for more epochs
            config = TrainConfig.from_dict({"epochs": args.epochs}, "--epochs")
        fit(config, resume=args.resume)
    else:
        notes = []
        fit(config_from_args(args, notes), notes=notes)


# -- eval, predict, explain, export ---------------------------------------------------------------------------------
def _add_eval(parser) -> None:
    parser.add_argument("target", help="a run folder or a checkpoint file")
    parser.add_argument("--split", default="test", help="test (default) or val")
    parser.add_argument("--data", help="the dataset path, if it moved since training")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--save-predictions", nargs="?", const="", metavar="FILE",
                        help="write each example's logits, softmax probabilities, predicted and true label (class "
                             "indices) to FILE: .npz (default: RUN/predictions_SPLIT.npz), or a CSV of index, "
                             "label, predicted, prob_<class>… when FILE ends in .csv")


def _run_eval(args) -> None:
    from cnnlab.evaluate import evaluate_run

    result = evaluate_run(args.target, args.split, args.data, args.device, save_predictions=args.save_predictions)
    print(f"{result['split']} ({result['n']} images): loss {result['loss']:.4f}"
          + (f"  top-1 {result['acc']:.4f}" if "acc" in result else "")
          + (f"  top-5 {result['top5']:.4f}" if "top5" in result else "")
          + f"  ({result['precision']}, {result['precision_reason']})")
    for name, acc in result.get("per_class", {}).items():
        print(f"  {name:<24} {acc:.4f}")
    if "confusion_png" in result:
        print(f"confusion matrix: {result['confusion_png']}")
    if "ece" in result:
        print(f"calibration: expected calibration error {result['ece']:.4f} ({len(result['calibration'])} bins); "
              f"reliability diagram: {result['reliability_png']}")
    if "filters_png" in result:
        print(f"first layer's weights: {result['filters_png']}")
    if "mistakes_png" in result:
        print(f"most confident mistakes: {result['mistakes_png']}")
    if "predictions" in result:
        print(f"predictions: {result['predictions']}")


def _add_predict(parser) -> None:
    parser.add_argument("run_dir", metavar="RUN", help="a run folder or a checkpoint file")
    parser.add_argument("images", nargs="+", help="image files, folders (every image below them) or glob patterns "
                                                  "(quote them: 'photos/**/*.jpg')")
    parser.add_argument("--out", metavar="FILE.csv", help="write path, top1, p1, … topk, pk to this CSV instead of "
                                                          "printing (written when every image was read)")
    parser.add_argument("--topk", type=int, default=5)


def _run_predict(args) -> None:
    from cnnlab.evaluate import predict_stream, predict_to_csv

    if args.out:
        rows = predict_to_csv(args.run_dir, args.images, args.out, args.topk)
        print(f"{rows} predictions → {args.out}")
        return
    for path, top in predict_stream(args.run_dir, args.images, args.topk):
        print(path + ": " + ", ".join(f"{name} {p:.3f}" for name, p in top), flush=True)


def _add_explain(parser) -> None:
    parser.add_argument("run_dir", metavar="RUN", help="a run folder or a checkpoint file")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--out", metavar="DIR", help="where the PNGs go (default: RUN/explain)")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--class", dest="class_name", metavar="NAME",
                        help="the class to explain (default: each image's top-1 prediction)")


def _run_explain(args) -> None:
    from cnnlab.explain import explain_run

    for path in explain_run(args.run_dir, args.images, args.out, args.topk, args.class_name):
        print(path)


def _add_export(parser) -> None:
    parser.add_argument("target", metavar="RUN", help="a run folder (its best.pt) or a checkpoint file")
    parser.add_argument("--format", required=True, choices=("onnx", "torchscript"),
                        help="onnx (needs the export extra: pip install 'cnnlab[export]') or torchscript")
    parser.add_argument("--out", metavar="FILE",
                        help="the model file (default: model.onnx or model.ts.pt beside the checkpoint); FILE.json "
                             "beside it records mean, std, input shape, channel order and class names")


def _run_export(args) -> None:
    from cnnlab.export import export_model

    exported = export_model(args.target, args.format, args.out)
    print(f"{args.format}: {exported.path}")
    print(f"preprocessing: {exported.meta_path}")
    print(f"checked against PyTorch on {exported.checked} inputs: max |difference| {exported.max_diff:.2g} "
          f"(fp32, dynamic batch)")


# -- sweep, presets, report -----------------------------------------------------------------------------------------
def _add_sweep(parser) -> None:
    parser.add_argument("file", help="a sweep preset's name (`cnnlab presets`) or a sweep TOML file ([sweep], "
                                     "[base], [[variant]], [grid])")
    parser.add_argument("--no-report", action="store_true", help="only run; skip the report at the end")
    parser.add_argument("--dry-run", action="store_true",
                        help="print each run's folder, the settings that differ and its data file; train and create "
                             "nothing")
    parser.add_argument("--data-root", metavar="DIR",
                        help="the folder each run's dataset is found in, and relative `data` values resolve against "
                             "(default: the file's [sweep] data_root, else the data home: $CNNLAB_DATA, else "
                             "~/.cache/cnnlab/datasets)")
    parser.add_argument("--download", action="store_true",
                        help="fetch the official files of each dataset the data home lacks into it first "
                             "(= --set download=true)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="replace a [base] setting for every run, e.g. --set epochs=1 (a TOML value, else text); "
                             "repeatable")


def _run_sweep(args) -> None:
    from cnnlab.sweep import describe, parse_settings, plan, run_sweep

    overrides = parse_settings(args.set) | ({"download": True} if args.download else {})
    sweep = plan(args.file, data_root=args.data_root, overrides=overrides)
    if args.dry_run:
        print("\n".join(describe(sweep)))
    else:
        run_sweep(sweep, report=not args.no_report)


def preset_summary(path: Path) -> tuple[str, str]:
    """(kind, what it trains) of a preset, read from its settings: `mlp on mnist, 10 epochs`, `30 runs of mlp on
    cifar10`."""
    from cnnlab.sweep import read_sweep, run_settings

    values = read_toml(path, "preset")
    if presets.kind_of(values) == "tune":
        base = values.get("base", {})
        trials = values.get("tune", {}).get("n_trials", 20)
        return "tune", (f"{trials} trials of {base.get('model', TrainConfig.model)} on "
                        f"{base.get('dataset') or 'the dataset its data holds'}, {base.get('epochs', 10)} epochs each")
    if presets.kind_of(values) == "train":
        config = TrainConfig.from_toml(path)
        return "train", f"{config.model} on {config.dataset or 'the dataset --data holds'}, {config.epochs} epochs"
    runs = [settings for _, settings, _ in run_settings(path, read_sweep(path))]
    models = dict.fromkeys(s.get("model", TrainConfig.model) for s in runs)
    datasets = dict.fromkeys(s.get("dataset") or "the dataset its data holds" for s in runs)
    return "sweep", f"{len(runs)} runs of {', '.join(models)} on {', '.join(datasets)}"


def preset_listing(folder: Path = presets.FOLDER) -> list[str]:
    """What `cnnlab presets` prints: a table of every preset's name, kind and what it trains, then how to use one."""
    rows = [(name, *preset_summary(folder / f"{name}.toml")) for name in presets.names(folder)]
    width = max(len("NAME"), *(len(name) for name, _, _ in rows))
    lines = [f"{'NAME':<{width}}  KIND   WHAT"] + [f"{n:<{width}}  {k:<5}  {what}" for n, k, what in rows]
    return lines + ["", "Run one: cnnlab train --config NAME (train), cnnlab sweep NAME (sweep), cnnlab tune NAME "
                        "(tune). Copy one to edit: cnnlab presets NAME > mine.toml",
                    "They read each dataset from the data home ($CNNLAB_DATA; `cnnlab data list` shows it); "
                    "--data or --data-root overrides it."]


def _add_presets(parser) -> None:
    parser.add_argument("name", nargs="?", help="the preset to print, e.g. to copy and edit it")


def _run_presets(args) -> None:
    if args.name:
        print(presets.preset_path(args.name).read_text(encoding="utf-8"), end="")
    else:
        print("\n".join(preset_listing()))


def _add_report(parser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="run folders, or folders holding run folders (a sweep: its sub-folders that are runs)")
    parser.add_argument("-o", "--out", required=True, metavar="DIR",
                        help="where to write index.html (self-contained) and results.md")
    parser.add_argument("--curves-only", action="store_true",
                        help="write only each run's learning curves, DIR/<run name>.png (small, e.g. for docs/)")


def _run_report(args) -> None:
    from cnnlab.report.command import report_main, write_curves

    if args.curves_only:
        for path in write_curves(args.runs, args.out):
            print(f"curves: {path}")
        return
    out = report_main(args.runs, args.out)
    print(f"report: {out / 'index.html'}  (tables also in {out / 'results.md'})")


# -- data ACTION ----------------------------------------------------------------------------------------------------
def _add_dataset(parser) -> None:
    """What `data info` and `data prepare` take: a dataset's files and how to read them."""
    parser.add_argument("path", nargs="?", help="the dataset's folder or archive (with --download: where to save "
                                                "it); without it, --dataset's copy in the data home")
    parser.add_argument("--dataset", help=", ".join(s.name for s in DATASETS.values() if not s.generated)
                        + " (default: detected)")
    parser.add_argument("--data-root", metavar="DIR", help="the data home to look in without PATH (default: "
                                                           "$CNNLAB_DATA, else ~/.cache/cnnlab/datasets)")
    parser.add_argument("--labels", default="fine", help="CIFAR-100 label set: fine (100) or coarse (20)")
    parser.add_argument("--cache-dir", help="where prepared arrays are kept (default: ~/.cache/cnnlab)")
    parser.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images and count them")
    parser.add_argument("--download", action="store_true", help="fetch the official archive into PATH first")


def _data_options(args) -> dict:
    return {"labels": args.labels, "cache_dir": args.cache_dir, "skip_bad_images": args.skip_bad_images,
            "download": args.download, "data_root": args.data_root}


def _run_data_info(args) -> None:
    from cnnlab.data import dataset_info

    info = dataset_info(args.path, args.dataset, **_data_options(args))
    print(f"path:       {info['path']}")
    print(f"dataset:    {info['dataset']}")
    print(f"format:     {info['format']}")
    print(f"checksum:   {info['checksum']}")
    if info["classes"]:
        shown = ", ".join(info["classes"][:10]) + (", …" if len(info["classes"]) > 10 else "")
        print(f"classes:    {len(info['classes'])} ({shown})")
    print(f"image size: {info['image_size']}")
    official = {"test": info["notes"].get("test_is_official", "test")} if info["notes"] else {}
    for split, count in info["splits"].items():
        label = f"{split} (official {official[split]})" if official.get(split, split) != split else split
        line = f"{label + ':':<28}{count:>7} images"
        per_class = info["per_class"].get(split)
        if per_class:
            low, high = min(per_class), max(per_class)
            line += f", {low} per class" if low == high else f", {low}–{high} per class"
        print(line)
    if info["notes"].get("bad_images_skipped"):
        print(f"skipped:    {info['notes']['bad_images_skipped']} unreadable images (--skip-bad-images)")
    print(f"read:       {info['read']}")


def _run_data_prepare(args) -> None:
    from cnnlab.data import load_dataset

    start = time.perf_counter()
    dataset = load_dataset(args.dataset, args.path, **_data_options(args))
    sizes = ", ".join(f"{len(s)} {name}" for name, s in dataset.splits.items())
    print(f"{dataset.name} ({dataset.format}): {sizes}; {len(dataset.classes)} classes; "
          f"ready in {time.perf_counter() - start:.1f} s (decoding took {dataset.notes.get('prepare_seconds', 0)} s "
          "when first prepared)")


# -- tune ----------------------------------------------------------------------------------------------------------
def _add_tune(parser) -> None:
    parser.add_argument("file", help="a tune preset's name or a tune TOML file ([tune], [base], [space])")
    parser.add_argument("--storage", metavar="URL",
                        help="the study's storage, shared by every process that runs the same command: an RDB URL "
                             "(sqlite:///study.db, postgresql://…, mysql://…) or a journal file's path (default: "
                             "OUT/study.journal)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="run N trials at once on this machine, as N processes, each with its share of the CPU "
                             "cores (or one GPU each)")
    parser.add_argument("--n-trials", type=int, metavar="N", help="the study's total trials (default: the file's)")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="start no new trial after this many seconds (running ones finish)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="replace a [base] setting for every trial, e.g. --set epochs=2; repeatable")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the space, the objective, the pruner and the trial budget; train nothing")
    parser.add_argument("--no-report", action="store_true", help="skip the study report at the end")


def _run_tune(args) -> None:
    # Optuna and torch are imported here: the extra is optional and `cnnlab --help` stays instant.
    from cnnlab import tune
    from cnnlab.sweep import parse_settings

    if args.workers < 1:
        raise CnnlabError(f"--workers {args.workers}: use 1 or more processes")
    if args.timeout is not None and args.timeout <= 0:
        raise CnnlabError(f"--timeout {args.timeout:g}: use a positive number of seconds")
    plan = tune.plan(args.file, args.storage, parse_settings(args.set), args.n_trials)
    if args.dry_run:
        study = tune.load_study(plan, create=False)
        print("\n".join(tune.describe(plan, tune.trial_counts(study) if study is not None else None)))
        return
    if args.workers > 1:
        tail = [args.file, "--storage", plan.storage, "--n-trials", str(plan.n_trials)]
        tail += ["--timeout", str(args.timeout)] if args.timeout else []
        for item in args.set:
            tail += ["--set", item]
        code = tune.run_workers(plan, tail, args.workers)
        if code:
            raise SystemExit(code)
    else:
        counts = tune.run_worker(plan, timeout=args.timeout)
        print("study so far: " + ", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items())))
    print(tune.best_line(plan))
    if not args.no_report:
        print(f"report: {tune.report(plan)}")


# -- the command table ----------------------------------------------------------------------------------------------
class Command(NamedTuple):
    name: str
    help: str
    add: Callable[[argparse.ArgumentParser], None]  # declares the arguments
    run: Callable[[argparse.Namespace], None] | None  # does the work; None for a group of subcommands


def _add_home(parser) -> None:
    parser.add_argument("--data-root", metavar="DIR", help="the data home (default: $CNNLAB_DATA, else "
                                                           "~/.cache/cnnlab/datasets)")


def _add_fetch(parser) -> None:
    fetchable = ", ".join(s.name for s in DATASETS.values() if s.official)
    parser.add_argument("names", nargs="+", metavar="NAME", help=f"the datasets to fetch: {fetchable}")
    _add_home(parser)


def _run_data_list(args) -> None:
    from cnnlab.data.home import listing

    print("\n".join(listing(args.data_root, checksums=not args.no_checksums)))


def _run_data_fetch(args) -> None:
    from cnnlab.data import home

    for name in args.names:  # every name checked before the first download
        if name not in home.OFFICIAL:
            home.fetch(name, args.data_root)  # raises its one line
    for name in args.names:
        print(f"{name}: {home.fetch(name, args.data_root)} (official, MD5-checked)", flush=True)


def _add_list(parser) -> None:
    _add_home(parser)
    parser.add_argument("--no-checksums", action="store_true", help="skip the MD5 of each official archive")


DATA_ACTIONS = [
    Command("list", "show the data home: each dataset's copies (official, subset or re-encoded), which one a run "
                    "takes, and what is missing", _add_list, _run_data_list),
    Command("fetch", "download datasets' official archives into the data home, MD5-checked", _add_fetch,
            _run_data_fetch),
    Command("info", "print the format, splits, classes and checksum of a dataset (from the cache or the file names; "
                    "decodes nothing)", _add_dataset, _run_data_info),
    Command("prepare", "decode a dataset once into the on-disk cache", _add_dataset, _run_data_prepare),
]


def _add_data(parser) -> None:
    _register(parser.add_subparsers(dest="data_command", required=True, metavar="ACTION"), DATA_ACTIONS)


COMMANDS = [
    Command("models", "list every registered model with its parameters and MACs", _add_models, _run_models),
    Command("train", "train a model into a run folder (see --help for every setting)", _add_train, _run_train),
    Command("eval", "evaluate a run's best checkpoint: top-1/5, per class, confusion", _add_eval, _run_eval),
    Command("predict", "top-k classes with probabilities for image files", _add_predict, _run_predict),
    Command("explain", "one PNG per image file: the top-k classes and where the model looked (Grad-CAM; the input "
                       "gradient for flat models)", _add_explain, _run_explain),
    Command("export", "export a run's model to ONNX or TorchScript with a JSON of its preprocessing", _add_export,
            _run_export),
    Command("sweep", "run a grid of configurations × seeds, then report mean ± std", _add_sweep, _run_sweep),
    Command("tune", "search hyperparameters with Optuna (TPE, pruning); every trial a run folder; needs pip install "
                    "'cnnlab[tune]'", _add_tune, _run_tune),
    Command("presets", "list the training and sweep presets shipped with cnnlab, or print one", _add_presets,
            _run_presets),
    Command("report", "compare runs: overlaid curves, results table, mean ± std over seeds → HTML + Markdown",
            _add_report, _run_report),
    Command("data", "inspect and prepare datasets", _add_data, None),
]


def _register(subparsers, commands: list[Command]) -> None:
    for command in commands:
        parser = subparsers.add_parser(command.name, help=command.help)
        command.add(parser)
        if command.run is not None:
            parser.set_defaults(run=command.run)


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as the same single `cnnlab: error:` line as every other error."""

    def error(self, message):
        self.exit(2, f"cnnlab: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cnnlab", description=__doc__)
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    _register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"), COMMANDS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except CnnlabError as e:
        print(f"cnnlab: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `cnnlab models | head` closes the pipe early; that is not an error.
        sys.stderr.close()
    return 0


# -- cnnlab tune (the optional extra cnnlab[tune]) -----------------------------------------------------------------
