"""The data home: where it is, which copy of a dataset a run takes from it, what it says when it cannot, and the
official files fetched into it (from 127.0.0.1, in their published formats)."""


import pytest
from data_fixtures import (serve_folder, tar_folder, write_cifar10_python, write_image_folder, write_mnist_idx,
                           write_tinyimagenet)

from cnnlab import CnnlabError
from cnnlab.config import TrainConfig
from cnnlab.data import home, official
from cnnlab.run_data import resolve_data


def test_the_data_root_wins_then_the_environment_then_the_per_user_default(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path / "env"))
    assert home.data_home(tmp_path / "flag") == home.Home(tmp_path / "flag", "--data-root")
    assert home.data_home() == home.Home(tmp_path / "env", "$CNNLAB_DATA")
    monkeypatch.delenv("CNNLAB_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert home.data_home() == home.Home(tmp_path / "xdg" / "cnnlab" / "datasets", "default")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert home.data_home().path == tmp_path / "user" / ".cache" / "cnnlab" / "datasets"


def test_the_official_archive_comes_first_then_its_folder_then_the_copies_cnnlab_knows(tmp_path):
    tar_folder(write_image_folder(tmp_path / "jpeg")[0], tmp_path / "cifar10-jpeg.tar.gz")
    found = home.locate("cifar10", tmp_path)
    assert (found.path.name, found.copy.kind) == ("cifar10-jpeg.tar.gz", "re-encoded")
    assert "accuracies sit ~3.5 points below published CIFAR-10 numbers" in found.describe()
    folder, _ = write_cifar10_python(tmp_path)
    assert home.locate("cifar10", tmp_path).path == folder  # cifar-10-batches-py/, the official files extracted
    tar_folder(folder, tmp_path / "cifar-10-python.tar.gz")
    found = home.locate("cifar10", tmp_path)
    assert found.path == tmp_path / "cifar-10-python.tar.gz" and found.copy.official
    assert found.describe() == "the official files: CIFAR-10, python version"


def test_tiny_imagenets_subset_is_named_for_what_it_is(tmp_path):
    write_tinyimagenet(tmp_path / "t", as_zip=False)
    tar_folder(tmp_path / "t" / "tiny-imagenet-200", tmp_path / "tiny-imagenet-200-train100.tar.gz")
    found = home.locate("tinyimagenet", tmp_path)
    assert found.copy.kind == "subset" and "train100 results, not Tiny ImageNet results" in found.describe()
    notes = home.data_notes(found.path, "tinyimagenet")
    assert notes["data_copy"].startswith("subset: train100: 100 training images per class")
    assert notes["data_label"] == "tinyimagenet (train100 subset)"
    assert home.data_notes(tmp_path / "mine.zip", "tinyimagenet") == {"data_copy": None, "data_label": "tinyimagenet"}


def test_a_missing_dataset_names_the_files_looked_for_and_the_command_that_fetches_them(tmp_path):
    with pytest.raises(home.Missing) as e:
        home.locate("cifar100", tmp_path)
    assert str(e.value) == (f"no cifar100 in {tmp_path} (--data-root); looked for cifar-100-python.tar.gz, "
                            "cifar-100-python/, cifar-100-binary.tar.gz, cifar-100-binary/. Fetch the official "
                            "files with `cnnlab data fetch cifar100`, or pass --data PATH")
    with pytest.raises(home.Missing, match=r"imagenet is not downloadable .*put its train/ and val/ class folders"):
        home.locate("imagenet", tmp_path)


def test_a_data_home_that_does_not_exist_is_one_line_unless_it_is_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path / "typo"))
    with pytest.raises(CnnlabError, match=rf"^data home {tmp_path / 'typo'} \(\$CNNLAB_DATA\) is missing, not a "
                                          r"folder; point \$CNNLAB_DATA at the folder that holds your datasets"):
        resolve_data(TrainConfig(dataset="cifar10"), say=print)
    monkeypatch.delenv("CNNLAB_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "fresh"))  # a new user's machine: nothing there yet
    with pytest.raises(CnnlabError, match=r"^no mnist in .*fresh/cnnlab/datasets \(the default data home\); "
                                          r"looked for mnist/, MNIST/raw/, mnist-png.tar.gz"):
        resolve_data(TrainConfig(dataset="mnist"), say=print)


def test_an_archive_with_the_right_name_and_the_wrong_content_is_refused(tmp_path):
    served, _ = write_mnist_idx(tmp_path / "idx")
    (tmp_path / "home").mkdir()
    tar_folder(served, tmp_path / "home" / "cifar-10-python.tar.gz")  # MNIST under CIFAR-10's archive name
    with pytest.raises(CnnlabError, match=r"cifar-10-python.tar.gz holds mnist, not cifar10; pass --dataset mnist"):
        resolve_data(TrainConfig(dataset="cifar10", data_root=str(tmp_path / "home")), say=print)


def test_an_archive_and_its_extracted_folder_that_disagree_are_refused(tmp_path):
    folder, _ = write_cifar10_python(tmp_path)
    tar_folder(folder, tmp_path / "cifar-10-python.tar.gz")
    assert home.locate("cifar10", tmp_path).path.name == "cifar-10-python.tar.gz"  # the two agree
    (folder / "data_batch_5").write_bytes((folder / "data_batch_5").read_bytes()[:-10])  # a damaged extraction
    with pytest.raises(CnnlabError, match=rf"^{tmp_path} holds both cifar-10-python.tar.gz and cifar-10-batches-py/,"
                                          r" but they differ \(first difference: cifar-10-batches-py/data_batch_5\); delete"):
        home.locate("cifar10", tmp_path)


def test_a_run_without_data_reads_the_data_homes_copy_and_says_which(tmp_path, monkeypatch):
    (tmp_path / "home").mkdir()
    write_tinyimagenet(tmp_path / "home")
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path / "home"))
    lines = []
    config = resolve_data(TrainConfig(model="resnet18", dataset="tinyimagenet"), say=lines.append)
    assert config.data == str(tmp_path / "home" / "tiny-imagenet-200.zip")
    assert lines == [f"data: {config.data} (tinyimagenet from $CNNLAB_DATA, the official files: Tiny ImageNet "
                     "(100,000 training images, its 10,000 labelled val images as the test split))"]
    with pytest.raises(CnnlabError, match=r"^say what to train on: --dataset NAME \(its files are found in the data "
                                          r"home\), --data PATH"):
        resolve_data(TrainConfig(), say=print)


@pytest.fixture
def served_archives(tmp_path, monkeypatch):
    """CIFAR-10's python archive and MNIST's four files served from 127.0.0.1 as their official addresses."""
    folder, _ = write_cifar10_python(tmp_path / "made")
    served = tmp_path / "served"
    served.mkdir()
    tar_folder(folder, served / "cifar-10-python.tar.gz")
    write_mnist_idx(served)
    with serve_folder(served) as (base, requested):
        for name, files in (("cifar10", ["cifar-10-python.tar.gz"]),
                            ("mnist", [f for f, _, _ in official.OFFICIAL["mnist"]])):
            monkeypatch.setitem(official.OFFICIAL, name, [(f, [f"{base}/{f}"], official.md5_of(served / f))
                                                          for f in files])
        yield served, requested


def test_fetch_puts_the_official_files_where_locate_finds_them(tmp_path, served_archives):
    served, requested = served_archives
    data_home = tmp_path / "home"
    assert home.fetch("cifar10", data_home) == data_home / "cifar-10-python.tar.gz"
    assert home.fetch("mnist", data_home) == data_home / "mnist"
    assert home.locate("cifar10", data_home).copy.kind == "official"
    assert home.locate("mnist", data_home).path == data_home / "mnist"
    assert len(requested) == 5
    home.fetch("cifar10", data_home)  # already there with the published checksum: nothing fetched again
    assert len(requested) == 5
    assert official.checksum_status(data_home / "cifar-10-python.tar.gz") == "official (cifar-10-python.tar.gz)"
    with pytest.raises(CnnlabError, match=r"^there is no official download for 'imagenet'; cnnlab can fetch cifar10"):
        home.fetch("imagenet", data_home)


def test_the_listing_shows_each_copy_what_it_is_and_what_is_missing(tmp_path, served_archives):
    data_home = tmp_path / "home"
    home.fetch("cifar10", data_home)
    tar_folder(write_image_folder(tmp_path / "jpeg")[0], data_home / "cifar10-jpeg.tar.gz")
    (data_home / "notes.txt").write_text("mine")
    lines = home.listing(data_home)
    assert lines[0].startswith(f"data home: {data_home} (--data-root;")
    cifar = [line for line in lines if "cifar-10-python.tar.gz" in line or "cifar10-jpeg" in line]
    assert "cifar10" in cifar[0] and " used " in cifar[0] and cifar[0].endswith(
        "official, MD5 checked: CIFAR-10, python version")
    assert " used " not in cifar[1] and "re-encoded: all of CIFAR-10 as JPEG" in cifar[1]
    assert any(line.split()[:2] == ["mnist", "missing."] and "`cnnlab data fetch mnist`" in line for line in lines)
    assert lines[-1] == "  not known to cnnlab (pass them with --data): notes.txt"
    tar_folder(write_cifar10_python(tmp_path / "other")[0], data_home / "cifar-10-python.tar.gz")  # other bytes
    assert "used cifar-10-python.tar.gz" in home.listing(data_home)[1]
    assert "official name, other bytes (no published MD5 matches" in home.listing(data_home)[1]


def test_the_seed_report_plans_and_trains_from_a_data_home_of_official_archives(tmp_path, monkeypatch, capsys):
    """The main job on a user's machine: only the official archives, in $CNNLAB_DATA, and one command."""
    from cnnlab.cli import main
    from test_wheel import official_data_home

    data = official_data_home(tmp_path / "data")
    monkeypatch.setenv("CNNLAB_DATA", str(data))
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "seed-report", "--dry-run"]) == 0
    out = capsys.readouterr().out
    for name in ("cifar-10-python.tar.gz", "tiny-imagenet-200.zip"):
        assert out.count(f"data:     {data / name} (") == 2
    assert out.count("the official files: ") == 4 and "re-encoded" not in out and "subset" not in out
    assert main(["sweep", "seed-report", "--set", "epochs=1", "--set", "subset=500", "--set", "test_subset=200"]) == 0
    assert (tmp_path / "runs" / "seed-report" / "report" / "index.html").is_file()
    assert len(list((tmp_path / "runs" / "seed-report").glob("*/summary.json"))) == 4
    results = (tmp_path / "runs" / "seed-report" / "report" / "results.md").read_text(encoding="utf-8")
    assert "Data: cifar10: official: CIFAR-10, python version; tinyimagenet: official: Tiny ImageNet" in results


def test_a_report_names_a_subset_for_what_it_is(tmp_path, monkeypatch):
    """RESULTS-style labels come from the file a run read, not from a preset's comment."""
    from cnnlab.engine import fit
    from cnnlab.report import write_report

    write_tinyimagenet(tmp_path / "t", per_class=2, n_val=20, as_zip=False)
    (tmp_path / "home").mkdir()
    tar_folder(tmp_path / "t" / "tiny-imagenet-200", tmp_path / "home" / "tiny-imagenet-200-train100.tar.gz")
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path / "home"))
    fit(TrainConfig(model="softmax", dataset="tinyimagenet", epochs=1, out=str(tmp_path / "run"), device="cpu"))
    results = (write_report([tmp_path / "run"], tmp_path / "report").parent / "results.md").read_text()
    assert "| tinyimagenet (train100 subset) |" in results
    assert "Data: tinyimagenet (train100 subset): subset: train100: 100 training images per class" in results


def test_data_fetch_and_list_from_the_command_line(tmp_path, served_archives, capsys, monkeypatch):
    from cnnlab.cli import main

    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path / "new-home"))  # fetching creates the home it is told
    assert main(["data", "fetch", "mnist", "imagenet"]) == 2
    assert capsys.readouterr().err.startswith("cnnlab: error: there is no official download for 'imagenet'")
    assert not (tmp_path / "new-home").exists()  # a bad name is refused before the first download
    assert main(["data", "fetch", "cifar10", "mnist"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"cifar10: {tmp_path / 'new-home' / 'cifar-10-python.tar.gz'} (official, MD5-checked)",
                   f"mnist: {tmp_path / 'new-home' / 'mnist'} (official, MD5-checked)"]
    assert main(["data", "list"]) == 0
    listed = capsys.readouterr().out
    assert "official, MD5 checked: CIFAR-10, python version" in listed and "used mnist/" in listed
    assert main(["train", "--model", "softmax", "--dataset", "cifar10", "--epochs", "1", "--out",
                 str(tmp_path / "run"), "--device", "cpu"]) == 0
    assert f"data: {tmp_path / 'new-home' / 'cifar-10-python.tar.gz'} (cifar10 from $CNNLAB_DATA, the official " \
           "files: CIFAR-10, python version)" in capsys.readouterr().out
