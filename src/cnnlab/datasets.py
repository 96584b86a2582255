"""What a dataset is, one row each: its classes, whether it is streamed, its default augmentation, its official
files and the copies the data home may hold. Adding a dataset is one `DatasetSpec` in DATASETS (and, for a new
file format, a reader in data/formats.py).

Everything else reads this table: data/__init__ (names, class counts, streamed), data/official.py (downloads and
MD5s), data/home.py (the data home's file names, in the order they are taken), data/loader.py (augmentation
presets), config.py and cli.py (help strings). Torch- and numpy-free, importing nothing of cnnlab, because
`cnnlab --help`, `presets` and `data list` must start without torch; it sits beside config.py at the bottom of the
package and not in data/, whose package imports numpy.
"""

from dataclasses import dataclass, field


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


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    class_counts: tuple[int, ...] = ()  # a copy with another count is refused (CIFAR-100: fine or coarse); () none
    streamed: bool = False  # too big for memory: read from its folders per batch (data/stream.py), never cached
    generated: bool = False  # made in memory (synthetic-linear): no files, no data home
    # The default augmentation preset's Augment fields (data/loader.py); None: no preset of its own.
    augment: dict | None = field(default=None, hash=False)
    # [(file name, [addresses, official first], published MD5)] that `--download` / `data fetch` fetch
    official: tuple = ()
    # Other official archives recognised by their MD5, though --download fetches the ones above: {md5: file name}
    other_official: dict = field(default_factory=dict, hash=False)
    # Its copies in the data home in the order they are taken: the official archive (or files), its extracted
    # folder, then the copies that are not the official set, whose results must say so.
    copies: tuple[Copy, ...] = ()


_MNIST_FILES = [("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
                ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
                ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
                ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c")]
_CROP_FLIP = {"crop_padding": 4, "flip": True}

DATASETS: dict[str, DatasetSpec] = {s.name: s for s in [
    DatasetSpec(
        "cifar10", (10,), augment=_CROP_FLIP,
        official=(("cifar-10-python.tar.gz", ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"],
                   "c58f30108f718f92721af3b95e74349a"),),
        other_official={"c32a1d4ab5d03f1284b67883e8d87530": "cifar-10-binary.tar.gz"},
        copies=(
            Copy("cifar-10-python.tar.gz", "official", "CIFAR-10, python version"),
            Copy("cifar-10-batches-py", "official, extracted", "CIFAR-10, python version",
                 archive_of="cifar-10-python.tar.gz"),
            Copy("cifar-10-binary.tar.gz", "official", "CIFAR-10, binary version"),
            Copy("cifar-10-batches-bin", "official, extracted", "CIFAR-10, binary version",
                 archive_of="cifar-10-binary.tar.gz"),
            Copy("cifar10-jpeg.tar.gz", "re-encoded", "all of CIFAR-10 as JPEG (quality 75): accuracies sit ~3.5 "
                 "points below published CIFAR-10 numbers; compare runs on it side by side only", short="JPEG copy"),
        )),
    DatasetSpec(
        "cifar100", (100, 20), augment=_CROP_FLIP,
        official=(("cifar-100-python.tar.gz", ["https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"],
                   "eb9058c3a382ffc7106e4002c42a8d85"),),
        copies=(
            Copy("cifar-100-python.tar.gz", "official", "CIFAR-100, python version"),
            Copy("cifar-100-python", "official, extracted", "CIFAR-100, python version",
                 archive_of="cifar-100-python.tar.gz"),
            Copy("cifar-100-binary.tar.gz", "official", "CIFAR-100, binary version"),
            Copy("cifar-100-binary", "official, extracted", "CIFAR-100, binary version",
                 archive_of="cifar-100-binary.tar.gz"),
        )),
    DatasetSpec(
        "tinyimagenet", (200,), augment={"crop_padding": 8, "flip": True},
        official=(("tiny-imagenet-200.zip", ["http://cs231n.stanford.edu/tiny-imagenet-200.zip"],
                   "90528d7ca1a48142e341f4ef8d21d0de"),),
        copies=(
            Copy("tiny-imagenet-200.zip", "official", "Tiny ImageNet (100,000 training images, its 10,000 labelled val "
                                                      "images as the test split)"),
            Copy("tiny-imagenet-200", "official, extracted", "Tiny ImageNet", archive_of="tiny-imagenet-200.zip"),
            Copy("tiny-imagenet-200-train100.tar.gz", "subset", "train100: 100 training images per class (a fifth) and "
                                                                "5,000 of the 10,000 val images; results are train100 "
                                                                "results, not Tiny ImageNet results",
                 short="train100 subset"),
            Copy("tiny-imagenet-200-sample.tar.gz", "subset", "sample: 10 training images per class and 1,000 val "
                 "images; not Tiny ImageNet results", short="sample subset"),
        )),
    DatasetSpec(
        "imagenet", streamed=True,
        copies=(
            Copy("imagenet", "folder", "ImageNet as train/<wnid>/ and val/<wnid>/ folders, streamed"),
        )),
    DatasetSpec(
        "mnist", (10,), augment={},  # no flip: flipped digits are other digits
        official=tuple((f, [f"http://yann.lecun.com/exdb/mnist/{f}",
                            f"https://ossci-datasets.s3.amazonaws.com/mnist/{f}"], md5) for f, md5 in _MNIST_FILES),
        copies=(
            Copy("mnist", "official", "MNIST, its four idx files (what `cnnlab data fetch mnist` writes)"),
            Copy("MNIST/raw", "official", "MNIST, its four idx files in torchvision's folder"),
            Copy("mnist-png.tar.gz", "re-encoded", "all of MNIST as lossless PNG (the same pixels)", short="PNG copy"),
        )),
    DatasetSpec("synthetic-linear", generated=True),
]}
