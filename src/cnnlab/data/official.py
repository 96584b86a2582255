"""Official archives, their addresses and published checksums; `--download` fetches one, only when asked."""

import hashlib
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from cnnlab.atomic import atomic_write
from cnnlab.datasets import DATASETS
from cnnlab.errors import CnnlabError

# dataset → [(file name, [addresses, official first], published MD5)], from the table of datasets. A dict of lists
# read when asked, so that tests may serve the files from elsewhere.
OFFICIAL = {s.name: list(s.official) for s in DATASETS.values() if s.official}
# Official archives recognised, though --download fetches others (the binary CIFAR-10 for the python one).
OTHER_MD5 = {md5: name for s in DATASETS.values() for md5, name in s.other_official.items()}


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
