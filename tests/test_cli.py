"""`cnnlab models` as a user runs it."""

import csv
import io
import json
import subprocess
import sys

import pytest
from data_fixtures import tar_folder, write_cifar10_python, write_mnist_idx

from cnnlab import list_models
from cnnlab.cli import COMMANDS, DATA_ACTIONS, main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_models_csv_lists_every_model_with_integer_params(capsys):
    code, out, err = run(capsys, "models", "--format", "csv")
    assert code == 0 and err == ""
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["name"] for r in rows] == list_models()
    params = {r["name"]: int(r["params"]) for r in rows}
    assert params["vgg16"] == 138_357_544 and params["resnet50"] == 25_557_032
    assert int(next(r for r in rows if r["name"] == "resnet18")["macs"]) == 1_814_073_344


def test_models_csv_at_cifar_size(capsys):
    code, out, _ = run(capsys, "models", "--format", "csv", "--num-classes", "10", "--image-size", "32",
                       "--head", "cifar", "--stem", "cifar")
    params = {r["name"]: int(r["params"]) for r in csv.DictReader(io.StringIO(out))}
    assert code == 0
    assert params["resnet18"] == 11_173_962
    assert params["softmax"] == 3 * 32 * 32 * 10 + 10


def test_models_table_is_readable(capsys):
    code, out, _ = run(capsys, "models")
    lines = out.splitlines()
    assert code == 0
    assert lines[1].split()[:4] == ["name", "alias", "family", "params"]
    vgg16 = next(line for line in lines if line.startswith("vgg16 "))
    assert "138,357,544" in vgg16 and "15.47 G" in vgg16


@pytest.mark.parametrize("argv,needle", [
    (["models", "--head", "tiny"], "unknown head 'tiny'; choose one of: imagenet, cifar"),
    (["models", "--image-size", "0"], "image_size must be a positive integer"),
])
def test_bad_input_is_one_line_on_stderr_with_exit_2(capsys, argv, needle):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and needle in err and "Traceback" not in err


def test_console_script_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "cnnlab", "models", "--format", "csv", "--image-size", "32"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("name,alias,family,params,macs")


@pytest.mark.parametrize("command", [[], ["models"], ["train"], ["eval"], ["predict"], ["explain"], ["export"],
                                     ["report"], ["sweep"], ["data"], ["data", "info"], ["data", "prepare"]])
def test_every_help_page_prints(command, capsys):
    # argparse %-formats help text: one stray "%" in a field's help once broke `cnnlab train --help`.
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    assert "usage: cnnlab" in capsys.readouterr().out


# What must start without torch, torchvision or matplotlib: every help page, the listings, `data info`. Add new quick
# commands here; CIFAR, MNIST and CACHE stand for the small datasets and the cache folder the test writes.
QUICK_COMMANDS = [["--help"], ["--version"], *([c.name, "--help"] for c in COMMANDS),
                  *(["data", a.name, "--help"] for a in DATA_ACTIONS), ["presets"], ["presets", "seed-report"],
                  ["data", "info", "CIFAR", "--cache-dir", "CACHE"],
                  ["data", "info", "MNIST", "--dataset", "mnist", "--cache-dir", "CACHE"],
                  ["data", "list", "--data-root", "HOME"],
                  ["data", "info", "--dataset", "mnist", "--data-root", "HOME", "--cache-dir", "CACHE"]]
HEAVY = ("torch", "torchvision", "matplotlib")

# Runs each command in turn in one fresh interpreter and records which heavy modules are loaded after it.
QUICK_SCRIPT = """
import contextlib, io, json, sys
from cnnlab.cli import main

results = []
for argv in json.loads(sys.argv[1]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = main(argv)
        except SystemExit as e:  # --help and --version end in argparse's exit
            code = e.code
    results.append({"argv": argv, "code": code, "output": out.getvalue(),
                    "heavy": [m for m in sys.argv[2].split(",") if m in sys.modules]})
print(json.dumps(results))
"""


def test_help_listings_and_data_info_import_neither_torch_nor_matplotlib(tmp_path):
    cifar = tar_folder(write_cifar10_python(tmp_path / "cifar")[0], tmp_path / "cifar-10-python.tar.gz")
    mnist = write_mnist_idx(tmp_path / "mnist")[0]
    paths = {"CIFAR": str(cifar), "MNIST": str(mnist), "CACHE": str(tmp_path / "cache"), "HOME": str(tmp_path)}
    commands = [[paths.get(word, word) for word in argv] for argv in QUICK_COMMANDS]
    done = subprocess.run([sys.executable, "-c", QUICK_SCRIPT, json.dumps(commands), ",".join(HEAVY)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert [r["argv"] for r in results] == commands
    for r in results:  # in order: modules stay loaded, so the first command to load one is the one to blame
        assert r["code"] == 0 and r["heavy"] == [], (r["argv"], r["code"], r["heavy"], r["output"][-500:])
    info = {r["argv"][2]: r["output"] for r in results if r["argv"][:2] == ["data", "info"]}
    assert "dataset:    cifar10" in info[str(cifar)] and "dataset:    mnist" in info[str(mnist)]
    assert f"path:       {mnist}\n" in info["--dataset"]  # no path: the data home's copy
    listed = next(r["output"] for r in results if r["argv"][:3] == ["data", "list", "--data-root"])
    assert "used cifar-10-python.tar.gz" in listed and "used mnist/" in listed


def test_the_flag_names_of_timm_and_torchvision_set_the_same_settings():
    from cnnlab.cli import build_parser, config_from_args

    argv = ["train", "--opt", "adamw", "--sched", "cosine", "-b", "64", "--output", "runs/x", "--amp",
            "--smoothing", "0.1", "--clip-grad", "2.5"]
    config = config_from_args(build_parser().parse_args(argv))
    assert (config.optimizer, config.schedule, config.batch_size, config.out, config.precision,
            config.label_smoothing, config.clip_grad_norm) == ("adamw", "cosine", 64, "runs/x", "fp16", 0.1, 2.5)
    assert config_from_args(build_parser().parse_args(["train", "--output-dir", "runs/y"])).out == "runs/y"
    canonical = config_from_args(build_parser().parse_args(
        ["train", "--optimizer", "adamw", "--schedule", "cosine", "--batch-size", "64", "--out", "runs/x",
         "--precision", "fp16", "--label-smoothing", "0.1", "--clip-grad-norm", "2.5"]))
    assert canonical == config


def test_under_torchrun_one_line_says_the_batch_is_global():
    from cnnlab.build import describe_processes
    from cnnlab.config import TrainConfig
    from cnnlab.distributed import Dist

    two = Dist(rank=0, world_size=2)
    assert describe_processes(TrainConfig(batch_size=256), two) == (
        "torchrun: 2 processes; --batch-size 256 is the global batch, each process takes 128 images of it per batch "
        "(lr and recipes follow the global batch)")
    three = Dist(rank=0, world_size=3)
    assert "takes 85 or 86 images" in describe_processes(TrainConfig(batch_size=256), three)


def test_eval_of_a_missing_run_folder_says_so(tmp_path, capsys):
    from cnnlab.cli import main

    assert main(["eval", str(tmp_path / "runs" / "missing")]) == 2
    assert capsys.readouterr().err == f"cnnlab: error: run folder or checkpoint {tmp_path}/runs/missing does not exist\n"
