"""The `cnnlab` command: a thin argparse layer over the Python API."""

import argparse
import csv
import sys

from cnnlab import __version__
from cnnlab.errors import CnnlabError


def _models(args) -> None:
    from cnnlab.models.zoo_table import model_table

    rows = model_table(num_classes=args.num_classes, image_size=args.image_size, in_channels=args.in_channels,
                       head=args.head, stem=args.stem)
    if args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return
    header = ["name", "alias", "family", "params", "MACs", "description"]
    cells = [[r["name"], r["alias"], r["family"], f"{r['params']:,}", _si(r["macs"]) if r["macs"] is not None else "too small", r["description"]] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    right = {3, 4}
    print(f"{args.num_classes} classes, {args.in_channels}×{args.image_size}×{args.image_size} input, "
          f"VGG head {args.head}, ResNet stem {args.stem}")
    for line in [header, ["-" * w for w in widths], *cells]:
        print("  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths)))
              .rstrip())


def _data_options(args) -> dict:
    return {"labels": args.labels, "cache_dir": args.cache_dir, "skip_bad_images": args.skip_bad_images,
            "download": args.download}


def _data_info(args) -> None:
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


def _data_prepare(args) -> None:
    import time

    from cnnlab.data import load_dataset

    start = time.perf_counter()
    dataset = load_dataset(args.dataset, args.path, **_data_options(args))
    sizes = ", ".join(f"{len(s)} {name}" for name, s in dataset.splits.items())
    print(f"{dataset.name} ({dataset.format}): {sizes}; {len(dataset.classes)} classes; "
          f"ready in {time.perf_counter() - start:.1f} s (decoding took {dataset.notes.get('prepare_seconds', 0)} s "
          "when first prepared)")


def _train(args) -> None:
    from cnnlab.config import config_from_args
    from cnnlab.engine import fit

    if args.resume:
        from cnnlab.config import TrainConfig

        config = None
        if args.epochs is not None:  # the one setting a resume may change: train on for more epochs
            config = TrainConfig.from_dict({"epochs": args.epochs}, "--epochs")
        fit(config, resume=args.resume)
    else:
        notes = []
        fit(config_from_args(args, notes), notes=notes)


def _eval(args) -> None:
    from cnnlab.evaluate import evaluate_run

    result = evaluate_run(args.target, args.split, args.data, args.device, save_predictions=args.save_predictions)
    print(f"{result['split']} ({result['n']} images): loss {result['loss']:.4f}"
          + (f"  top-1 {result['acc']:.4f}" if "acc" in result else "")
          + (f"  top-5 {result['top5']:.4f}" if "top5" in result else "") + f"  ({result['precision']}, {result['precision_reason']})")
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


def _export(args) -> None:
    from cnnlab.export import export_model

    exported = export_model(args.target, args.format, args.out)
    print(f"{args.format}: {exported.path}")
    print(f"preprocessing: {exported.meta_path}")
    print(f"checked against PyTorch on {exported.checked} inputs: max |difference| {exported.max_diff:.2g} "
          f"(fp32, dynamic batch)")


def _predict(args) -> None:
    from cnnlab.evaluate import predict_stream, predict_to_csv

    if args.out:
        rows = predict_to_csv(args.run_dir, args.images, args.out, args.topk)
        print(f"{rows} predictions → {args.out}")
        return
    for path, top in predict_stream(args.run_dir, args.images, args.topk):
        print(path + ": " + ", ".join(f"{name} {p:.3f}" for name, p in top), flush=True)


def _explain(args) -> None:
    from cnnlab.explain import explain_run

    for path in explain_run(args.run_dir, args.images, args.out, args.topk, args.class_name):
        print(path)


def _sweep(args) -> None:
    from cnnlab.sweep import describe, parse_settings, plan, run_sweep

    sweep = plan(args.file, data_root=args.data_root, overrides=parse_settings(args.set))
    if args.dry_run:
        print("\n".join(describe(sweep)))
    else:
        run_sweep(sweep, report=not args.no_report)


def _presets(args) -> None:
    from cnnlab.presets import listing, preset_path

    if args.name:
        print(preset_path(args.name).read_text(encoding="utf-8"), end="")
    else:
        print("\n".join(listing()))


def _si(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as the same single `cnnlab: error:` line as every other error."""

    def error(self, message):
        self.exit(2, f"cnnlab: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cnnlab", description=__doc__)
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = commands.add_parser("models", help="list every registered model with its parameters and MACs")
    models.add_argument("--num-classes", type=int, default=1000, help="output classes (default: 1000)")
    models.add_argument("--image-size", type=int, default=224, help="input height = width (default: 224)")
    models.add_argument("--in-channels", type=int, default=3, help="input channels (default: 3)")
    models.add_argument("--head", default="imagenet", help="VGG head: imagenet or cifar (default: imagenet)")
    models.add_argument("--stem", default="imagenet", help="ResNet stem: imagenet or cifar (default: imagenet)")
    models.add_argument("--format", choices=("table", "csv"), default="table")
    models.set_defaults(run=_models)

    from cnnlab.config import add_arguments

    train = commands.add_parser("train", help="train a model into a run folder (see --help for every setting)")
    train.add_argument("--config", help="a preset's name (`cnnlab presets`) or a TOML file of settings; flags "
                                        "override it")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    add_arguments(train)
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("eval", help="evaluate a run's best checkpoint: top-1/5, per class, confusion")
    evaluate.add_argument("target", help="a run folder or a checkpoint file")
    evaluate.add_argument("--split", default="test", help="test (default) or val")
    evaluate.add_argument("--data", help="the dataset path, if it moved since training")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--save-predictions", nargs="?", const="", metavar="FILE",
                          help="write each example's logits, softmax probabilities, predicted and true label (class "
                               "indices) to FILE: .npz (default: RUN/predictions_SPLIT.npz), or a CSV of index, "
                               "label, predicted, prob_<class>… when FILE ends in .csv")
    evaluate.set_defaults(run=_eval)

    predict = commands.add_parser("predict", help="top-k classes with probabilities for image files")
    predict.add_argument("run_dir", metavar="RUN", help="a run folder or a checkpoint file")
    predict.add_argument("images", nargs="+", help="image files, folders (every image below them) or glob patterns "
                                                   "(quote them: 'photos/**/*.jpg')")
    predict.add_argument("--out", metavar="FILE.csv", help="write path, top1, p1, … topk, pk to this CSV instead of "
                                                           "printing (written when every image was read)")
    predict.add_argument("--topk", type=int, default=5)
    predict.set_defaults(run=_predict)

    explain = commands.add_parser("explain", help="one PNG per image file: the top-k classes and where the model "
                                                  "looked (Grad-CAM; the input gradient for flat models)")
    explain.add_argument("run_dir", metavar="RUN", help="a run folder or a checkpoint file")
    explain.add_argument("images", nargs="+", help="image files")
    explain.add_argument("--out", metavar="DIR", help="where the PNGs go (default: RUN/explain)")
    explain.add_argument("--topk", type=int, default=5)
    explain.add_argument("--class", dest="class_name", metavar="NAME",
                         help="the class to explain (default: each image's top-1 prediction)")
    explain.set_defaults(run=_explain)

    export = commands.add_parser("export", help="export a run's model to ONNX or TorchScript with a JSON of its "
                                                "preprocessing")
    export.add_argument("target", metavar="RUN", help="a run folder (its best.pt) or a checkpoint file")
    export.add_argument("--format", required=True, choices=("onnx", "torchscript"),
                        help="onnx (needs the export extra: pip install 'cnnlab[export]') or torchscript")
    export.add_argument("--out", metavar="FILE",
                        help="the model file (default: model.onnx or model.ts.pt beside the checkpoint); FILE.json "
                             "beside it records mean, std, input shape, channel order and class names")
    export.set_defaults(run=_export)

    sweep = commands.add_parser("sweep", help="run a grid of configurations × seeds, then report mean ± std")
    sweep.add_argument("file", help="a sweep preset's name (`cnnlab presets`) or a sweep TOML file ([sweep], "
                                    "[base], [[variant]], [grid])")
    sweep.add_argument("--no-report", action="store_true", help="only run; skip the report at the end")
    sweep.add_argument("--dry-run", action="store_true",
                       help="print each run's folder, the settings that differ and its data file; train and create "
                            "nothing")
    sweep.add_argument("--data-root", metavar="DIR",
                       help="the folder relative `data` values resolve against (default: the file's [sweep] "
                            "data_root, else the current folder)")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="replace a [base] setting for every run, e.g. --set epochs=1 (a TOML value, else text); "
                            "repeatable")
    sweep.set_defaults(run=_sweep)

    presets = commands.add_parser("presets", help="list the training and sweep presets shipped with cnnlab, or "
                                                  "print one")
    presets.add_argument("name", nargs="?", help="the preset to print, e.g. to copy and edit it")
    presets.set_defaults(run=_presets)

    _add_tune(commands)

    from cnnlab.report.command import add_report_parser

    add_report_parser(commands)

    data = commands.add_parser("data", help="inspect and prepare datasets").add_subparsers(
        dest="data_command", required=True, metavar="ACTION")
    for action, run, text in (("info", _data_info, "print the format, splits, classes and checksum of a dataset "
                                                        "(from the cache or the file names; decodes nothing)"),
                              ("prepare", _data_prepare, "decode a dataset once into the on-disk cache")):
        sub = data.add_parser(action, help=text)
        sub.add_argument("path", help="the dataset's folder or archive (with --download: where to save it)")
        sub.add_argument("--dataset", help="cifar10, cifar100, tinyimagenet, imagenet, mnist (default: detected)")
        sub.add_argument("--labels", default="fine", help="CIFAR-100 label set: fine (100) or coarse (20)")
        sub.add_argument("--cache-dir", help="where prepared arrays are kept (default: ~/.cache/cnnlab)")
        sub.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images and count them")
        sub.add_argument("--download", action="store_true", help="fetch the official archive into PATH first")
        sub.set_defaults(run=run)
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
def _add_tune(commands) -> None:
    tune = commands.add_parser("tune", help="search hyperparameters with Optuna (TPE, pruning); every trial a run "
                                            "folder; needs pip install 'cnnlab[tune]'")
    tune.add_argument("file", help="a tune preset's name or a tune TOML file ([tune], [base], [space])")
    tune.add_argument("--storage", metavar="URL",
                      help="the study's storage, shared by every process that runs the same command: an RDB URL "
                           "(sqlite:///study.db, postgresql://…, mysql://…) or a journal file's path (default: "
                           "OUT/study.journal)")
    tune.add_argument("--workers", type=int, default=1, metavar="N",
                      help="run N trials at once on this machine, as N processes, each with its share of the CPU "
                           "cores (or one GPU each)")
    tune.add_argument("--n-trials", type=int, metavar="N", help="the study's total trials (default: the file's)")
    tune.add_argument("--timeout", type=float, metavar="SECONDS",
                      help="start no new trial after this many seconds (running ones finish)")
    tune.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="replace a [base] setting for every trial, e.g. --set epochs=2; repeatable")
    tune.add_argument("--dry-run", action="store_true",
                      help="print the space, the objective, the pruner and the trial budget; train nothing")
    tune.add_argument("--no-report", action="store_true", help="skip the study report at the end")
    tune.set_defaults(run=_tune)


def _tune(args) -> None:
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
