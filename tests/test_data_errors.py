"""Bad input: one line on stderr saying what is wrong and what to do, exit code 2, no traceback, nothing left."""

import io
import os
import pickle
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.cli import main
from cnnlab.data import official as download_module
from data_fixtures import (png_bytes, rng_images, tar_folder, write_cifar10_python, write_image_folder,
                           write_tinyimagenet)


def fails(capsys, tmp_path, *argv):
    """Run `cnnlab data prepare …` (which decodes everything; `info` reads only metadata) with a private cache;
    return the error line after checking its form."""
    cache = tmp_path / "cache"
    code = main(["data", "prepare", *map(str, argv), "--cache-dir", str(cache)])
    out, err = capsys.readouterr()
    assert code == 2, out
    assert err.startswith("cnnlab: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    leftovers = [p for p in cache.rglob("*")] if cache.exists() else []
    assert leftovers == [], leftovers  # nothing half-written in the cache
    return err


def test_missing_path(capsys, tmp_path):
    assert "does not exist" in fails(capsys, tmp_path, tmp_path / "nope")


def test_unknown_format_lists_the_supported_ones(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert "not a folder or a known archive" in fails(capsys, tmp_path, tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    err = fails(capsys, tmp_path, tmp_path / "empty")
    assert "cannot tell the dataset format" in err and "cifar10-python" in err and "image-folder" in err


def test_truncated_archive(capsys, tmp_path):
    folder, _ = write_cifar10_python(tmp_path / "src")
    archive = tar_folder(folder, tmp_path / "c.tar.gz")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt" in fails(capsys, tmp_path, archive)


def test_corrupt_zip(capsys, tmp_path):
    (tmp_path / "tiny.zip").write_bytes(b"PK\x03\x04 this is not really a zip")
    assert "truncated or corrupt" in fails(capsys, tmp_path, tmp_path / "tiny.zip")


def test_corrupt_image_is_named_and_can_be_skipped(capsys, tmp_path):
    folder, _ = write_image_folder(tmp_path / "tree")
    (folder / "train/cat/0001.png").write_bytes(b"\x89PNG garbage")
    err = fails(capsys, tmp_path, folder)
    assert "train/cat/0001.png" in err and "--skip-bad-images" in err
    code = main(["data", "prepare", str(folder), "--skip-bad-images", "--cache-dir", str(tmp_path / "c2")])
    assert code == 0 and "19 train" in capsys.readouterr().out
    code = main(["data", "info", str(folder), "--skip-bad-images", "--cache-dir", str(tmp_path / "c2")])
    out = capsys.readouterr().out  # info reads the prepared cache, which counted the skipped image
    assert code == 0 and "19 images" in out and "skipped:    1" in out and "prepared cache" in out


def test_labels_out_of_range(capsys, tmp_path):
    folder, _ = write_cifar10_python(tmp_path / "src")
    entry = pickle.loads((folder / "test_batch").read_bytes(), encoding="bytes")
    entry[b"labels"][0] = 12
    (folder / "test_batch").write_bytes(pickle.dumps(entry, protocol=2))
    assert "label 12 outside 0..9" in fails(capsys, tmp_path, folder)


def test_train_and_test_classes_differ(capsys, tmp_path):
    folder, _ = write_image_folder(tmp_path / "tree")
    shutil.rmtree(folder / "test/truck")
    err = fails(capsys, tmp_path, folder)
    assert "class folders" in err and "only in train: truck" in err


def test_empty_split(capsys, tmp_path):
    folder, _ = write_image_folder(tmp_path / "tree", splits=("train",))
    assert "test split is empty" in fails(capsys, tmp_path, folder)


def test_tinyimagenet_annotation_naming_a_missing_file(capsys, tmp_path):
    folder, _ = write_tinyimagenet(tmp_path, as_zip=False)
    os.remove(folder / "val/images/val_2.JPEG")
    err = fails(capsys, tmp_path, folder)
    assert "val_2.JPEG" in err and "missing" in err


def test_wrong_dataset_name_for_the_files(capsys, tmp_path):
    folder, _ = write_cifar10_python(tmp_path / "src")
    assert "holds cifar10" in fails(capsys, tmp_path, folder, "--dataset", "tinyimagenet")
    tree, _ = write_image_folder(tmp_path / "tree")
    assert "has 10 classes, but cifar100 has 100 or 20" in fails(capsys, tmp_path, tree, "--dataset", "cifar100")
    assert "unknown dataset 'cifar11'" in fails(capsys, tmp_path, tree, "--dataset", "cifar11")


def test_malicious_pickle_is_refused_and_runs_nothing(capsys, tmp_path):
    folder, _ = write_cifar10_python(tmp_path / "src")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    payload = pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2)
    pickle.loads(payload)  # the control: a plain unpickler runs it, so its refusal below means something
    assert marker.exists()
    marker.unlink()
    (folder / "data_batch_3").write_bytes(payload)
    archive = tar_folder(folder, tmp_path / "cifar-10-python.tar.gz")
    err = fails(capsys, tmp_path, archive)
    assert "refuses to run" in err and "system" in err
    assert not marker.exists()


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A folder three levels below tmp_path that is the working directory, HOME, the temp folder and the default
    cache's parent: whatever a reader writes, and wherever a member named with up to two `..` would land,
    is inside tmp_path, where `files_under` sees it."""
    box = tmp_path / "one" / "two" / "box"
    for sub in ("home", "tmp"):
        (box / sub).mkdir(parents=True)
    monkeypatch.chdir(box)
    monkeypatch.setenv("HOME", str(box / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(box / "home" / ".cache"))
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(box / "default-cache"))
    monkeypatch.setenv("TMPDIR", str(box / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(box / "tmp"))
    return box


def files_under(root) -> dict:
    """Every file and link under root with its bytes (links: their target)."""
    return {str(p): os.readlink(p) if p.is_symlink() else p.read_bytes() for p in sorted(Path(root).rglob("*"))
            if p.is_file() or p.is_symlink()}


ABSOLUTE = Path("/etc/cnnlab-test-evil.png")


@pytest.mark.parametrize("bad_name", ["../escape.png", str(ABSOLUTE), "train/../../up.png", "./../../../x.png"])
def test_tar_with_unsafe_member_names(capsys, tmp_path, sandbox, bad_name):
    folder, _ = write_image_folder(sandbox / "tree", per_class=1)
    archive = sandbox / "evil.tar"
    payload = png_bytes(rng_images(1, seed=99)[0])
    with tarfile.open(archive, "w") as tar:
        tar.add(folder, arcname=".")
        info = tarfile.TarInfo(bad_name)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    assert not ABSOLUTE.exists()
    before = files_under(tmp_path)
    err = fails(capsys, sandbox, archive)
    assert "unsafe member name" in err and repr(bad_name) in err
    # nothing written anywhere: not beside the archive, the cache, the working directory, HOME or the temp folder
    assert files_under(tmp_path) == before
    assert not ABSOLUTE.exists()


def test_zip_with_unsafe_member_names(capsys, tmp_path, sandbox):
    with zipfile.ZipFile(sandbox / "evil.zip", "w") as z:
        z.writestr("tiny-imagenet-200/wnids.txt", "n00000001\n")
        z.writestr("../../evil.txt", "cnnlab-escaped-payload")
    before = files_under(tmp_path)
    assert "unsafe member name" in fails(capsys, sandbox, sandbox / "evil.zip")
    assert files_under(tmp_path) == before


def test_links_in_a_tar_are_not_followed(tmp_path, sandbox):
    folder, truth = write_image_folder(sandbox / "tree", per_class=1)
    # A readable image outside the archive: a reader that followed a link to it would decode an eleventh image.
    outside = tmp_path / "outside.png"
    outside.write_bytes(png_bytes(rng_images(1, seed=7)[0]))
    archive = sandbox / "links.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(folder, arcname=".")
        for name, kind, target in [("train/cat/9997.png", tarfile.SYMTYPE, str(outside)),
                                   ("train/cat/9998.png", tarfile.SYMTYPE, "../../../../outside.png"),
                                   ("train/cat/9999.png", tarfile.SYMTYPE, "/etc/passwd"),
                                   ("train/dog/9999.png", tarfile.LNKTYPE, str(outside))]:
            link = tarfile.TarInfo(name)
            link.type, link.linkname = kind, target
            tar.addfile(link)
    from cnnlab.data import load_dataset

    before = files_under(tmp_path)
    ds = load_dataset(None, archive, cache_dir=sandbox / "c")
    assert len(ds.train) == 10 and ds.train.labels.tolist() == list(range(10))  # the links were skipped
    assert np.array_equal(ds.train.images[3], truth["train/cat/0000.png"])
    assert not (ds.train.images == np.asarray(Image.open(outside))).all(axis=(1, 2, 3)).any()
    new = set(files_under(tmp_path)) - set(before)
    assert new and all(Path(p).is_relative_to(sandbox / "c") for p in new), new  # only the cache was written


def test_download_checksum_mismatch(capsys, tmp_path, monkeypatch):
    source = tmp_path / "server" / "cifar-10-python.tar.gz"
    source.parent.mkdir()
    source.write_bytes(b"not the real archive")
    monkeypatch.setitem(download_module.OFFICIAL, "cifar10",
                        [("cifar-10-python.tar.gz", [source.as_uri()], "c58f30108f718f92721af3b95e74349a")])
    dest = tmp_path / "data"
    err = fails(capsys, tmp_path, dest, "--dataset", "cifar10", "--download")
    assert "published checksum is c58f30108f718f92721af3b95e74349a" in err
    assert list(dest.iterdir()) == []  # the damaged download was removed


def test_download_fetches_verifies_and_reads(capsys, tmp_path, monkeypatch):
    folder, _ = write_cifar10_python(tmp_path / "src")
    archive = tar_folder(folder, tmp_path / "server.tar.gz")
    md5 = download_module.md5_of(archive)
    monkeypatch.setitem(download_module.OFFICIAL, "cifar10", [("cifar-10-python.tar.gz", [archive.as_uri()], md5)])
    code = main(["data", "info", str(tmp_path / "data"), "--dataset", "cifar10", "--download",
                 "--cache-dir", str(tmp_path / "c")])
    assert code == 0 and "cifar10-python" in capsys.readouterr().out
    assert (tmp_path / "data" / "cifar-10-python.tar.gz").is_file()
