"""Official archives, their addresses and published checksums; `--download` fetches one, only when asked."""

import hashlib
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from cnnlab.atomic import atomic_write
from cnnlab.errors import CnnlabError

# dataset → [(file name, [addresses, official first], published MD5)]
OFFICIAL = {
    "cifar10": [("cifar-10-python.tar.gz", ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"],
                 "c58f30108f718f92721af3b95e74349a")],
    "cifar100": [("cifar-100-python.tar.gz", ["https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"],
                  "eb9058c3a382ffc7106e4002c42a8d85")],
    "tinyimagenet": [("tiny-imagenet-200.zip", ["http://cs231n.stanford.edu/tiny-imagenet-200.zip"],
                      "90528d7ca1a48142e341f4ef8d21d0de")],
    "mnist": [(f, [f"http://yann.lecun.com/exdb/mnist/{f}", f"https://ossci-datasets.s3.amazonaws.com/mnist/{f}"],
               md5) for f, md5 in [
        ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
        ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
        ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c")]],
}
# Official archives recognised, though --download fetches others (the binary CIFAR-10 for the python one).
OTHER_MD5 = {"c32a1d4ab5d03f1284b67883e8d87530": "cifar-10-binary.tar.gz"}


def known_md5() -> dict[str, str]:
    """MD5 → official file name, read from OFFICIAL when asked (so a table edited at run time is the truth)."""
    return {**OTHER_MD5, **{md5: name for files in OFFICIAL.values() for name, _, md5 in files}}


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checksum_status(path: Path) -> str:
    """'official <name>' when the file (or every archive in a folder) has a published checksum, else why not."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in (".gz", ".zip", ".tgz"))
    if not files:
        return "n/a (an extracted folder; checksums are published for archives)"
    known = known_md5()
    names = [known.get(md5_of(f)) for f in files]
    if all(names):
        return "official (" + ", ".join(names) + ")"
    return "not an official archive (its checksum matches no published one; accepted for its structure)"


def download(dataset: str, dest: Path) -> Path:
    """Fetch the dataset's official files into `dest` and verify their MD5; return the archive (or folder)."""
    if dataset not in OFFICIAL:
        raise CnnlabError(f"--download knows no official source for {dataset!r}; it can fetch "
                          f"{', '.join(OFFICIAL)}. Get the files yourself and pass them with --data")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name, urls, md5 in OFFICIAL[dataset]:
        target = dest / name
        if target.is_file() and md5_of(target) == md5:
            continue
        _fetch(urls, target, md5)
    files = OFFICIAL[dataset]
    return dest if len(files) > 1 else dest / files[0][0]


def _fetch(urls: list[str], target: Path, md5: str) -> None:
    errors = []
    for url in urls:
        try:
            # A damaged download raises inside the block, so it never replaces `target`.
            with atomic_write(target) as out, urllib.request.urlopen(url, timeout=60) as response:
                shutil.copyfileobj(response, out, 1 << 20)
                out.flush()
                got = md5_of(Path(out.name))
                if got != md5:
                    raise CnnlabError(f"{url} gave a file with MD5 {got}, but the published checksum is {md5}; "
                                      "the download is damaged or the file changed — try again later")
            return
        except (urllib.error.URLError, OSError) as e:
            errors.append(f"{url}: {getattr(e, 'reason', e)}")
    raise CnnlabError(f"could not download {target.name} ({'; '.join(errors)}); check the network, or fetch "
                      "it by hand and pass it with --data")
