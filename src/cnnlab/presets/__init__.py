"""The TOML presets shipped inside the package, named by their file's stem, so an installed cnnlab has them too.

    cnnlab train --config speedrun-cifar10     # a training preset: TrainConfig fields
    cnnlab sweep seed-report                   # a sweep preset: [sweep], [base], [[variant]], [grid]
    cnnlab tune tune-speednet                  # a tune preset: [tune], [base], [space] (needs cnnlab[tune])
    cnnlab presets [NAME]                      # list them (cli.py), or print one to copy and edit

A path is accepted wherever a name is, and an existing file wins over a preset of the same name. Presets name
datasets, not files: each run reads its dataset's copy in the data home (cnnlab.data.home: $CNNLAB_DATA, else
~/.cache/cnnlab/datasets; --data-root or --data say otherwise). Relative paths in a config file (`out`, a `data`
you add) resolve against the current folder, never against the package's folder.
"""

from pathlib import Path

from cnnlab.config import read_toml
from cnnlab.errors import CnnlabError

FOLDER = Path(__file__).resolve().parent
SWEEP_TABLES = ("sweep", "base", "variant", "grid")
TUNE_TABLES = ("tune", "space")
COMMANDS = {"train": "cnnlab train --config {}", "sweep": "cnnlab sweep {}", "tune": "cnnlab tune {}"}
FILE_NOUNS = {"train": "config file", "sweep": "sweep file", "tune": "tune file"}


def names(folder: Path = FOLDER) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.toml"))


def kind_of(values: dict) -> str:
    """`tune` for a file with a search space, `sweep` for one with a sweep's tables, else `train` (a file of
    TrainConfig fields)."""
    if any(table in values for table in TUNE_TABLES):
        return "tune"
    return "sweep" if any(table in values for table in SWEEP_TABLES) else "train"


def preset_path(name: str, folder: Path = FOLDER) -> Path:
    """The file of the preset `name` (with or without .toml), or one line listing the presets there are."""
    path = folder / f"{str(name).removesuffix('.toml')}.toml"
    if "/" in str(name) or "\\" in str(name) or not path.is_file():
        raise CnnlabError(f"there is no preset {name!r}; the presets are: {', '.join(names(folder))}")
    return path


def find(name_or_path, kind: str) -> Path:
    """The file a `train --config` (kind `train`), `sweep` or `tune` argument means: an existing path as
    given, else the preset of that name, refused with the command that runs it when it is of the other kind."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    name = path.name.removesuffix(".toml")
    if path.parent == Path(".") and name in names():
        found = kind_of(read_toml(preset_path(name), "preset"))
        if found != kind:
            raise CnnlabError(f"{name} is a {found} preset, not a {kind} preset; run it with "
                              f"`{COMMANDS[found].format(name)}`")
        return preset_path(name)
    listed = ", ".join(n for n in names() if kind_of(read_toml(preset_path(n), "preset")) == kind)
    if path.parent == Path(".") and not path.suffix:  # a bare word: meant as a preset's name
        raise CnnlabError(f"{name_or_path} is neither a file nor a {kind} preset; pass a TOML file's path or one "
                          f"of: {listed}")
    hint = f" (the preset {name} has its name: `{COMMANDS[kind].format(name)}`)" if name in names() else ""
    raise CnnlabError(f"{FILE_NOUNS[kind]} {name_or_path} does not exist{hint}; pass an existing file or one of "
                      f"the {kind} presets: {listed}")
