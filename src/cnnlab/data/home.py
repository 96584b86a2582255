"""The data home: the one folder where cnnlab looks for a dataset by name, as torchvision's `root` is to its users.

    $CNNLAB_DATA, else $XDG_CACHE_HOME/cnnlab/datasets, else ~/.cache/cnnlab/datasets; --data-root wins over both,
    and --data (a file or folder) over everything.

`locate("cifar10")` takes the first copy present in the order of COPIES: the official archives and their extracted
folders first, then the other copies cnnlab knows (re-encoded or subsets), each with what results on it mean.
`cnnlab data fetch NAME` puts the official files there; `cnnlab data list` shows what is there. Torch-free, so the
listing starts fast.
"""

import os
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from cnnlab.data.official import OFFICIAL, checksum_status, download  # noqa: F401 — OFFICIAL for callers
from cnnlab.errors import CnnlabError

ENV = "CNNLAB_DATA"


class Missing(CnnlabError):
    """The data home, or the dataset in it, is not there (what --download fetches instead)."""


@dataclass(frozen=True)
class Copy:
    """A file or folder name in the data home, and what a run on it is a run on."""
    name: str
    kind: str  # official | official, extracted | subset | re-encoded | folder
    about: str
    archive_of: str = ""  # an extracted folder: the official archive it comes from (the two must agree)
    short: str = ""  # how a results table names a copy that is not the official set: "train100 subset"

    @property
    def official(self) -> bool:
        return self.kind.startswith("official")


# dataset → its copies in the order they are taken: the official archive (or files), its extracted folder, then
# the copies that are not the official set, whose results must say so.
COPIES = {
    "cifar10": [
        Copy("cifar-10-python.tar.gz", "official", "CIFAR-10, python version"),
        Copy("cifar-10-batches-py", "official, extracted", "CIFAR-10, python version",
             archive_of="cifar-10-python.tar.gz"),
        Copy("cifar-10-binary.tar.gz", "official", "CIFAR-10, binary version"),
        Copy("cifar-10-batches-bin", "official, extracted", "CIFAR-10, binary version",
             archive_of="cifar-10-binary.tar.gz"),
        Copy("cifar10-jpeg.tar.gz", "re-encoded", "all of CIFAR-10 as JPEG (quality 75): accuracies sit "
                                                   "~3.5 points below published CIFAR-10 numbers; compare runs on it "
                                                   "side by side only", short="JPEG copy"),
    ],
    "cifar100": [
        Copy("cifar-100-python.tar.gz", "official", "CIFAR-100, python version"),
        Copy("cifar-100-python", "official, extracted", "CIFAR-100, python version",
             archive_of="cifar-100-python.tar.gz"),
        Copy("cifar-100-binary.tar.gz", "official", "CIFAR-100, binary version"),
        Copy("cifar-100-binary", "official, extracted", "CIFAR-100, binary version",
             archive_of="cifar-100-binary.tar.gz"),
    ],
    "tinyimagenet": [
        Copy("tiny-imagenet-200.zip", "official", "Tiny ImageNet (100,000 training images, its 10,000 labelled val "
                                                  "images as the test split)"),
        Copy("tiny-imagenet-200", "official, extracted", "Tiny ImageNet", archive_of="tiny-imagenet-200.zip"),
        Copy("tiny-imagenet-200-train100.tar.gz", "subset", "train100: 100 training images per class (a fifth) and "
                                                            "5,000 of the 10,000 val images; results are train100 "
                                                            "results, not Tiny ImageNet results",
             short="train100 subset"),
        Copy("tiny-imagenet-200-sample.tar.gz", "subset", "sample: 10 training images per class and 1,000 val "
                                                          "images; not Tiny ImageNet results", short="sample subset"),
    ],
    "mnist": [
        Copy("mnist", "official", "MNIST, its four idx files (what `cnnlab data fetch mnist` writes)"),
        Copy("MNIST/raw", "official", "MNIST, its four idx files in torchvision's folder"),
        Copy("mnist-png.tar.gz", "re-encoded", "all of MNIST as lossless PNG (the same pixels)", short="PNG copy"),
    ],
    "imagenet": [
        Copy("imagenet", "folder", "ImageNet as train/<wnid>/ and val/<wnid>/ folders, streamed"),
    ],
}
DATASET_NAMES = tuple(COPIES)


@dataclass(frozen=True)
class Home:
    """The folder looked in, and where that choice came from (for messages)."""
    path: Path
    origin: str  # --data-root | $CNNLAB_DATA | default

    @property
    def said(self) -> str:
        return "the default data home" if self.origin == "default" else self.origin


def data_home(root=None) -> Home:
    """--data-root when given, else $CNNLAB_DATA, else the per-user default under the XDG cache folder."""
    if root:
        return Home(Path(root).expanduser(), "--data-root")
    if os.environ.get(ENV):
        return Home(Path(os.environ[ENV]).expanduser(), f"${ENV}")
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Home(base / "cnnlab" / "datasets", "default")


def _check_folder(home: Home) -> None:
    # A home someone named must exist: a typo would otherwise read as "no data". The default may not exist yet.
    if home.origin != "default" and not home.path.is_dir():
        where = "a file" if home.path.exists() else "missing"
        raise Missing(f"data home {home.path} ({home.said}) is {where}, not a folder; point {home.said} at the "
                      "folder that holds your datasets, or create it")


@dataclass(frozen=True)
class Found:
    path: Path
    copy: Copy
    dataset: str

    def describe(self) -> str:
        """What a run on this copy is a run on: `the official files: CIFAR-10, python version`, `a subset: …`."""
        article = {"official": "the official files", "official, extracted": "the official archive, extracted",
                   "subset": "a subset", "re-encoded": "a re-encoded copy", "folder": "a folder"}[self.copy.kind]
        return f"{article}: {self.copy.about}"


def locate(dataset: str, root=None) -> Found:
    """The copy of `dataset` a run reads from the data home (or --data-root), or one line naming what was looked
    for and the command that fetches it."""
    if dataset not in COPIES:
        raise CnnlabError(f"{dataset} has no files to look for in a data home; pass --data PATH")
    home = data_home(root)
    _check_folder(home)
    present = [c for c in COPIES[dataset] if (home.path / c.name).exists()]
    if not present:
        looked = ", ".join(c.name + ("/" if "." not in c.name else "") for c in COPIES[dataset])
        raise Missing(f"no {dataset} in {home.path} ({home.said}); looked for {looked}. "
                      f"{fetch_hint(dataset, home.path)}")
    chosen = present[0]
    _check_agreement(home.path, present)
    return Found(home.path / chosen.name, chosen, dataset)


def copy_of(path, dataset: str | None) -> Copy | None:
    """The copy cnnlab knows that `path` is, by its name (what a run on it is a run on), else None."""
    name = Path(path).name if path else None
    return next((copy for copy in COPIES.get(dataset, []) if copy.name.split("/")[-1] == name), None)


def data_notes(path, dataset: str | None) -> dict:
    """summary.json's account of the data: `data_copy` (`subset: train100: …`) and `data_label` (`tinyimagenet
    (train100 subset)`), the name results tables use, so a subset is never reported as the full set."""
    copy = copy_of(path, dataset)
    label = f"{dataset} ({copy.short})" if copy and copy.short else dataset
    return {"data_copy": f"{copy.kind}: {copy.about}" if copy else None, "data_label": label}


def fetch_hint(dataset: str, folder: Path) -> str:
    """How to get `dataset` into the data home `folder`: the fetch command, or where to put it by hand."""
    if dataset in OFFICIAL:
        return f"Fetch the official files with `cnnlab data fetch {dataset}`, or pass --data PATH"
    return (f"{dataset} is not downloadable (its licence asks you to fetch it yourself): put its train/ and val/ "
            f"class folders in {folder / COPIES[dataset][0].name}/, or pass --data PATH")


def _check_agreement(folder: Path, present: list[Copy]) -> None:
    """An official archive and its extracted folder side by side (torchvision's root keeps both) must hold the same
    files: a half-extracted or edited folder would otherwise be trained on while the archive's checksum vouches for
    it. Names and sizes only, from the archive's headers: no member is read."""
    names = {c.name for c in present}
    for copy in present:
        if copy.archive_of and copy.archive_of in names:
            archive, extracted = _archive_listing(folder / copy.archive_of), _folder_listing(folder, copy.name)
            if archive != extracted:
                differ = sorted(set(archive.items()) ^ set(extracted.items()))[0][0]
                raise CnnlabError(f"{folder} holds both {copy.archive_of} and {copy.name}/, but they differ (first "
                                  f"difference: {differ}); delete the one that is wrong, or pass --data with the "
                                  "one to use")


def _archive_listing(path: Path) -> dict[str, int]:
    """{member name: size} of an archive's regular files (its official top folder included in the names)."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            return {i.filename: i.file_size for i in archive.infolist() if not i.is_dir()}
    with tarfile.open(path) as archive:
        return {m.name.removeprefix("./"): m.size for m in archive.getmembers() if m.isfile()}


def _folder_listing(root: Path, name: str) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in (root / name).rglob("*") if p.is_file()}


def fetch(dataset: str, root=None) -> Path:
    """Download the dataset's official files into the data home (created if needed), MD5-checked; its path."""
    home = data_home(root)
    if dataset not in OFFICIAL:
        hint = fetch_hint(dataset, home.path) if dataset in COPIES else ""
        raise CnnlabError(f"there is no official download for {dataset!r}; cnnlab can fetch "
                          f"{', '.join(OFFICIAL)}. {hint}".rstrip())
    if home.path.exists() and not home.path.is_dir():
        _check_folder(home)
    files = OFFICIAL[dataset]
    # Several files (MNIST's four) go into a folder of their own, named as locate() looks for them.
    dest = home.path / COPIES[dataset][0].name if len(files) > 1 else home.path
    return download(dataset, dest)


def _what(path: Path, copy: Copy, checksums: bool) -> str:
    """`official, MD5 checked: …` only when the bytes are the published ones; an official name alone is not."""
    if not (checksums and copy.kind == "official"):
        return f"{copy.kind}: {copy.about}"
    if checksum_status(path).startswith("official"):
        return f"official, MD5 checked: {copy.about}"
    return f"official name, other bytes (no published MD5 matches; read for its structure): {copy.about}"


def listing(root=None, checksums: bool = True) -> list[str]:
    """What `cnnlab data list` prints: each dataset's copies present (the one a run takes first), what each is,
    the missing datasets with the command that fetches them, and the files cnnlab does not know."""
    home = data_home(root)
    _check_folder(home)
    lines = [f"data home: {home.path} ({home.said}; ${ENV} or --data-root choose another folder)"]
    if not home.path.is_dir():
        lines.append("  (does not exist yet: `cnnlab data fetch NAME` creates it)")
    known = set()
    width = max(len(c.name) for copies in COPIES.values() for c in copies) + 1
    for dataset, copies in COPIES.items():
        present = [c for c in copies if (home.path / c.name).exists()]
        known |= {c.name.split("/")[0] for c in copies}
        if not present:
            lines.append(f"  {dataset:<13} missing. {fetch_hint(dataset, home.path)}")
            continue
        for k, copy in enumerate(present):
            mark = "used" if k == 0 else "    "
            shown = copy.name + ("/" if (home.path / copy.name).is_dir() else "")
            lines.append(f"  {dataset if k == 0 else '':<13} {mark} {shown:<{width}} "
                         f"{_what(home.path / copy.name, copy, checksums)}")
    if home.path.is_dir():
        other = sorted(p.name for p in home.path.iterdir() if p.name not in known and not p.name.startswith("."))
        if other:
            lines.append(f"  not known to cnnlab (pass them with --data): {', '.join(other)}")
    return lines
