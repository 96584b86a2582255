"""cnnlab installed, not cloned: the wheel built from this checkout, installed into a fresh virtual environment and
run from a folder outside the checkout, where it lists the shipped presets, plans a sweep by a preset's name and
trains one small run. The environment reuses this interpreter's torch and other dependencies (a .pth file naming
their folders), so nothing is downloaded."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from data_fixtures import tar_folder, write_cifar10_python, write_mnist_idx, write_tinyimagenet

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted(p.stem for p in (REPO / "src" / "cnnlab" / "presets").glob("*.toml"))
DEPENDENCIES = ("torch", "numpy", "PIL", "matplotlib", "tqdm")  # pyproject.toml's, by import name


def run(*argv, cwd=None, env=None) -> str:
    done = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def build_wheel(tmp_path: Path) -> Path:
    """The wheel of a copy of the checkout: building in place would leave build/ and *.egg-info in it."""
    source = tmp_path / "source"
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    # Offline with the setuptools this interpreter has; without one, pip fetches the build backend from the index.
    offline = ["--no-build-isolation", "--no-index"] if importlib.util.find_spec("setuptools") else []
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", *offline, "--wheel-dir", tmp_path / "dist", source)
    (wheel,) = (tmp_path / "dist").glob("cnnlab-*.whl")
    return wheel


def install(wheel: Path, venv: Path) -> Path:
    """A fresh virtual environment with the wheel installed and this interpreter's dependencies visible; its bin/."""
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    run(sys.executable, "-m", "pip", "--python", bin_dir / "python", "install", "--no-deps", "--no-index", wheel)
    # Only after the install: pip, seeing this checkout's editable cnnlab on the path, would call it installed.
    site = run(bin_dir / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").strip()
    folders = {str(Path(importlib.util.find_spec(name).origin).parent.parent) for name in DEPENDENCIES}
    (Path(site) / "dependencies-of-the-test.pth").write_text("\n".join(sorted(folders)) + "\n", encoding="utf-8")
    return bin_dir


@pytest.mark.slow
def test_the_installed_wheel_lists_plans_and_trains_presets_by_name_outside_the_checkout(tmp_path):
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        shipped = sorted(Path(n).stem for n in archive.namelist() if n.startswith("cnnlab/presets/") and
                         n.endswith(".toml"))
    assert shipped == PRESETS
    bin_dir = install(wheel, tmp_path / "venv")
    elsewhere = tmp_path / "elsewhere"  # a user's folder: no checkout, no ../shared beside it
    elsewhere.mkdir()
    data = official_data_home(tmp_path / "data")  # what a user fetched: only the official formats
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(CNNLAB_CACHE_DIR=str(tmp_path / "cache"), CNNLAB_DATA=str(data))
    cnnlab = bin_dir / "cnnlab"

    where = run(bin_dir / "python", "-c", "import cnnlab.presets; print(cnnlab.presets.FOLDER)", cwd=elsewhere,
                env=env).strip()
    assert Path(where).is_relative_to(tmp_path / "venv"), where  # the installed package, not this checkout

    listed = run(cnnlab, "presets", cwd=elsewhere, env=env).splitlines()
    assert [line.split()[0] for line in listed[1:len(PRESETS) + 1]] == PRESETS

    planned = run(cnnlab, "sweep", "seed-report", "--dry-run", cwd=elsewhere, env=env)
    assert planned.splitlines()[0] == (f"{where}/seed-report.toml: 4 runs into runs/seed-report; "
                                       f"data: {data} ($CNNLAB_DATA)"), planned
    for name in ("cifar-10-python.tar.gz", "tiny-imagenet-200.zip"):
        assert planned.count(f"data:     {data / name} (") == 2 and "the official files: " in planned

    run(cnnlab, "sweep", "seed-report", "--set", "epochs=1", "--set", "subset=500", "--set", "test_subset=200",
        cwd=elsewhere, env=env)
    runs = sorted(p.name for p in (elsewhere / "runs" / "seed-report").iterdir())
    assert runs == ["report", "resnet18-cifar10-seed0", "resnet18-tinyimagenet-seed0", "vgg11-cifar10-seed0",
                    "vgg11-tinyimagenet-seed0"]
    assert (elsewhere / "runs" / "seed-report" / "report" / "index.html").is_file()
    summary = json.loads((elsewhere / "runs" / "seed-report" / "vgg11-tinyimagenet-seed0" / "summary.json").read_text())
    assert summary["epochs_run"] == 1 and summary["data_copy"].startswith("official: Tiny ImageNet")

    out = run(cnnlab, "train", "--config", "speedrun-cifar10", "--epochs", "1", "--subset", "2000", "--out",
              "speedrun", cwd=elsewhere, env=env)  # a preset shortened: its warm-up and Lookahead follow
    assert "warmup_epochs 2.3 → 0.23 (the config's 10 epochs shortened to 1)" in out.splitlines()
    assert json.loads((elsewhere / "speedrun" / "summary.json").read_text())["data_label"] == "cifar10"

    out = run(cnnlab, "train", "--config", "demo-mnist-mlp", "--epochs", "1", "--out", "run", cwd=elsewhere, env=env)
    assert f"data: {data / 'mnist'} (mnist from $CNNLAB_DATA, the official files: " in out
    config = (elsewhere / "run" / "config.toml").read_text(encoding="utf-8")
    assert "hidden = [256, 128]" in config and "epochs = 1" in config  # the preset's settings, and the flag's
    assert (elsewhere / "run" / "summary.json").is_file()


def official_data_home(root: Path) -> Path:
    """A data home as `cnnlab data fetch` leaves it: CIFAR-10's python archive, Tiny ImageNet's zip, MNIST's idx
    files in mnist/ — in their official formats, small."""
    folder, _ = write_cifar10_python(root / "_made", per_batch=20)
    tar_folder(folder, root / "cifar-10-python.tar.gz")
    shutil.rmtree(root / "_made")
    write_tinyimagenet(root, per_class=2, n_val=20)
    write_mnist_idx(root / "mnist", n_train=60, n_test=20)
    return root
