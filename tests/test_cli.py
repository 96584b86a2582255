"""`cnnlab models` as a user runs it."""

import csv
import io
import subprocess
import sys

import pytest

from cnnlab import list_models
from cnnlab.cli import main


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


@pytest.mark.parametrize("command", [[], ["models"], ["train"], ["eval"], ["predict"], ["report"], ["sweep"],
                                     ["data"], ["data", "info"], ["data", "prepare"]])
def test_every_help_page_prints(command, capsys):
    # argparse %-formats help text: one stray "%" in a field's help once broke `cnnlab train --help`.
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    assert "usage: cnnlab" in capsys.readouterr().out
