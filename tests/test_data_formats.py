"""Every official format, written by the fixtures, read back pixel for pixel."""

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from cnnlab.data import load_dataset, split_train_val
from data_fixtures import (CIFAR10, png_bytes, rng_images, tar_folder, write_cifar100_binary, write_cifar100_python,
                           write_cifar10_binary, write_cifar10_python, write_image_folder, write_mnist_idx,
                           write_tinyimagenet)


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def load(path, cache, name=None, **kw):
    return load_dataset(name, path, cache_dir=cache, **kw)


def same(split, images, labels):
    """A split holds exactly these images (uint8, pixel for pixel) with these labels, in this order."""
    return np.array_equal(split.images, images) and split.labels.tolist() == list(labels)


@pytest.mark.parametrize("packed", [False, True])
def test_cifar10_python_folder_and_archive(tmp_path, cache, packed):
    folder, truth = write_cifar10_python(tmp_path / "src")
    path = tar_folder(folder, tmp_path / "cifar-10-python.tar.gz") if packed else folder
    ds = load(path, cache)
    assert (ds.name, ds.format, ds.classes) == ("cifar10", "cifar10-python", CIFAR10)
    train_images = np.concatenate([truth[f"data_batch_{k}"][0] for k in range(1, 6)])
    assert same(ds.train, train_images, sum((truth[f"data_batch_{k}"][1] for k in range(1, 6)), []))
    assert same(ds.test, *truth["test_batch"])


def test_cifar10_python_found_from_the_parent_folder(tmp_path, cache):
    write_cifar10_python(tmp_path / "downloads")
    assert load(tmp_path / "downloads", cache, "cifar10").format == "cifar10-python"


@pytest.mark.parametrize("packed", [False, True])
def test_cifar10_binary(tmp_path, cache, packed):
    folder, truth = write_cifar10_binary(tmp_path / "src")
    path = tar_folder(folder, tmp_path / "cifar-10-binary.tar.gz") if packed else folder
    ds = load(path, cache, "cifar10")
    assert ds.format == "cifar10-binary" and ds.classes == CIFAR10
    train = [truth[f"data_batch_{k}"] for k in range(1, 6)]
    assert same(ds.train, np.concatenate([i for i, _ in train]), np.concatenate([l for _, l in train]))
    assert same(ds.test, *truth["test_batch"])


def test_cifar100_fine_and_coarse_labels(tmp_path, cache):
    folder, truth = write_cifar100_python(tmp_path / "src")
    path = tar_folder(folder, tmp_path / "cifar-100-python.tar.gz")
    fine = load(path, cache, "cifar100", labels="fine")
    coarse = load(path, cache, "cifar100", labels="coarse")
    assert fine.format == "cifar100-python"
    assert len(fine.classes) == 100 and fine.classes[3] == "fine3"
    assert len(coarse.classes) == 20 and coarse.classes[3] == "coarse3"
    for split in ("train", "test"):
        images, fine_labels, coarse_labels = truth[split]
        assert same(fine.splits[split], images, fine_labels)
        assert same(coarse.splits[split], images, coarse_labels)


@pytest.mark.parametrize("packed", [False, True])
def test_cifar100_binary_fine_and_coarse_labels(tmp_path, cache, packed):
    folder, truth = write_cifar100_binary(tmp_path / "src")
    path = tar_folder(folder, tmp_path / "cifar-100-binary.tar.gz") if packed else folder
    fine = load(path, cache, "cifar100", labels="fine")
    coarse = load(path, cache, "cifar100", labels="coarse")
    assert (fine.format, fine.classes) == ("cifar100-binary", [f"fine{k}" for k in range(100)])
    assert coarse.classes == [f"coarse{k}" for k in range(20)]
    for split in ("train", "test"):
        images, fine_labels, coarse_labels = truth[split]
        assert same(fine.splits[split], images, fine_labels)
        assert same(coarse.splits[split], images, coarse_labels)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx(tmp_path, cache, gz):
    folder, truth = write_mnist_idx(tmp_path / "mnist", gz=gz)
    ds = load(folder, cache)
    assert (ds.name, ds.format) == ("mnist", "mnist-idx")
    assert ds.train.images.shape == (5, 28, 28, 1) and ds.test.images.shape == (3, 28, 28, 1)
    assert same(ds.train, truth["train"][0][..., None], truth["train"][1])
    assert same(ds.test, truth["t10k"][0][..., None], truth["t10k"][1])


def folder_split(truth: dict, split: str, classes: list[str]):
    """The images and labels of an image folder's split, in the readers' order: by class, then by file name."""
    names = sorted((n for n in truth if n.startswith(split + "/")), key=lambda n: (classes.index(n.split("/")[1]), n))
    return np.stack([truth[n] for n in names]), [classes.index(n.split("/")[1]) for n in names]


def test_image_folder_tar_is_cifar10_when_its_classes_say_so(tmp_path, cache):
    folder, truth = write_image_folder(tmp_path / "tree")
    ds = load(tar_folder(folder, tmp_path / "tree.tar.gz", arcname="."), cache)
    assert (ds.name, ds.format, ds.classes) == ("cifar10", "image-folder", CIFAR10)
    assert ds.train.labels.tolist() == [c for c in range(10) for _ in range(2)]
    assert np.array_equal(ds.train.images[2], truth["train/automobile/0000.png"])
    for split in ("train", "test"):
        assert same(ds.splits[split], *folder_split(truth, split, CIFAR10))


def test_digit_folders_are_mnist_in_one_channel(tmp_path, cache):
    digits = [str(d) for d in range(10)]
    folder, truth = write_image_folder(tmp_path / "digits", classes=digits, size=28)
    ds = load(folder, cache)
    assert ds.name == "mnist" and ds.train.images.shape == (20, 28, 28, 1)
    for split in ("train", "test"):
        images, labels = folder_split(truth, split, digits)
        gray = np.stack([np.asarray(Image.fromarray(im).convert("L")) for im in images])[..., None]
        assert same(ds.splits[split], gray, labels)


def jpeg_pixels(image: np.ndarray) -> np.ndarray:
    """What decoding the fixture's JPEG of `image` gives, as RGB (the reference for a lossy format)."""
    with Image.open(io.BytesIO(png_bytes(image, "JPEG"))) as im:
        return np.asarray(im.convert("RGB"))


@pytest.mark.parametrize("as_zip", [True, False])
def test_tinyimagenet_val_labels_come_from_the_annotation_file(tmp_path, cache, as_zip):
    path, ids = write_tinyimagenet(tmp_path, as_zip=as_zip)
    ds = load(path, cache)
    assert ds.name == "tinyimagenet" and len(ds.classes) == 200
    assert ds.classes[0] == "thing 0"  # first synonym from words.txt, wnids in sorted order
    assert ds.train.images.shape == (200, 64, 64, 3)  # the grayscale JPEG became RGB
    assert sorted(set(ds.train.labels.tolist())) == list(range(200))
    assert ds.test.labels.tolist() == [0, 1, 2, 3]  # val_k is labelled ids[k] by the annotations
    assert len(ds.splits["unlabelled"]) == 2 and (ds.splits["unlabelled"].labels == -1).all()
    assert ds.notes["test_is_official"] == "val"
    # Every split's pixels, against the fixture's images (seeds as write_tinyimagenet draws them) through JPEG:
    # train/<wnid k>/ holds class k's image, the first one grayscale.
    train = [rng_images(1, 64, 64, seed=c * 10)[0] for c in range(200)]
    train[0] = train[0][..., :1]
    assert same(ds.train, np.stack([jpeg_pixels(im) for im in train]), range(200))
    val = [jpeg_pixels(rng_images(1, 64, 64, seed=500 + k)[0]) for k in range(4)]
    assert same(ds.test, np.stack(val), [0, 1, 2, 3])
    unlabelled = [jpeg_pixels(rng_images(1, 64, 64, seed=900 + k)[0]) for k in range(2)]
    assert same(ds.splits["unlabelled"], np.stack(unlabelled), [-1, -1])


def test_tinyimagenet_inside_a_tar(tmp_path, cache):
    folder, _ = write_tinyimagenet(tmp_path / "x", as_zip=False)
    with tarfile.open(tmp_path / "tiny.tar", "w") as tar:
        tar.add(folder, arcname="tiny-imagenet-200")
    assert len(load(tmp_path / "tiny.tar", cache).test) == 4


@pytest.mark.parametrize("packed", [False, True])
def test_second_load_comes_from_the_cache(tmp_path, cache, monkeypatch, packed):
    import cnnlab.data as data
    from cnnlab.data.source import Source

    folder, truth = write_cifar10_python(tmp_path / "src")
    path = tar_folder(folder, tmp_path / "cifar-10-python.tar.gz") if packed else folder
    # Spies on what decoding cannot avoid: format detection (the name load_dataset really calls, imported into
    # cnnlab.data) and every read of the dataset's files or archive, whatever the reader.
    calls = {"detect": 0, "read": 0, "archive": 0}

    def spy(what, real):
        def wrapper(*args, **kwargs):
            calls[what] += 1
            return real(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(data, "detect", spy("detect", data.detect))
    monkeypatch.setattr(Source, "read", spy("read", Source.read))
    monkeypatch.setattr(Source, "_archive", spy("archive", Source._archive))
    first = load(path, cache)
    # the control: the spies sit on the path a real decode takes
    assert calls["detect"] >= 1 and calls["read"] >= 7 and (calls["archive"] >= 1) == packed, calls
    calls.update(dict.fromkeys(calls, 0))
    second = load(path, cache)
    assert calls == {"detect": 0, "read": 0, "archive": 0}, f"the second load decoded again: {calls}"
    assert second.classes == CIFAR10 and second.format == "cifar10-python"
    assert np.array_equal(second.test.images, truth["test_batch"][0])
    assert second.test.labels.tolist() == truth["test_batch"][1]
    for split in ("train", "test"):
        assert np.array_equal(first.splits[split].images, second.splits[split].images)
        assert np.array_equal(first.splits[split].labels, second.splits[split].labels)


def test_a_changed_source_is_prepared_again(tmp_path, cache):
    folder, _ = write_image_folder(tmp_path / "tree", per_class=1)
    assert len(load(folder, cache).train) == 10
    write_image_folder(tmp_path / "tree", per_class=2)
    assert len(load(folder, cache).train) == 20


def test_an_interrupted_prepare_leaves_no_cache(tmp_path, cache, monkeypatch):
    folder, _ = write_cifar10_python(tmp_path / "src")
    import cnnlab.data.cache as cache_module

    def boom(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module.np, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        load(folder, cache)
    assert list(cache.iterdir()) == []
    monkeypatch.undo()
    assert len(load(folder, cache).train) == 20


def test_validation_split_is_stratified_and_reproducible():
    labels = np.repeat(np.arange(10), 100)
    train, val = split_train_val(labels, 0.1, seed=3)
    assert len(val) == 100 and np.bincount(labels[val]).tolist() == [10] * 10
    assert np.intersect1d(train, val).size == 0 and len(train) + len(val) == 1000
    again = split_train_val(labels, 0.1, seed=3)[1]
    assert np.array_equal(val, again)
    assert not np.array_equal(val, split_train_val(labels, 0.1, seed=4)[1])


def test_synthetic_linear_has_the_seed_parameters():
    ds = load_dataset("synthetic-linear")
    x, y = ds.train.images, ds.train.labels
    w, *_ = np.linalg.lstsq(np.c_[x, np.ones(len(x))], y[:, 0], rcond=None)
    assert np.allclose(w, [2, -3.4, 4.2], atol=0.01) and ds.task == "regression"


def test_imagenet_folders_are_streamed_not_loaded(tmp_path, capsys):
    from cnnlab.cli import main
    from cnnlab.data.stream import StreamingImageFolder, StreamLoader
    import torch

    root = tmp_path / "imagenet"
    classes = ["n01440764", "n01443537"]
    write_image_folder(root, classes=classes, per_class=3, size=40, splits=("train", "val"), fmt="JPEG")
    assert main(["data", "info", str(root), "--dataset", "imagenet"]) == 0
    out = capsys.readouterr().out
    assert "image-folder (streamed)" in out and "train:" in out and "6 images" in out
    with pytest.raises(Exception, match="streamed"):
        load_dataset("imagenet", root)
    with pytest.raises(Exception, match="pass --dataset imagenet"):
        load_dataset(None, root, cache_dir=tmp_path / "c")
    # As training streams it: uint8 images decoded per sample (height, width, channel: the loader normalises them on
    # the device), normalised into channels_last batches.
    folder = StreamingImageFolder(root / "train", False, image_size=32, resize_size=36)
    assert folder[0][0].dtype == torch.uint8 and folder[0][0].shape == (32, 32, 3)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    loader = StreamLoader(folder, range(len(folder)), batch_size=4, device="cpu", train=False, mean=mean, std=std,
                          workers=0)
    x, y = next(iter(loader))
    assert x.shape == (4, 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)
    chw = torch.stack([folder[i][0].permute(2, 0, 1) for i in range(4)])
    by_hand = (chw / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert torch.allclose(x, by_hand, atol=1e-5) and y.tolist() == [0, 0, 0, 1]
