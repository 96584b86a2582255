"""Bad input: one line on stderr saying what is wrong and what to do, exit code 2, no traceback, nothing left."""

import io
import os
import pickle
import shutil
import tarfile
import zipfile

import pytest

from cnnlab.cli import main
from cnnlab.data import official as download_module
from data_fixtures import (png_bytes, rng_images, tar_folder, write_cifar10_python, write_image_folder,
                           write_tinyimagenet)


def fails(capsys, tmp_path, *argv):
    """Run `cnnlab data info …` with a private cache; return the error line after checking its form."""
    cache = tmp_path / "cache"
    code = main(["data", "info", *map(str, argv), "--cache-dir", str(cache)])
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
    code = main(["data", "info", str(folder), "--skip-bad-images", "--cache-dir", str(tmp_path / "c2")])
    out = capsys.readouterr().out
    assert code == 0 and "19 images" in out and "skipped:    1" in out


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

    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2))
    archive = tar_folder(folder, tmp_path / "cifar-10-python.tar.gz")
    err = fails(capsys, tmp_path, archive)
    assert "refuses to run" in err and "system" in err
    assert not marker.exists()


@pytest.mark.parametrize("bad_name", ["../escape.png", "/etc/evil.png", "train/../../up.png"])
def test_tar_with_unsafe_member_names(capsys, tmp_path, bad_name):
    folder, _ = write_image_folder(tmp_path / "tree", per_class=1)
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(folder, arcname=".")
        data = png_bytes(rng_images(1)[0])
        info = tarfile.TarInfo(bad_name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    err = fails(capsys, tmp_path, archive)
    assert "unsafe member name" in err
    assert not (tmp_path / "escape.png").exists() and not (tmp_path.parent / "up.png").exists()


def test_zip_with_unsafe_member_names(capsys, tmp_path):
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as z:
        z.writestr("../../evil.txt", "x")
    assert "unsafe member name" in fails(capsys, tmp_path, tmp_path / "evil.zip")


def test_links_in_a_tar_are_not_followed(tmp_path):
    folder, _ = write_image_folder(tmp_path / "tree", per_class=1)
    archive = tmp_path / "links.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(folder, arcname=".")
        link = tarfile.TarInfo("train/cat/9999.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    from cnnlab.data import load_dataset

    assert len(load_dataset(None, archive, cache_dir=tmp_path / "c").train) == 10  # the link was skipped


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
