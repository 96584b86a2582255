"""`make demo` where the data home has MNIST and where it has not: the Makefile recipe's own cnnlab commands, run
in-process on tiny MNIST fixtures, with "official MNIST" served from 127.0.0.1 in its published format (idx, gzip),
so no test needs the internet."""

import json
import shlex
from pathlib import Path

import pytest
from data_fixtures import serve_folder, tar_folder, write_image_folder, write_mnist_idx

from cnnlab import CnnlabError
from cnnlab.run_data import resolve_data
from cnnlab.cli import main
from cnnlab.config import TrainConfig
from cnnlab.data import home, official

REPO = Path(__file__).resolve().parents[1]
MNIST_FILES = [name for name, _, _ in official.OFFICIAL["mnist"]]


def demo_commands(run: Path) -> list[list[str]]:
    """The cnnlab commands of the Makefile's `demo` recipe, with RUN filled in (the data comes from the data home,
    which the Makefile points at DATA)."""
    recipe = (REPO / "Makefile").read_text(encoding="utf-8").split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    lines = [line.strip() for line in recipe.splitlines() if line.strip().startswith("$(VENV)/bin/cnnlab ")]
    assert [line.split()[1] for line in lines] == ["train", "eval"], recipe
    return [shlex.split(line.replace("$(RUN)", str(run)))[1:] for line in lines]


def run_demo(capsys, data: Path, run: Path, monkeypatch) -> tuple[list[int], str, str]:
    monkeypatch.setenv("CNNLAB_DATA", str(data))
    codes = [main(argv) for argv in demo_commands(run)]
    out, err = capsys.readouterr()
    return codes, out, err


@pytest.fixture
def official_mnist(tmp_path, monkeypatch):
    """Official MNIST's four files served over HTTP, published (to cnnlab) with their MD5s; the first address of each
    answers 404, as a dead official site does, so the mirror is what serves it. Yields (served folder, requests)."""
    served, _ = write_mnist_idx(tmp_path / "served", n_train=60, n_test=20)
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path / "cache"))
    with serve_folder(served) as (base, requested):
        monkeypatch.setitem(official.OFFICIAL, "mnist", [
            (name, [f"{base}/gone/{name}", f"{base}/{name}"], official.md5_of(served / name)) for name in MNIST_FILES])
        yield served, requested


def test_the_makefile_points_the_data_home_at_data_where_it_exists():
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "ifneq ($(wildcard $(DATA)),)\nexport CNNLAB_DATA := $(abspath $(DATA))\nendif" in makefile


def test_the_demo_uses_the_data_homes_copy_when_there_is_one(tmp_path, capsys, official_mnist, monkeypatch):
    _, requested = official_mnist
    shared = tmp_path / "shared"
    shared.mkdir()
    write_image_folder(tmp_path / "mnist-png", classes=[str(d) for d in range(10)], per_class=4, size=28)
    tar_folder(tmp_path / "mnist-png", shared / "mnist-png.tar.gz")
    codes, out, err = run_demo(capsys, shared, tmp_path / "run", monkeypatch)
    assert codes == [0, 0], err
    assert (f"data: {shared}/mnist-png.tar.gz (mnist from $CNNLAB_DATA, a re-encoded copy: all of MNIST as "
            "lossless PNG (the same pixels))") in out.splitlines()
    assert requested == [] and sorted(p.name for p in shared.iterdir()) == ["mnist-png.tar.gz"]
    config = (tmp_path / "run" / "config.toml").read_text(encoding="utf-8")
    assert f'data = "{shared / "mnist-png.tar.gz"}"' in config and "download = true" in config
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["data_copy"] == "re-encoded: all of MNIST as lossless PNG (the same pixels)"
    assert summary["data_label"] == "mnist (PNG copy)"


def test_with_an_empty_data_home_the_demo_trains_on_official_mnist_downloaded_into_it(
        tmp_path, capsys, official_mnist, monkeypatch):
    served, requested = official_mnist
    data_home = tmp_path / "data-home"
    data_home.mkdir()
    codes, out, err = run_demo(capsys, data_home, tmp_path / "run", monkeypatch)
    assert codes == [0, 0], err
    downloads = data_home / "mnist"
    assert (f"data: the official mnist files, downloaded into {downloads} and MD5-checked") in out.splitlines()
    assert requested == [p for name in MNIST_FILES for p in (f"/gone/{name}", f"/{name}")]
    assert all((downloads / name).read_bytes() == (served / name).read_bytes() for name in MNIST_FILES)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["dataset"] == "mnist" and summary["test_size"] == 20  # the served copy, not some other
    assert summary["data_copy"].startswith("official: MNIST, its four idx files")
    assert f'data = "{downloads}"' in (tmp_path / "run" / "config.toml").read_text(encoding="utf-8")
    assert home.locate("mnist").path == downloads  # the next run finds it: nothing fetched again
    codes, out, err = run_demo(capsys, data_home, tmp_path / "run2", monkeypatch)
    assert codes == [0, 0] and len(requested) == 8, err


def test_a_download_whose_md5_is_not_the_published_one_stops_the_demo_and_is_not_kept(
        tmp_path, capsys, official_mnist, monkeypatch):
    files = list(official.OFFICIAL["mnist"])
    name, urls, _ = files[2]
    files[2] = (name, urls, "0" * 32)
    monkeypatch.setitem(official.OFFICIAL, "mnist", files)
    (tmp_path / "data-home").mkdir()
    codes, out, err = run_demo(capsys, tmp_path / "data-home", tmp_path / "run", monkeypatch)
    assert codes[0] == 2 and err.count("\n") <= 2, err  # train's one line (eval then finds no run: its own line)
    first = err.splitlines()[0]
    assert first.startswith("cnnlab: error: ") and "the published checksum is " + "0" * 32 in first, first
    assert name not in {p.name for p in (tmp_path / "data-home" / "mnist").iterdir()}
    assert not (tmp_path / "run").exists()


def test_download_without_data_fetches_and_without_a_dataset_says_what_to_add(tmp_path, official_mnist,
                                                                             empty_data_home):
    lines = []
    config = resolve_data(TrainConfig(dataset="mnist", download=True), say=lines.append)
    downloads = empty_data_home / "mnist"
    assert config.data == str(downloads) and config.dataset == "mnist"
    assert lines == [f"data: the official mnist files, downloaded into {downloads} and MD5-checked"]
    with pytest.raises(CnnlabError, match=r"^--download needs --dataset NAME to know what to fetch$"):
        resolve_data(TrainConfig(data=str(tmp_path / "missing"), download=True), say=lines.append)
