"""What the files hold, found cheaply and before any decoding: detection, the cache key, `data info`, ImageNet's
layout, Tiny ImageNet's metadata (issue 12's new-user defects)."""

import json
import os

import pytest

import cnnlab.data.folder as folder_module
import cnnlab.data.tinyimagenet as tiny_module
from cnnlab.cli import main
from cnnlab.data import detect_dataset, load_dataset
from data_fixtures import tar_folder, write_image_folder, write_tinyimagenet


def one_error(capsys, argv) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("cnnlab: error: ") and err.count("\n") == 1, (code, err)
    return err


@pytest.fixture
def no_decoding(monkeypatch):
    """Any image decode fails the test: what is checked must be checked before decoding starts."""

    def refuse(*_, **__):
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(folder_module, "decode_all", refuse)
    monkeypatch.setattr(tiny_module, "decode_all", refuse)


def test_detection_reads_names_only(tmp_path, no_decoding):
    tree, _ = write_image_folder(tmp_path / "tree")
    assert detect_dataset(tar_folder(tree, tmp_path / "c.tar.gz"), tmp_path / "cache") == "cifar10"
    path, _ = write_tinyimagenet(tmp_path)
    assert detect_dataset(path, tmp_path / "cache") == "tinyimagenet"
    digits, _ = write_image_folder(tmp_path / "digits", classes=[str(d) for d in range(10)], size=28)
    assert detect_dataset(digits, tmp_path / "cache") == "mnist"
    assert not (tmp_path / "cache").exists()  # detection alone writes nothing


def test_prepare_without_dataset_and_train_with_it_share_one_cache(tmp_path, capsys, monkeypatch):
    archive = tar_folder(write_image_folder(tmp_path / "tree")[0], tmp_path / "c.tar.gz")
    cache = tmp_path / "cache"
    assert main(["data", "prepare", str(archive), "--cache-dir", str(cache)]) == 0
    folders = [p.name for p in cache.iterdir() if p.name != "detected"]
    assert len(folders) == 1 and folders[0].startswith("cifar10-"), folders
    monkeypatch.setattr(folder_module, "decode_all", lambda *_: pytest.fail("decoded again"))
    assert len(load_dataset("cifar10", archive, cache_dir=cache).train) == 20
    assert len(load_dataset(None, archive, cache_dir=cache).train) == 20
    assert [p.name for p in cache.iterdir() if p.name != "detected"] == folders


def test_train_detects_the_dataset_and_stores_the_data_path_absolute(tmp_path, capsys, monkeypatch):
    tree, _ = write_image_folder(tmp_path / "data" / "tree")
    monkeypatch.chdir(tmp_path / "data")
    out = tmp_path / "run"
    assert main(["train", "--model", "softmax", "--data", "tree", "--epochs", "1", "--device", "cpu",
                 "--cache-dir", "cache", "--out", str(out), "--val-split", "0"]) == 0
    config = (out / "config.toml").read_text()
    assert 'dataset = "cifar10"' in config
    assert f'data = "{tree.resolve()}"' in config and f'cache_dir = "{(tmp_path / "data/cache").resolve()}"' in config
    monkeypatch.chdir(tmp_path)  # eval from another folder finds the data the run was trained on
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0
    assert "test (20 images)" in capsys.readouterr().out


def test_train_without_data_or_dataset_says_what_to_pass(tmp_path, capsys):
    err = one_error(capsys, ["train", "--model", "softmax", "--out", tmp_path / "run"])
    assert "--data PATH" in err and not (tmp_path / "run").exists()


def test_info_decodes_nothing_and_writes_no_cache(tmp_path, capsys, no_decoding):
    path, _ = write_tinyimagenet(tmp_path)
    cache = tmp_path / "cache"
    assert main(["data", "info", str(path), "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "tinyimagenet" in out and "200 images, 1 per class" in out and "no image decoded" in out
    assert "64×64, 3 channels" in out and not cache.exists()
    tree, _ = write_image_folder(tmp_path / "tree")
    assert main(["data", "info", str(tree), "--cache-dir", str(cache)]) == 0
    assert "20 images, 2 per class" in capsys.readouterr().out and not cache.exists()


def test_info_for_imagenet_refuses_what_is_not_imagenet(tmp_path, capsys):
    err = one_error(capsys, ["data", "info", tmp_path / "nope", "--dataset", "imagenet"])
    assert "does not exist" in err
    tiny, _ = write_tinyimagenet(tmp_path / "t", as_zip=False)
    err = one_error(capsys, ["data", "info", tiny, "--dataset", "imagenet"])
    assert "not laid out as ImageNet" in err and "it holds tinyimagenet" in err and "--dataset tinyimagenet" in err
    (tmp_path / "z").mkdir()
    archive, _ = write_tinyimagenet(tmp_path / "z")
    err = one_error(capsys, ["data", "info", archive, "--dataset", "imagenet"])
    assert "an archive" in err and "tinyimagenet" in err
    flat = tmp_path / "flat"
    write_image_folder(flat, classes=["n01440764", "n01443537"], per_class=1, splits=("train",), fmt="JPEG")
    (flat / "val").mkdir()
    (flat / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(b"x")
    assert "val/<wnid>/ folders" in one_error(capsys, ["data", "info", flat, "--dataset", "imagenet"])


def test_train_refuses_a_tinyimagenet_folder_as_imagenet(tmp_path, capsys):
    tiny, _ = write_tinyimagenet(tmp_path / "t", as_zip=False)
    err = one_error(capsys, ["train", "--dataset", "imagenet", "--data", tiny, "--out", tmp_path / "run"])
    assert "not laid out as ImageNet" in err and not (tmp_path / "run").exists()


def test_tinyimagenet_extra_class_in_wnids_is_refused_before_decoding(tmp_path, capsys, no_decoding):
    folder, ids = write_tinyimagenet(tmp_path, as_zip=False)
    (folder / "wnids.txt").write_text("\n".join(ids + ["n99999999"]))
    err = one_error(capsys, ["data", "prepare", folder, "--cache-dir", tmp_path / "c"])
    assert "lists 201 classes" in err and "Tiny ImageNet has 200" in err and "--dataset" not in err


def test_tinyimagenet_missing_train_folder_is_refused(tmp_path, capsys, no_decoding):
    folder, ids = write_tinyimagenet(tmp_path, as_zip=False)
    missing = sorted(ids)[7]
    for f in (folder / "train" / missing / "images").iterdir():
        f.unlink()
    for command in ("info", "prepare"):
        err = one_error(capsys, ["data", command, folder, "--cache-dir", tmp_path / "c"])
        assert "1 of them have no images in train/" in err and missing in err
    assert not (tmp_path / "c").exists()


def test_info_reads_the_cache_once_prepared(tmp_path, capsys):
    tree, _ = write_image_folder(tmp_path / "tree")
    cache = tmp_path / "cache"
    assert main(["data", "prepare", str(tree), "--cache-dir", str(cache)]) == 0
    assert main(["data", "info", str(tree), "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "prepared cache" in out and "image size: 32×32, 3 channels" in out


def test_a_load_remembers_what_the_files_hold(tmp_path, monkeypatch):
    archive = tar_folder(write_image_folder(tmp_path / "tree")[0], tmp_path / "c.tar.gz")
    load_dataset(None, archive, cache_dir=tmp_path / "cache")
    import cnnlab.data as data_module

    monkeypatch.setattr(data_module, "detect", lambda *_: pytest.fail("listed the archive again"))
    assert detect_dataset(archive, tmp_path / "cache") == "cifar10"
    os.utime(archive, (1, 1))  # changed files: the memo no longer applies, so it lists again
    with pytest.raises(pytest.fail.Exception, match="listed the archive again"):
        detect_dataset(archive, tmp_path / "cache")


def test_summary_for_a_folder_run_names_the_dataset(tmp_path):
    tree, _ = write_image_folder(tmp_path / "tree")
    out = tmp_path / "run"
    assert main(["train", "--model", "softmax", "--data", str(tree), "--epochs", "1", "--device", "cpu",
                 "--cache-dir", str(tmp_path / "c"), "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["dataset"] == "cifar10"
