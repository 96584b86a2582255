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


def _si(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnnlab", description=__doc__)
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
