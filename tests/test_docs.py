"""Every command the README and docs/ show, run, and every relative link followed.

A fenced block whose info string says `runnable` (```` ```sh runnable ````, ```` ```console runnable ````,
```` ```python runnable ````) runs as written; any other sh block is in TWINS, which gives why it is not run as
written and the cheaper form that is run instead (fewer epochs, a subset, the CPU, 2 processes for 8 GPUs), or in
NOT_RUN, which says where it is tested. Blocks run in page order in one scratch folder per page, the way a reader
would type them: the data home ($CNNLAB_DATA) and ~/Downloads hold small fixtures in the official formats under
the official names, `cnnlab` and `python` are this checkout's, and the images the commands name (cat.png, dog.jpg,
photos/, more/) exist. After each block its
check reads what the block says it writes (a run's summary.json, the files eval draws, a CSV). A console block's
output must be what the command prints. By default only the FAST blocks run (about a minute on 2 cores); every
block runs under the `slow` marker (about five minutes).
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_fixtures import rng_images, tar_folder, wnids, write_cifar10_python, write_mnist_idx, write_tinyimagenet

REPO = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md"))]
REAL_CIFAR = Path(os.environ.get("CNNLAB_SHARED_DATA", REPO.parent / "shared" / "datasets")) / "cifar10-jpeg.tar.gz"
COMMAND_LANGUAGES = ("sh", "console", "python")


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # of the opening fence, 1-based
    language: str
    runnable: bool
    text: str
    file: str = ""  # `file=NAME` in the info string: a file the page's later commands read, written as shown

    @property
    def key(self) -> str:
        """The block's first command line: what TWINS, NOT_RUN and CHECKS name it by."""
        lines = [line.strip() for line in self.text.splitlines() if line.strip() and not line.startswith("#")]
        return lines[0].removeprefix("$ ") if lines else ""

    def where(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(page: str) -> list[Block]:
    found, lines = [], (REPO / page).read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("```") and lines[i].strip() != "```":
            info = lines[i][3:].split()
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            file = next((word.removeprefix("file=") for word in info[1:] if word.startswith("file=")), "")
            found.append(Block(page, i + 1, info[0], "runnable" in info[1:], "\n".join(lines[i + 1:end]) + "\n",
                               file))
            i = end
        elif lines[i].strip() == "```":  # a block without a language: output or a listing, never a command
            i = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        i += 1
    return found


@dataclass(frozen=True)
class Twin:
    why: str  # why the block is not run as written
    replace: tuple[tuple[str, str], ...] = ()  # (as shown, as run); each shown text must occur exactly once
    before: str = ""  # commands run first: what the block assumes exists
    real_data: bool = False  # needs the real CIFAR-10 (the block is skipped without it)


CHEAP = "--epochs 1 --subset 64 --device cpu"

TWINS = {
    ("README.md", "cnnlab train --model resnet18 --dataset cifar10 --out runs/r18"): Twin(
        "10 epochs of ResNet-18 on CIFAR-10", (("--out runs/r18\n", f"--out runs/r18 {CHEAP}\n"),)),
    ("docs/training.md", "cnnlab train --model resnet18 --dataset cifar10 \\"): Twin(
        "30 epochs of ResNet-18 on a GPU",
        (("--device cuda --out runs/r18-cifar10\n", f"--device cuda --out runs/r18-cifar10 {CHEAP}\n"),)),
    ("docs/speed.md", "cnnlab train --config speedrun-cifar10       # one run: ~8 min on 2 CPU cores with bf16 "
                      "(90.5 %), 3 s on an H100"): Twin(
        "10 epochs on all 50,000 images, then 6 more runs; the benchmark's CPU form needs the real CIFAR-10 to reach "
        "the accuracy it checks",
        (("cnnlab train --config speedrun-cifar10 ",
          f"cnnlab train --config speedrun-cifar10 {CHEAP} --out runs/speedrun "),
         ("python benchmarks/speedrun.py ",
          f"python benchmarks/speedrun.py --device cpu --quick --seeds 1 --no-warmup --data {REAL_CIFAR} ")),
        real_data=True),
    ("docs/distributed.md", "torchrun --standalone --nproc_per_node=8 -m cnnlab train --model resnet18 --dataset "
                            "cifar10 \\"): Twin(
        "8 GPUs, and two machines of 8 GPUs: run with 2 CPU processes (gloo) on one machine, without --sync-bn "
        "(SyncBatchNorm needs GPUs)",
        (("--nproc_per_node=8 -m cnnlab train --model resnet18",
          "--nproc_per_node=2 -m cnnlab train --model resnet18"),
         ("--precision bf16 --sync-bn\n", f"--precision fp32 {CHEAP}\n"),
         ("--nnodes=2 --node_rank=$NODE_RANK --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=$HOST:29500",
          "--nnodes=1 --node_rank=$NODE_RANK --nproc_per_node=2 --rdzv_backend=c10d --rdzv_endpoint=$HOST:{port}"),
         ("--data /data/imagenet --batch-size 2048 --lr 0.8 …",
          "--data \"$CNNLAB_DATA/imagenet\" --batch-size 8 --lr 0.8 --epochs 1 --device cpu --out runs/r50")),
        before="NODE_RANK=0\nHOST=127.0.0.1\n"),
    ("docs/reports.md", "cnnlab report runs/a runs/b runs/c -o reports/abc     # or a folder of runs, such as a "
                        "sweep's"): Twin(
        "the sweeps train 30 and 4 runs: here of 1 epoch on 64 images; the report needs three runs",
        (("cnnlab sweep ablation-regularization ",
          "cnnlab sweep ablation-regularization --set epochs=1 --set subset=64 --set device=cpu "),
         ("--data-root /data/sets --set epochs=1",
          "--data-root \"$CNNLAB_DATA\" --set epochs=1 --set subset=64 --set device=cpu --set test_subset=64")),
        before="".join(f"cnnlab train --model mlp --dataset mnist --epochs 2 --seed {k} "
                       f"--out runs/{run}\n" for k, run in enumerate("abc"))),
    ("docs/tuning.md", "cnnlab tune space.toml                           # trials into OUT/trial-NNN/, the study "
                       "in OUT/study.journal"): Twin(
        "20 trials of 10 epochs, and a PostgreSQL server: 2 trials of 3 epochs (the space's warm-up reaches 3), then "
        "a third beside a second worker, then 1 trial of a new study in an SQLite file",
        (("space.toml                           # trials", "space.toml --n-trials 2 --set epochs=3 # trials"),
         ("--workers 2 ", "--workers 2 --n-trials 3 --set epochs=3 "),
         # an out folder belongs to one study: the journal study's moves aside for the SQLite one
         ("cnnlab tune space.toml --storage postgresql://user@db/studies",
          "mv runs/tune-mlp runs/tune-journal\n"
          "cnnlab tune space.toml --storage sqlite:///study.db --n-trials 1 --set epochs=3"))),
    ("docs/trust.md", "python benchmarks/kill_resume.py         # from the repository's root; --kills 10 --epochs "
                      "40 by default"): Twin(
        "10 kills of a 40-epoch run take minutes", (("python benchmarks/kill_resume.py ",
                                                     "python benchmarks/kill_resume.py --kills 2 --epochs 3 "),)),
}

NOT_RUN = {
    ("README.md", "cnnlab data fetch cifar10            # the official archive into the data home, MD5-checked "
                  "(`cnnlab data list`)"):
        "downloads from the official addresses; tests/test_data_home.py runs `cnnlab data fetch` against a local "
        "server publishing the same formats",
    ("README.md", "cnnlab data fetch tinyimagenet && cnnlab sweep seed-report"):
        "downloads, then an hour of training; tests/test_data_home.py runs the seed report from a data home of "
        "official-format archives (in-process, and from the installed wheel outside the checkout: test_wheel.py)",
    ("docs/data.md", "cnnlab data fetch cifar10 tinyimagenet    # the official archives into the data home, "
                     "MD5-checked"):
        "downloads from the official addresses; tests/test_data_home.py runs `cnnlab data fetch` against a local "
        "server publishing the same formats",
    ("docs/tuning.md", "pip install 'cnnlab[tune]'                       # Optuna"):
        "installs from the network; the test extra has optuna, so the suite runs `cnnlab tune` itself",
    ("README.md", "make demo   # creates .venv, installs cnnlab, trains an MLP on MNIST (~20 s on 2 CPU cores, ~98 % "
                  "test), evaluates it"):
        "tests/test_demo.py runs the demo recipe's cnnlab commands from the Makefile; `make test` is this suite",
}

# What a page assumes exists before its first block: evaluation.md's commands take training.md's first run.
PAGE_SETUP = {
    "docs/evaluation.md": f"cnnlab train --model resnet18 --dataset cifar10 --out runs/r18-cifar10 {CHEAP}\n",
}

# The default run: each command family once (train, eval, predict, data, models, presets, sweep and tune
# --dry-run), about 15 processes; every block runs, in page order, under the `slow` marker.
FAST = {
    ("docs/data.md", "cnnlab data list                          # each dataset's copies, what each is, which one a "
                     "run takes, what is missing"),
    ("README.md", "cnnlab train --model resnet18 --dataset cifar10 --out runs/r18"),
    ("docs/methods.md", "cnnlab train --model linreg --dataset synthetic-linear --batch-size 10 --epochs 3 --lr "
                        "0.03 --momentum 0 --out runs/linreg"),
    ("docs/data.md", "cnnlab data info --dataset cifar10        # format, splits, classes, image size, checksum "
                     "status"),
    ("docs/models.md", "from cnnlab import create_model, list_models"),
    ("docs/models.md", "cnnlab models"),
    ("docs/models.md", "cnnlab models --head tiny"),
    ("docs/reports.md", "cnnlab presets                             # every preset: its kind and what it runs"),
    ("docs/tuning.md", "cnnlab tune space.toml --dry-run                 # the space, the objective, the pruner and "
                       "the trial budget"),
}


def all_blocks() -> list[Block]:
    return [b for page in PAGES for b in blocks(page)]


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text(encoding="utf-8"))


def only_run(pattern: str, work: Path) -> Path:
    found = sorted(work.glob(pattern))
    assert len(found) == 1, (pattern, found)
    return found[0]


def trained(work: Path, run: str, model: str, dataset: str, epochs: int = 1) -> dict:
    s = summary(work / run)
    assert (s["model"], s["dataset"], s["epochs_run"]) == (model, dataset, epochs), s
    assert 0 <= s["test_top1"] <= 1 and (work / run / "best.pt").exists() and (work / run / "curves.png").exists()
    return s


def predicted(out: str, images: list[str], k: int) -> None:
    for image in images:
        line = next(line for line in out.splitlines() if line.startswith(f"{image}: "))
        assert len(line.split(", ")) == k, line


def check_next(work, out):
    trained(work, "runs/r18", "resnet18", "cifar10")
    assert json.loads((work / "runs/r18/eval_test.json").read_text())["n"] == CIFAR_TEST  # the whole split
    predicted(out, ["cat.png", "dog.jpg"], 5)


def check_train_r18(work, out):
    trained(work, "runs/r18-cifar10", "resnet18", "cifar10")
    assert "resuming runs/r18-cifar10 after epoch 1" in out


def check_softmax_detected(work, out):
    s = summary(only_run("runs/softmax-cifar10-*", work))
    assert s["dataset"] == "cifar10" and s["epochs_run"] == 10


def check_config_repeat(work, out):
    x, y = trained(work, "runs/x", "mlp", "mnist", 2), trained(work, "runs/y", "mlp", "mnist", 2)
    assert x["test_top1"] == y["test_top1"] and x["best_value"] == y["best_value"]
    assert (work / "runs/x/config.toml").read_text().replace("runs/x", "runs/y") == \
        (work / "runs/y/config.toml").read_text()


def check_tensorboard(work, out):
    trained(work, "runs/tb", "mlp", "mnist", 2)
    assert list((work / "runs/tb/tensorboard").glob("events.out.tfevents.*"))


def check_methods_gd(work, out):
    trained(work, "runs/gd", "softmax", "mnist", 2)
    trained(work, "runs/sgd", "softmax", "mnist")
    log = (work / "runs/gd/log.txt").read_text() + (work / "runs/sgd/log.txt").read_text()
    assert "method: full-batch gradient descent" in log and "method: stochastic gradient descent" in log, log


def check_linreg(work, out):
    s = summary(work / "runs/linreg")
    errors = {k: v for k, v in s.items() if "error" in k}
    assert errors and all(abs(v) < 0.01 for v in np.ravel(list(errors.values()))), s


def check_extras(work, out):
    trained(work, "runs/extras", "mlp", "mnist", 2)
    assert "grad_norm" in (work / "runs/extras/metrics.csv").read_text().splitlines()[0]


def check_finetune(work, out):
    trained(work, "runs/cifar", "resnet18", "cifar10")
    trained(work, "runs/tiny-finetuned", "resnet18", "tinyimagenet")
    assert "init-from" in (work / "runs/tiny-finetuned/config.toml").read_text().replace("_", "-")


def check_data(work, out):
    assert "cifar10" in out and "tinyimagenet" in out, out


def check_eval_predict_explain(work, out):
    assert json.loads((work / "runs/r18-cifar10/eval_test.json").read_text())["n"] == CIFAR_TEST
    for name in ("confusion_test.png", "reliability_test.png", "filters.png", "mistakes_test.png",
                 "explain/cat_explain.png", "explain/dog_explain.png"):
        assert (work / "runs/r18-cifar10" / name).exists(), name
    predicted(out, ["cat.png", "dog.jpg"], 3)
    rows = (work / "predictions.csv").read_text().splitlines()
    assert rows[0].startswith("path,top1,p1") and sorted(r.split(",")[0] for r in rows[1:]) == \
        ["more/a/b/y.jpg", "photos/x.png"]


def check_save_predictions(work, out):
    npz = np.load(work / "runs/r18-cifar10/predictions_test.npz")
    assert len(next(iter(npz.values()))) == CIFAR_TEST
    assert len((work / "predictions_test.csv").read_text().splitlines()) == CIFAR_TEST + 1


def check_explain_class(work, out):
    assert (work / "explained/cat_explain.png").exists()


def check_export(work, out):
    for model in ("runs/r18-cifar10/model.ts.pt", "r18.onnx"):
        meta = json.loads((work / f"{model}.json").read_text())
        assert (work / model).exists() and meta["classes"][3] == "cat", meta


def check_speed(work, out):
    s = trained(work, "runs/fp32", "resnet18", "cifar10")
    assert (s["precision"], s["threads"], s["deterministic"]) == ("fp32", 1, True), s


def check_speedrun(work, out):
    s = trained(work, "runs/speedrun", "speednet", "cifar10")
    assert s["tta"] == "flip-translate"


def check_torchrun(work, out):
    trained(work, only_run("runs/resnet18-cifar10-*", work).relative_to(work).as_posix(), "resnet18", "cifar10")
    trained(work, "runs/r50", "resnet50", "imagenet")


def check_reports(work, out):
    md = (work / "reports/abc/results.md").read_text()
    assert all(f"| {run} | mlp | mnist |" in md for run in "abc") and (work / "reports/abc/index.html").exists(), md
    ablation = work / "runs/ablation-regularization"
    assert len(list(ablation.glob("*/summary.json"))) == 30 and (ablation / "report/index.html").exists()
    assert len(list((work / "runs/seed-report").glob("*/summary.json"))) == 4


def check_presets(work, out):
    assert "seed-report" in out and (work / "mine.toml").read_text().startswith("#")
    assert "[4/4] resnet18-tinyimagenet-seed0" in out and "dry run: nothing trained, nothing created" in out


def check_tune_dry_run(work, out):
    assert "lr" in out and "median" in out and not (work / "runs").exists(), out  # the dry run trains nothing


def check_tune(work, out):
    journal, sqlite = work / "runs/tune-journal", work / "runs/tune-mlp"
    trials = sorted(journal.glob("trial-*/summary.json"))
    assert len(trials) == 3 and all(1 <= summary(t.parent)["epochs_run"] <= 3 for t in trials), trials
    assert (journal / "study.journal").exists() and (journal / "report/index.html").exists()
    assert len(list(sqlite.glob("trial-*/summary.json"))) == 1 and (work / "study.db").stat().st_size > 0


def check_kill_resume(work, out):
    assert "OK (" in out.splitlines()[-1], out


def check_data_home(work, out):
    assert "used cifar-10-python.tar.gz" in out and "used tiny-imagenet-200.zip" in out and "used mnist/" in out
    assert out.count("(cifar10 from $CNNLAB_DATA, the official files: ") == 2
    assert out.count("(tinyimagenet from $CNNLAB_DATA, the official files: ") == 2
    assert "dry run: nothing trained, nothing created" in out and not (work / "runs").exists()


CHECKS = {
    ("docs/data.md", "cnnlab data list                          # each dataset's copies, what each is, which one a "
                     "run takes, what is missing"): check_data_home,
    ("README.md", "cnnlab train --model resnet18 --dataset cifar10 --out runs/r18"): check_next,
    ("docs/training.md", "cnnlab train --model resnet18 --dataset cifar10 \\"): check_train_r18,
    ("docs/training.md", "cnnlab train --model softmax --data ~/Downloads/cifar-10-python.tar.gz"):
        check_softmax_detected,
    ("docs/training.md", "cnnlab train --model mlp --dataset mnist --epochs 2 --out runs/x"): check_config_repeat,
    ("docs/training.md", "cnnlab train --model mlp --dataset mnist --epochs 2 --tensorboard --out runs/tb"):
        check_tensorboard,
    ("docs/methods.md", "cnnlab train --model softmax --dataset mnist --batch-size all --momentum 0 --epochs 2 --out "
                        "runs/gd"): check_methods_gd,
    ("docs/methods.md", "cnnlab train --model linreg --dataset synthetic-linear --batch-size 10 --epochs 3 --lr "
                        "0.03 --momentum 0 --out runs/linreg"): check_linreg,
    ("docs/methods.md", "cnnlab train --model mlp --dataset mnist --epochs 2 --ema-decay 0.99 --clip-grad-norm 1 \\"):
        check_extras,
    ("docs/methods.md", "cnnlab train --model resnet18 --dataset cifar10 --epochs 1 --subset 64 --out runs/cifar"):
        check_finetune,
    ("docs/data.md", "cnnlab data info --dataset cifar10        # format, splits, classes, image size, checksum "
                     "status"): check_data,
    ("docs/evaluation.md", "cnnlab eval runs/r18-cifar10                 # top-1/5, per class, confusion matrix, "
                           "calibration (ECE), the first"): check_eval_predict_explain,
    ("docs/evaluation.md", "cnnlab eval runs/r18-cifar10 --save-predictions"): check_save_predictions,
    ("docs/evaluation.md", "cnnlab explain runs/r18-cifar10 cat.png --class cat --out explained"):
        check_explain_class,
    ("docs/evaluation.md", "cnnlab export runs/r18-cifar10 --format torchscript"): check_export,
    ("docs/speed.md", "cnnlab train --model resnet18 --dataset cifar10 --epochs 1 --subset 64 \\"): check_speed,
    ("docs/speed.md", "cnnlab train --config speedrun-cifar10       # one run: ~8 min on 2 CPU cores with bf16 "
                      "(90.5 %), 3 s on an H100"): check_speedrun,
    ("docs/distributed.md", "torchrun --standalone --nproc_per_node=8 -m cnnlab train --model resnet18 --dataset "
                            "cifar10 \\"): check_torchrun,
    ("docs/reports.md", "cnnlab report runs/a runs/b runs/c -o reports/abc     # or a folder of runs, such as a "
                        "sweep's"): check_reports,
    ("docs/reports.md", "cnnlab presets                             # every preset: its kind and what it runs"):
        check_presets,
    ("docs/trust.md", "python benchmarks/kill_resume.py         # from the repository's root; --kills 10 --epochs "
                      "40 by default"): check_kill_resume,
    ("docs/tuning.md", "cnnlab tune space.toml --dry-run                 # the space, the objective, the pruner and "
                       "the trial budget"): check_tune_dry_run,
    ("docs/tuning.md", "cnnlab tune space.toml                           # trials into OUT/trial-NNN/, the study "
                       "in OUT/study.journal"): check_tune,
}

# Python blocks: these lines run after the block, in the same interpreter.
PYTHON_CHECKS = {
    ("docs/models.md", "from cnnlab import create_model, list_models"):
        "assert sum(p.numel() for p in model.parameters()) == 11_173_962\n"
        "assert 'resnet152' in list_models() and mlp(__import__('torch').zeros(2, 1, 28, 28)).shape == (2, 10)\n",
}


def key(block: Block) -> tuple[str, str]:
    return block.page, block.key


def is_slow(block: Block) -> bool:
    return key(block) not in FAST


# --- the scratch world the blocks run in -----------------------------------------------------------------------------

def write_imagenet(root: Path, classes=4, per_class=4) -> None:
    """ImageNet's extracted layout, train/<wnid>/*.JPEG and val/<wnid>/*.JPEG, small images."""
    for split in ("train", "val"):
        for c, wnid in enumerate(wnids(classes)):
            (root / split / wnid).mkdir(parents=True)
            for k in range(per_class):
                Image.fromarray(rng_images(1, 80, 96, seed=100 * c + k)[0]).save(
                    root / split / wnid / f"{wnid}_{k}.JPEG", format="JPEG")


CIFAR_PER_BATCH = 16
CIFAR_TEST = CIFAR_PER_BATCH  # cifar-10-python's test_batch


def write_official(folder: Path) -> Path:
    """The official archives and files under their official names: cifar-10-python.tar.gz, mnist/ (four idx
    files), tiny-imagenet-200.zip and an ImageNet folder."""
    scratch = folder / "scratch"
    cifar, _ = write_cifar10_python(scratch, per_batch=CIFAR_PER_BATCH)
    tar_folder(cifar, folder / "cifar-10-python.tar.gz")
    shutil.rmtree(scratch)
    write_mnist_idx(folder / "mnist", n_train=80, n_test=20)
    write_tinyimagenet(folder, per_class=2, n_val=20)
    write_imagenet(folder / "imagenet")
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder holding the data home and ~/Downloads (official-format fixtures), a bin/ with this checkout's cnnlab
    and python, a cache; returns it with the environment the blocks run in."""
    root = tmp_path_factory.mktemp("docs")
    data = write_official(root / "data")
    (root / "home").mkdir()
    downloads = root / "home" / "Downloads"
    downloads.mkdir()
    for name in ("cifar-10-python.tar.gz", "tiny-imagenet-200.zip"):
        shutil.copy(data / name, downloads / name)
    bin_dir = root / "bin"
    bin_dir.mkdir()
    for name, run in (("cnnlab", f'"{sys.executable}" -m cnnlab'), ("python", f'"{sys.executable}"')):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {run} "$@"\n')
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]]),
               PYTHONPATH=str(REPO / "src"), HOME=str(root / "home"), CNNLAB_DATA=str(data),
               CNNLAB_CACHE_DIR=str(root / "cache"), MPLBACKEND="Agg",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    env.pop("XDG_CACHE_HOME", None)
    return root, env


def workspace(world, page: str) -> Path:
    """A fresh folder for one page, with the images its commands name and benchmarks/."""
    root, _ = world
    work = root / page.replace("/", "_").removesuffix(".md")
    work.mkdir()
    for k, name in enumerate(["cat.png", "dog.jpg", "photos/x.png", "more/a/b/y.jpg"]):
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng_images(1, 40, 50, seed=k)[0]).save(work / name)
    (work / "benchmarks").symlink_to(REPO / "benchmarks")
    return work


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_run(block: Block) -> str:
    """The block's text as the test runs it: the twin's replacements made and its commands first."""
    twin = TWINS.get(key(block))
    if twin is None:
        return block.text
    text = block.text
    for shown, run in twin.replace:
        assert text.count(shown) == 1, f"{block.where()}: the twin expects {shown!r} once in\n{text}"
        text = text.replace(shown, run.replace("{port}", str(free_port())))
    return twin.before + text


def bash(script: str, work: Path, env: dict, where: str) -> subprocess.CompletedProcess:
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env, capture_output=True,
                          text=True, timeout=1800)
    assert done.returncode == 0, (f"{where} exited {done.returncode}\n--- ran:\n{script}\n--- stdout:\n"
                                  f"{done.stdout[-3000:]}\n--- stderr:\n{done.stderr[-3000:]}")
    return done


def run_console(block: Block, work: Path, env: dict) -> None:
    """`$ command` lines followed by the output they print (stdout and stderr); an error line means exit code 2."""
    commands = re.split(r"^\$ ", block.text, flags=re.M)[1:]
    for chunk in commands:
        command, _, expected = chunk.partition("\n")
        done = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True,
                              timeout=600)
        shown = [line.rstrip() for line in expected.rstrip("\n").splitlines()]
        printed = [line.rstrip() for line in (done.stdout + done.stderr).rstrip("\n").splitlines()]
        assert printed == shown, f"{block.where()}: `{command}` printed\n" + "\n".join(printed)
        assert done.returncode == (2 if any(line.startswith("cnnlab: error:") for line in shown) else 0), command


def run_block(block: Block, work: Path, env: dict) -> None:
    if block.language == "console":
        return run_console(block, work, env)
    if block.language == "python":
        script = work / f"block_{block.line}.py"
        script.write_text(block.text + PYTHON_CHECKS[key(block)], encoding="utf-8")
        bash(f'python "{script}"', work, env, block.where())
        return None
    done = bash(as_run(block), work, env, block.where())
    CHECKS[key(block)](work, done.stdout + done.stderr)
    return None


def run_page(world, page: str, slow: bool) -> None:
    work, env = workspace(world, page), world[1]
    skipped = []
    if page in PAGE_SETUP:
        bash(PAGE_SETUP[page], work, env, f"{page}'s setup")
    for block in blocks(page):
        if block.file:
            (work / block.file).write_text(block.text, encoding="utf-8")
            continue
        if block.language not in COMMAND_LANGUAGES or key(block) in NOT_RUN or (is_slow(block) and not slow):
            continue
        twin = TWINS.get(key(block))
        if twin and twin.real_data and not REAL_CIFAR.exists():
            skipped.append(f"{block.where()} needs {REAL_CIFAR}")
            continue
        run_block(block, work, env)
    if skipped:
        pytest.skip("; ".join(skipped))


FAST_PAGES = [p for p in PAGES if any(not is_slow(b) for b in blocks(p))]
SLOW_PAGES = [p for p in PAGES if any(is_slow(b) and b.language in COMMAND_LANGUAGES and key(b) not in NOT_RUN
                                      for b in blocks(p))]


@pytest.mark.parametrize("page", FAST_PAGES)
def test_the_pages_commands_run_and_write_what_they_say(world, page):
    run_page(world, page, slow=False)


@pytest.mark.slow
@pytest.mark.parametrize("page", SLOW_PAGES)
def test_every_command_of_the_page_runs_including_the_costly_ones_in_their_cheap_form(world, page):
    run_page(world, page, slow=True)


# --- what keeps the rules above honest --------------------------------------------------------------------------------

def test_every_command_block_is_run_or_says_why_not():
    for block in all_blocks():
        if block.file or block.language == "text":
            continue
        assert block.language in COMMAND_LANGUAGES, f"{block.where()}: a {block.language} block needs file=NAME"
        k = key(block)
        if block.runnable:
            assert k not in TWINS and k not in NOT_RUN, f"{block.where()} is runnable: drop its twin"
            assert k in CHECKS or block.language != "sh", f"{block.where()}: add a check of what it writes"
            assert k in PYTHON_CHECKS or block.language != "python", f"{block.where()}: add a check"
        else:
            assert block.language == "sh", f"{block.where()}: a {block.language} block must be runnable"
            assert (k in TWINS) != (k in NOT_RUN), f"{block.where()} is not runnable: give a twin or a reason"
            assert k in CHECKS or k in NOT_RUN, f"{block.where()}: add a check of what its twin writes"


def test_every_twin_and_check_names_a_block_that_exists():
    keys = {key(b) for b in all_blocks()}
    for table in (TWINS, NOT_RUN, CHECKS, PYTHON_CHECKS, FAST):
        assert not set(table) - keys, f"no such block: {set(table) - keys}"


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_points_to_a_file_that_exists(page):
    text = re.sub(r"```.*?```", "", (REPO / page).read_text(encoding="utf-8"), flags=re.S)
    links = [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]
    for target in links:
        file, _, anchor = target.partition("#")
        path = (REPO / page).parent / file if file else REPO / page
        assert path.exists(), f"{page}: {target} does not exist"
        if anchor and path.suffix == ".md":
            assert anchor in anchors(path), f"{page}: {target}: no such heading in {file}"
        assert REPO in path.resolve().parents or path.resolve() == REPO, f"{page}: {target} leaves the repository"
