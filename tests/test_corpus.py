"""The bad-input corpus: config files, command-line values, checkpoints and run folders.

Every bad case must end the way the README promises: one line on stderr (`cnnlab: error: …`) saying what is wrong
and what to do, exit code 2, no traceback, no partial files, existing runs untouched. Cases that still break that
contract because of a known bug are `xfail(strict=True)` with the fix they need (none at present), so the
test turns red the day the fix lands and the mark can go.
"""

import errno
import json
import os
import pickle
import random
import shutil
import string
import tempfile
import tomllib
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cnnlab.build import validate_config
from cnnlab.checkpoint import load_checkpoint
from cnnlab.cli import build_parser, config_from_args, main
from cnnlab.config import TrainConfig
from cnnlab.errors import CnnlabError
from cnnlab.recipes import apply_recipe
from data_fixtures import png_bytes, rng_images, write_image_folder

BASE = {"model": '"linreg"', "dataset": '"synthetic-linear"', "epochs": "1", "batch_size": "100", "lr": "0.1",
        "momentum": "0.0", "device": '"cpu"'}
BASE_FLAGS = ["--model", "linreg", "--dataset", "synthetic-linear", "--epochs", "1", "--batch-size", "100",
              "--momentum", "0", "--device", "cpu"]


def bug(reason):
    """A case that fails the contract because of a product bug outside this engineer's files."""
    return pytest.mark.xfail(strict=True, reason=reason)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cnnlab-cache"))


def snapshot(root: Path) -> dict:
    """Every file and folder under root with its bytes: equal snapshots mean nothing was written or left."""
    root = Path(root)
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def run_cli(capsys, argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse errors leave through SystemExit, not through main's return
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def fails(capsys, argv, watch: Path, match: str | None = None) -> str:
    """Run the CLI in-process; check the one-line contract and that nothing under `watch` changed."""
    before = snapshot(watch)
    code, out, err = run_cli(capsys, argv)
    assert code == 2, (code, out, err)
    assert err.startswith("cnnlab: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    after = snapshot(watch)
    for name in after.keys() & before.keys():  # log.txt may record the attempt; nothing else may change
        if name.endswith("log.txt") and after[name].startswith(before[name]):
            after[name] = before[name]
    assert after == before, "files were written, left behind or changed"
    if match:
        assert match.lower() in err.lower(), err
    return err


def succeeds(capsys, argv) -> str:
    code, out, err = run_cli(capsys, argv)
    assert code == 0, (out, err)
    assert "Traceback" not in err
    return out


# -- config files (TOML) -----------------------------------------------------------------------------------------
def toml_with(**values) -> bytes:
    """The base config with some settings replaced (values are raw TOML), as a file's bytes."""
    merged = {**BASE, **values}
    return "".join(f"{k} = {v}\n" for k, v in merged.items()).encode()


CONFIG_FILES = {
    # unknown keys
    "unknown key": (toml_with(lrr="0.1"), "unknown setting 'lrr'"),
    "key in the wrong case": (toml_with(Epochs="3"), "unknown setting 'Epochs'"),
    "empty key": (toml_with(**{'""': "1"}), "unknown setting ''"),
    "unknown table": (toml_with() + b"[trainer]\nlr = 0.1\n", "unknown setting 'trainer'"),
    # wrong types
    "epochs as text": (toml_with(epochs='"ten"'), "'ten'"),
    "epochs as a fraction": (toml_with(epochs="2.5"), "2.5"),
    "epochs as a date": (toml_with(epochs="1979-05-27"), "1979"),
    "lr as text": (toml_with(lr='"fast"'), "'fast'"),
    "lr as a bool": (toml_with(lr="true"), "True"),
    "lr as a list": (toml_with(lr="[0.1]"), "[0.1]"),
    "nesterov as text": (toml_with(nesterov='"maybe"'), "'maybe'"),
    "nesterov as a number": (toml_with(nesterov="1"), "1"),
    "hidden as words": (toml_with(hidden='"a,b"'), "list of integers"),
    "hidden nested": (toml_with(hidden="[[1]]"), "list of integers"),
    "milestones as a table": (toml_with(milestones="{a = 1}"), "list of integers"),
    "batch size as a fraction": (toml_with(batch_size="1.5"), "1.5"),
    "batch size as a word": (toml_with(batch_size='"most"'), "'most'"),
    "model as a number": (toml_with(model="5"), "unknown model '5'"),
    "model as a table": (toml_with(model="{name = 'mlp'}"), "unknown model"),
    # NaN and infinities
    "lr nan": (toml_with(lr="nan"), "--lr nan"),
    "lr inf": (toml_with(lr="inf"), "--lr inf"),
    "momentum nan": (toml_with(momentum="nan"), "--momentum"),
    "val_split nan": (toml_with(val_split="nan"), "--val-split"),
    "gamma inf": (toml_with(gamma="inf"), "--gamma"),
    "label smoothing -inf": (toml_with(label_smoothing="-inf"), "--label-smoothing"),
    "early stop delta nan": (toml_with(early_stop_delta="nan"), "--early-stop-delta"),
    "warmup epochs inf": (toml_with(warmup_epochs="inf"), "--warmup-epochs"),
    "epochs inf": (toml_with(epochs="inf"), "inf"),
    "dropout nan (mlp)": (toml_with(model='"mlp"', dropout="nan"), "dropout"),
    # negative and huge numbers
    "epochs negative": (toml_with(epochs="-3"), "--epochs -3"),
    "batch size negative": (toml_with(batch_size="-1"), "--batch-size"),
    "lr negative": (toml_with(lr="-0.1"), "--lr"),
    "weight decay negative": (toml_with(weight_decay="-1.0"), "--weight-decay"),
    "cutout negative": (toml_with(cutout="-4"), "--cutout"),
    "subset negative": (toml_with(subset="-10"), "--subset"),
    "workers negative": (toml_with(workers="-1"), "--workers"),
    "checkpoint every negative": (toml_with(checkpoint_every="-1"), "--checkpoint-every"),
    "patience negative": (toml_with(early_stop_patience="-2"), "--early-stop-patience"),
    "image size negative": (toml_with(image_size="-1"), "size"),
    "hidden negative (mlp)": (toml_with(model='"mlp"', hidden="[-5]"), "hidden"),
    "momentum huge": (toml_with(momentum="1e300"), "--momentum"),
    "epochs beyond float range": (toml_with(epochs="1e400"), "inf"),
    "seed negative": pytest.param(toml_with(seed="-1"), "--seed"),
    "seed beyond 64 bits": pytest.param(toml_with(seed="99999999999999999999"), "--seed"),
    "lr huge": pytest.param(toml_with(lr="1e308"), "--lr"),
    "warmup huge": pytest.param(toml_with(warmup_epochs="1e308"), "--warmup-epochs"),
    "hidden huge (mlp)": pytest.param(toml_with(model='"mlp"', hidden="[100000000000]"), "hidden"),
    # a model the data cannot feed
    "conv model on feature vectors": pytest.param(toml_with(model='"resnet18"'), "synthetic-linear"),
    # encodings and garbage
    "binary garbage": (bytes(random.Random(0).randrange(256) for _ in range(512)), "not valid TOML"),
    "NUL bytes": (b"lr = 0.1\x00\x00\nepochs = 1\n", "not valid TOML"),
    "UTF-16": ("lr = 0.1\nepochs = 1\n".encode("utf-16"), "not valid TOML"),
    "latin-1 text": ('model = "café"\n'.encode("latin-1"), "not valid TOML"),
    "TOML syntax error": (b"lr = = 0.1\n", "not valid TOML"),
    "duplicate key": (toml_with() + b"lr = 0.2\n", "not valid TOML"),
    "a JSON file": (b'{"lr": 0.1, "epochs": 1}\n', "not valid TOML"),
    "empty file (defaults: mnist without --data)": (b"", "--data"),
    "comments only": (b"# nothing here\n", "--data"),
}


@pytest.mark.parametrize("content, match", list(CONFIG_FILES.values()), ids=list(CONFIG_FILES))
def test_bad_config_file(capsys, tmp_path, content, match):
    (tmp_path / "c.toml").write_bytes(content)
    fails(capsys, ["train", "--config", tmp_path / "c.toml", "--out", tmp_path / "run"], tmp_path, match)


def test_config_file_path_errors(capsys, tmp_path):
    fails(capsys, ["train", "--config", tmp_path / "missing.toml"], tmp_path, "does not exist")


def test_config_file_that_is_a_folder(capsys, tmp_path):
    (tmp_path / "conf.d").mkdir()
    fails(capsys, ["train", "--config", tmp_path / "conf.d"], tmp_path, "conf.d")


@pytest.mark.parametrize("field, value, readable", [("lr", '"fast"', "number"), ("epochs", '"ten"', "integer"),
                                                    ("nesterov", '"maybe"', "true or false")])
def test_wrong_type_messages_are_readable(capsys, tmp_path, field, value, readable):
    (tmp_path / "c.toml").write_bytes(toml_with(**{field: value}))
    err = fails(capsys, ["train", "--config", tmp_path / "c.toml"], tmp_path)
    assert "<class" not in err and readable in err and field in err


# -- command-line values -----------------------------------------------------------------------------------------
FLAGS = {
    "lr text": (["--lr", "abc"], "--lr"),
    "lr empty": (["--lr", ""], "--lr"),
    "lr nan": (["--lr", "nan"], "--lr nan"),
    "lr inf": (["--lr", "inf"], "--lr inf"),
    "lr overflows to inf": (["--lr", "1e400"], "--lr inf"),
    "lr negative": (["--lr=-1"], "--lr"),
    "epochs zero": (["--epochs", "0"], "--epochs 0"),
    "epochs fraction": (["--epochs", "1.5"], "--epochs"),
    "epochs in e-notation": (["--epochs", "1e3"], "--epochs"),
    "epochs with 5000 digits": (["--epochs", "9" * 5000], "--epochs"),
    "batch size zero": (["--batch-size", "0"], "--batch-size 0"),
    "batch size negative": (["--batch-size=-5"], "--batch-size"),
    "momentum one": (["--momentum", "1"], "--momentum"),
    "hidden not numbers": (["--model", "mlp", "--hidden", "3,x"], "--hidden"),
    "hidden zero": (["--model", "mlp", "--hidden", "0"], "hidden"),
    "milestones not numbers": (["--milestones", "a"], "--milestones"),
    "nesterov maybe": (["--nesterov", "maybe"], "--nesterov"),
    "nesterov without momentum": (["--nesterov"], "--nesterov"),
    "val split one": (["--val-split", "1"], "--val-split"),
    "dropout above one (mlp)": (["--model", "mlp", "--dropout", "1.5"], "dropout"),
    "device tpu": (["--device", "tpu"], "--device"),
    "model unknown": (["--model", "nope"], "unknown model"),
    "dataset unknown": (["--dataset", "nope"], "--dataset"),
    "schedule unknown": (["--schedule", "nope"], "--schedule"),
    "precision fp8": (["--precision", "fp8"], "--precision"),
    "early stop metric unknown": (["--early-stop-metric", "acc"], "--early-stop-metric"),
    "early stopping without a validation split": (["--early-stop-metric", "val_loss", "--val-split", "0"],
                                                  "--early-stop-metric"),
    "subset one": (["--subset", "1"], "--subset"),
    "checkpoint every zero": (["--checkpoint-every", "0"], "--checkpoint-every"),
    "label smoothing one": (["--label-smoothing", "1"], "--label-smoothing"),
    "cutout negative": (["--cutout=-1"], "--cutout"),
    "cutout in e-notation": (["--cutout", "1e30"], "--cutout"),
    "warmup nan": (["--warmup-epochs", "nan"], "--warmup-epochs"),
    "gamma zero": (["--gamma", "0"], "--gamma"),
    "patience zero": (["--early-stop-patience", "0"], "--early-stop-patience"),
    "image size zero": (["--image-size", "0"], "size"),
    "cuda without a GPU": pytest.param(["--device", "cuda"], "--device cuda", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="a GPU is present")),
    "data path missing (mnist)": (["--dataset", "mnist", "--model", "mlp", "--data", "/nonexistent/mnist"],
                                  "does not exist"),
    "seed negative": pytest.param(["--seed=-1"], "--seed"),
    "seed beyond 64 bits": pytest.param(["--seed", str(2**64)], "--seed"),
    "lr huge": pytest.param(["--lr", "1e308"], "--lr"),
}


@pytest.mark.parametrize("flags, match", list(FLAGS.values()), ids=list(FLAGS))
def test_bad_train_flag(capsys, tmp_path, flags, match):
    fails(capsys, ["train", *BASE_FLAGS, *flags, "--out", tmp_path / "run"], tmp_path, match)


def test_out_that_is_a_file(capsys, tmp_path):
    (tmp_path / "taken").write_text("not a folder\n")
    fails(capsys, ["train", *BASE_FLAGS, "--out", tmp_path / "taken"], tmp_path, "is a file")
    fails(capsys, ["train", *BASE_FLAGS, "--out", tmp_path / "taken" / "run"], tmp_path, "cannot create run folder")


OTHER_COMMANDS = {
    "eval split unknown": (["eval", "{run}", "--split", "train"], "--split"),
    "eval data path missing": (["eval", "{run}", "--data", "/nonexistent/data"], "does not exist"),
    "predict image missing": (["predict", "{run}", "{tmp}/nope.png"], "does not exist"),
    "predict image not an image": (["predict", "{run}", "{tmp}/notes.txt"], "not a readable image"),
    "predict on a regression run": (["predict", "{reg}", "{tmp}/ok.png"], "classification"),
    "eval device unknown": pytest.param(["eval", "{run}", "--device", "tpu"], "--device"),
    "predict topk zero": pytest.param(["predict", "{run}", "{tmp}/ok.png", "--topk", "0"], "--topk"),
    "predict topk negative": pytest.param(["predict", "{run}", "{tmp}/ok.png", "--topk=-1"], "--topk"),
    "predict topk text (argparse)": pytest.param(["predict", "{run}", "{tmp}/ok.png", "--topk", "abc"], "--topk"),
    "resume epochs text": pytest.param(["train", "--resume", "{reg}", "--epochs", "abc"], "--epochs"),
}


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """A tiny classification run (an MLP on a 10-class image folder) for eval and predict."""
    root = tmp_path_factory.mktemp("image_run")
    folder, _ = write_image_folder(root / "tree", per_class=2, size=8)
    from cnnlab.engine import fit

    fit(TrainConfig(model="mlp", hidden=[8], dataset="cifar10", data=str(folder), epochs=1, batch_size=8,
                    device="cpu", cache_dir=str(root / "cache"), val_split=0.5, out=str(root / "run")))
    return root / "run"


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory):
    """A finished two-epoch linear-regression run; tests copy it before damaging it."""
    from cnnlab.engine import fit

    out = tmp_path_factory.mktemp("regression_run") / "run"
    fit(TrainConfig(model="linreg", dataset="synthetic-linear", epochs=2, batch_size=100, lr=0.1, momentum=0.0,
                    device="cpu", out=str(out)))
    return out


@pytest.mark.parametrize("argv, match", list(OTHER_COMMANDS.values()), ids=list(OTHER_COMMANDS))
def test_bad_eval_and_predict_values(capsys, tmp_path, image_run, regression_run, argv, match):
    run, reg = tmp_path / "run", tmp_path / "reg"
    shutil.copytree(image_run, run)
    shutil.copytree(regression_run, reg)
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "ok.png").write_bytes(png_bytes(rng_images(1, 8, 8)[0]))
    argv = [a.format(run=run, reg=reg, tmp=tmp_path) for a in argv]
    fails(capsys, argv, tmp_path, match)


# -- checkpoints -------------------------------------------------------------------------------------------------
MARKER = Path(tempfile.gettempdir()) / f"cnnlab-corpus-pwned-{os.getpid()}"


class Exploit:
    """Unpickling this runs a shell command: a checkpoint holding it must be refused before anything runs."""

    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def _checkpoint_bytes(kind: str, tmp_path: Path) -> bytes:
    path = tmp_path / "src.pt"
    if kind in ("truncated", "first 10 bytes"):
        torch.save({"model": {"w": torch.zeros(1000)}, "epoch": 1}, path)
        data = path.read_bytes()
        return data[: len(data) // 2] if kind == "truncated" else data[:10]
    if kind == "random bytes":
        return random.Random(1).randbytes(4096)
    if kind == "empty":
        return b""
    if kind == "text":
        return b"hello, I am not a checkpoint\n"
    if kind == "exploit in torch.save zip":
        torch.save({"model": {}, "payload": Exploit()}, path)
    elif kind == "exploit in legacy torch format":
        torch.save({"model": {}, "payload": Exploit()}, path, _use_new_zipfile_serialization=False)
    elif kind == "exploit as a raw pickle (protocol 2)":
        path.write_bytes(pickle.dumps({"payload": Exploit()}, protocol=2))
    elif kind == "exploit as a raw pickle (protocol 5)":
        path.write_bytes(pickle.dumps({"payload": Exploit()}, protocol=5))
    elif kind == "a list":
        torch.save([1, 2, 3], path)
    elif kind == "a bare tensor":
        torch.save(torch.zeros(3), path)
    return path.read_bytes()


CHECKPOINTS = {
    "truncated": "truncated",
    "first 10 bytes": "truncated",
    "random bytes": "not a PyTorch checkpoint",
    "empty": "empty",
    "text": "not a PyTorch checkpoint",
    "exploit in torch.save zip": "refusing",
    "exploit in legacy torch format": "refusing",
    "exploit as a raw pickle (protocol 2)": "refusing",
    "exploit as a raw pickle (protocol 5)": "refusing",
    "a list": "not a cnnlab checkpoint",
    "a bare tensor": "not a cnnlab checkpoint",
}


@pytest.mark.parametrize("kind", list(CHECKPOINTS))
def test_bad_checkpoint_file(capsys, tmp_path, kind):
    MARKER.unlink(missing_ok=True)
    path = tmp_path / "model.pt"
    path.write_bytes(_checkpoint_bytes(kind, tmp_path))
    with pytest.raises(CnnlabError, match=CHECKPOINTS[kind]):
        load_checkpoint(path)
    fails(capsys, ["eval", path], tmp_path, CHECKPOINTS[kind])
    fails(capsys, ["predict", path, path], tmp_path, CHECKPOINTS[kind])
    assert not MARKER.exists(), "unpickling ran the payload"


def test_exploit_would_run_without_weights_only(tmp_path):
    """The control for the exploit cases: the payload is live, so its refusal above means something."""
    MARKER.unlink(missing_ok=True)
    torch.save({"payload": Exploit()}, tmp_path / "x.pt")
    torch.load(tmp_path / "x.pt", weights_only=False)
    assert MARKER.exists()
    MARKER.unlink()


def test_checkpoint_that_is_a_folder(capsys, tmp_path):
    (tmp_path / "model.pt").mkdir()
    with pytest.raises(CnnlabError, match="is a folder"):
        load_checkpoint(tmp_path / "model.pt")


def test_a_torchvision_state_dict_loads_and_eval_says_what_it_needs(capsys, tmp_path):
    import torchvision

    reference = torchvision.models.resnet18().state_dict()
    torch.save(reference, tmp_path / "resnet18.pt")
    state = load_checkpoint(tmp_path / "resnet18.pt")
    assert list(state) == list(reference) and all(torch.equal(state[k], reference[k]) for k in reference)
    from cnnlab.models import create_model

    create_model("resnet18", num_classes=1000).load_state_dict(state, strict=True)
    fails(capsys, ["eval", tmp_path / "resnet18.pt"], tmp_path, "not a cnnlab checkpoint (no 'model')")


def test_checkpoint_whose_weights_do_not_fit_its_model(capsys, tmp_path, regression_run):
    state = load_checkpoint(regression_run / "best.pt")
    state["model"] = {"linear.weight": torch.zeros(3, 7), "linear.bias": torch.zeros(3)}
    torch.save(state, tmp_path / "odd.pt")
    fails(capsys, ["eval", tmp_path / "odd.pt"], tmp_path, "odd.pt")


# -- run folders -------------------------------------------------------------------------------------------------
def _damage(run: Path, how: str) -> None:
    metrics = run / "metrics.csv"
    if how == "empty folder":
        shutil.rmtree(run)
        run.mkdir()
    elif how == "no config.toml":
        (run / "config.toml").unlink()
    elif how == "config.toml garbage":
        (run / "config.toml").write_bytes(random.Random(2).randbytes(300))
    elif how == "config.toml truncated":
        text = (run / "config.toml").read_bytes()
        (run / "config.toml").write_bytes(text[: len(text) // 2 - 3])
    elif how == "config.toml unknown key":
        (run / "config.toml").write_text((run / "config.toml").read_text() + "colour = 'blue'\n")
    elif how == "config.toml NaN lr":
        text = (run / "config.toml").read_text().replace("lr = 0.1", "lr = nan")
        (run / "config.toml").write_text(text)
    elif how == "metrics.csv garbage":
        metrics.write_bytes(random.Random(3).randbytes(400))
    elif how == "metrics.csv NUL bytes":
        lines = metrics.read_bytes().split(b"\n")
        lines[1] = lines[1].replace(b".", b".\x00", 1)  # inside epoch 1's train_loss
        metrics.write_bytes(b"\n".join(lines))
    elif how == "metrics.csv lost its rows":
        metrics.write_text(metrics.read_text().splitlines()[0] + "\n")
    elif how == "metrics.csv missing":
        metrics.unlink()
    elif how == "metrics.csv last row cut":
        data = metrics.read_bytes()
        metrics.write_bytes(data[: len(data) - 25])
    elif how == "metrics.csv rows out of order":
        lines = metrics.read_text().splitlines()
        metrics.write_text("\n".join([lines[0], lines[2], lines[1]]) + "\n")
    elif how == "last.pt missing":
        (run / "last.pt").unlink()
    elif how == "last.pt truncated":
        data = (run / "last.pt").read_bytes()
        (run / "last.pt").write_bytes(data[: len(data) // 3])
    elif how == "last.pt holds an exploit":
        torch.save({"model": {}, "payload": Exploit()}, run / "last.pt")
    elif how == "best.pt truncated":
        data = (run / "best.pt").read_bytes()
        (run / "best.pt").write_bytes(data[: len(data) // 3])
    elif how == "no checkpoints":
        (run / "last.pt").unlink()
        (run / "best.pt").unlink()
    elif how == "last.pt is a torchvision state_dict":
        import torchvision

        torch.save(torchvision.models.resnet18().state_dict(), run / "last.pt")
    elif how != "intact":
        raise AssertionError(how)


# (damage, `train --resume` outcome, `eval` outcome): a phrase the error must contain, or "ok"
RUN_FOLDERS = [
    ("missing folder", "does not exist", "does not exist"),
    ("empty folder", "no config.toml", "no best.pt or last.pt"),
    ("no config.toml", "no config.toml", "ok"),
    ("config.toml garbage", "not valid TOML", "ok"),
    ("config.toml truncated", "config.toml", "ok"),
    ("config.toml unknown key", "unknown setting 'colour'", "ok"),
    ("config.toml NaN lr", "--lr nan", "ok"),
    ("metrics.csv garbage", "metrics.csv", "ok"),
    ("metrics.csv NUL bytes", "metrics.csv is damaged", "ok"),
    ("metrics.csv lost its rows", "metrics.csv is damaged", "ok"),
    ("metrics.csv missing", "metrics.csv is damaged", "ok"),
    ("metrics.csv last row cut", "metrics.csv is damaged", "ok"),
    ("metrics.csv rows out of order", "metrics.csv is damaged", "ok"),
    ("last.pt missing", "before its first checkpoint", "ok"),
    ("last.pt truncated", "truncated", "ok"),
    ("last.pt holds an exploit", "refusing", "ok"),
    ("best.pt truncated", "truncated", "truncated"),  # resuming a finished run re-tests best.pt
    ("no checkpoints", "before its first checkpoint", "no best.pt or last.pt"),
    ("last.pt is a torchvision state_dict", "not a cnnlab checkpoint", "ok"),
]
RUN_FOLDER_BUGS = {}  # (damage, command) → reason, for cases that fail the contract until a fix lands
RUN_FOLDER_CASES = [
    pytest.param(command, damage, outcome, id=f"{damage}-{command}",
                 marks=[bug(RUN_FOLDER_BUGS[damage, command])] if (damage, command) in RUN_FOLDER_BUGS else [])
    for damage, *outcomes in RUN_FOLDERS for command, outcome in zip(("resume", "eval"), outcomes)]


@pytest.mark.parametrize("command, damage, outcome", RUN_FOLDER_CASES)
def test_damaged_run_folder(capsys, tmp_path, regression_run, command, damage, outcome):
    run = tmp_path / "run"
    if damage != "missing folder":
        shutil.copytree(regression_run, run)
        _damage(run, damage)
    MARKER.unlink(missing_ok=True)
    argv = ["train", "--resume", run] if command == "resume" else ["eval", run]
    if outcome == "ok":
        succeeds(capsys, argv)
    else:
        fails(capsys, argv, tmp_path, outcome)
    assert not MARKER.exists()


def test_a_row_cut_off_after_the_checkpoint_is_dropped_on_resume(capsys, tmp_path, regression_run):
    """A kill while appending epoch 3's row leaves half a row after last.pt (epoch 2): resume rewrites it."""
    run = tmp_path / "run"
    shutil.copytree(regression_run, run)
    with open(run / "metrics.csv", "a") as f:
        f.write("3,0.01234")
    succeeds(capsys, ["train", "--resume", run, "--epochs", "3"])
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[3].startswith("3,") and rows[3].count(",") == rows[0].count(",")
    assert load_checkpoint(run / "last.pt")["epoch"] == 3


def test_stale_checkpoint_temporaries_are_cleaned_on_the_next_write(capsys, tmp_path, regression_run):
    """A process killed mid-write leaves `.last.pt.xxxx`; the next checkpoint write of that run removes it."""
    run = tmp_path / "run"
    shutil.copytree(regression_run, run)
    (run / ".last.pt.abc123").write_bytes(b"half a checkpoint")
    succeeds(capsys, ["train", "--resume", run, "--epochs", "3"])
    assert not list(run.glob(".last.pt.*")) and not list(run.glob("*.tmp"))


def test_a_run_folder_in_use_is_refused(capsys, tmp_path, regression_run):
    from cnnlab.filelock import try_lock

    run = tmp_path / "run"
    shutil.copytree(regression_run, run)
    with open(run / ".lock", "a+") as holder:  # another holder, as far as the OS lock (flock, msvcrt) is concerned
        assert try_lock(holder)
        fails(capsys, ["train", "--resume", run], tmp_path, "in use by another cnnlab process")


def test_out_pointing_at_an_existing_run_leaves_it_untouched(capsys, tmp_path, regression_run):
    run = tmp_path / "run"
    shutil.copytree(regression_run, run)
    (tmp_path / "c.toml").write_bytes(toml_with(out=f'"{run}"'))
    fails(capsys, ["train", "--config", tmp_path / "c.toml"], tmp_path, "already exists")
    fails(capsys, ["train", *BASE_FLAGS, "--out", run], tmp_path, "already exists")


def test_a_refused_resume_with_new_epochs_leaves_the_run_untouched(capsys, tmp_path, regression_run):
    run = tmp_path / "run"
    shutil.copytree(regression_run, run)
    _damage(run, "metrics.csv lost its rows")
    fails(capsys, ["train", "--resume", run, "--epochs", "5"], tmp_path, "metrics.csv is damaged")


# -- disk full, read-only folder ---------------------------------------------------------------------------------
def _fail_on_call(real, n: int, error: int, partial: bool = False, only=lambda args: True):
    """Wrap `real` so that its n-th call (of those `only` picks) raises OSError(error), after writing some bytes
    into the file if `partial`."""
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += only(args)
        if calls["n"] == n:
            if partial and len(args) > 1 and hasattr(args[1], "write"):
                args[1].write(b"PK\x03\x04 half a checkpoint")
            raise OSError(error, os.strerror(error))
        return real(*args, **kwargs)

    return wrapper


DISK_FAILURES = {
    # Checkpoint writes per epoch: best.pt (when improved), then last.pt; write 3 is epoch 2's first.
    "disk full inside torch.save": ("cnnlab.checkpoint.torch.save", torch.save, 3, errno.ENOSPC, True,
                                    "No space left on device"),
    "read-only folder at the temporary file": ("builtins.open", open, 3, errno.EROFS, False,
                                               "Read-only file system"),
    "I/O error at fsync": ("cnnlab.atomic.os.fsync", os.fsync, 3, errno.EIO, False, "Input/output error"),
    "disk full at rename": ("cnnlab.atomic.os.replace", os.replace, 3, errno.ENOSPC, False,
                            "No space left on device"),
}


def _checkpoint_temporary(path) -> bool:
    return Path(path).name.startswith((".best.pt.", ".last.pt."))


# Count the calls for checkpoints only: config.toml is written the same way, and each write flushes its folder too.
ONLY_CHECKPOINTS = {
    "builtins.open": lambda args: _checkpoint_temporary(args[0]),
    "cnnlab.atomic.os.fsync": lambda args: _checkpoint_temporary(os.readlink(f"/proc/self/fd/{args[0]}")),
    "cnnlab.atomic.os.replace": lambda args: str(args[1]).endswith(".pt"),
}


@pytest.mark.parametrize("target, real, n, error, partial, words", list(DISK_FAILURES.values()),
                         ids=list(DISK_FAILURES))
def test_a_failed_checkpoint_write_keeps_the_previous_one(capsys, tmp_path, monkeypatch, target, real, n, error,
                                                           partial, words):
    run = tmp_path / "run"
    argv = ["train", *BASE_FLAGS, "--epochs", "3", "--out", run]
    with monkeypatch.context() as m:
        m.setattr(target, _fail_on_call(real, n, error, partial, ONLY_CHECKPOINTS.get(target, lambda args: True)))
        code, out, err = run_cli(capsys, argv)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("cnnlab: error: cannot write checkpoint") and words in err, err
    assert "is intact" in err and f"cnnlab train --resume {run}" in err, err
    assert load_checkpoint(run / "last.pt")["epoch"] == 1  # the previous checkpoint, whole
    assert load_checkpoint(run / "best.pt")["epoch"] == 1
    assert not [p.name for p in run.iterdir() if p.name.startswith(".last.pt.") or p.name.startswith(".best.pt.")]
    succeeds(capsys, ["train", "--resume", run])  # space is back: the run finishes
    assert load_checkpoint(run / "last.pt")["epoch"] == 3
    assert [r.split(",")[0] for r in (run / "metrics.csv").read_text().splitlines()] == ["epoch", "1", "2", "3"]


def test_a_full_disk_before_the_first_checkpoint_says_nothing_was_written(capsys, tmp_path, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setattr("cnnlab.checkpoint.torch.save", _fail_on_call(torch.save, 1, errno.ENOSPC, True))
    code, out, err = run_cli(capsys, ["train", *BASE_FLAGS, "--out", run])
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "no best.pt was written" in err and "start the run again" in err, err
    assert sorted(p.name for p in run.iterdir() if p.suffix == ".pt" or p.name.startswith(".b")) == []


@pytest.mark.parametrize("method", ["append_metrics", "log"])
def test_a_full_disk_while_writing_metrics_or_log_is_one_line(capsys, tmp_path, monkeypatch, method):
    from cnnlab.runfolder import RunFolder

    run = tmp_path / "run"
    real_open = open

    def full_open(path, mode="r", *args, **kwargs):
        if "a" in mode and Path(path).name == {"append_metrics": "metrics.csv", "log": "log.txt"}[method] \
                and (run / "last.pt").is_file():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", full_open)
    code, out, err = run_cli(capsys, ["train", *BASE_FLAGS, "--epochs", "3", "--out", run])
    monkeypatch.undo()
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "No space left on device" in err and f"cnnlab train --resume {run}" in err, err
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    assert isinstance(RunFolder.open(run), RunFolder)


# -- properties (hypothesis) -------------------------------------------------------------------------------------
FIELDS = [f for f in TrainConfig.__dataclass_fields__]
PROPERTY = settings(max_examples=60, deadline=None, database=None,  # no .hypothesis/ folder in the checkout
                    suppress_health_check=[HealthCheck.too_slow])

toml_scalars = st.one_of(
    st.integers(min_value=-2**70, max_value=2**70), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
    st.text(max_size=12), st.sampled_from(["all", "mlp", "linreg", "cifar10", "sgd", "cpu", "val_loss", "256,128"]),
    st.dates(), st.datetimes(), st.times())
toml_values = st.recursive(toml_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)
toml_dicts = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), toml_values, max_size=6)


def assert_one_line(error: CnnlabError) -> None:
    """The CLI prints `cnnlab: error: {error}` and a newline: the message itself must hold no line break."""
    message = str(error)
    assert message.strip() and message.splitlines() == [message], repr(message)


@PROPERTY
@given(values=toml_dicts)
def test_any_toml_dict_is_a_config_or_one_cnnlab_error(values):
    try:
        validate_config(TrainConfig.from_dict(values))
    except CnnlabError as e:
        assert_one_line(e)


def toml_text(value) -> str:
    """A Python value as TOML (the test's own writer: cnnlab's only writes configs)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if value != value else {float("inf"): "inf", float("-inf"): "-inf"}.get(value, repr(value))
    if isinstance(value, str):  # JSON's escapes are TOML's; TOML also forbids a raw DEL
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_text, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_text(k)} = {toml_text(v)}" for k, v in value.items()) + "}"
    return value.isoformat()  # dates, local date-times and times


# Valid TOML whose values are mostly of the right kind for their key, so that many files get past the parser and
# the type checks into validate() (random bytes almost never do).
toml_scalars64 = st.one_of(
    st.integers(min_value=-2**63, max_value=2**63 - 1), st.integers(-3, 3000), st.floats(), st.floats(-2, 2),
    st.booleans(), st.text(max_size=12), st.dates(), st.datetimes(), st.times(),
    st.sampled_from(["all", "mlp", "linreg", "resnet18", "cifar10", "synthetic-linear", "sgd", "adamw", "cpu",
                     "cuda", "val_loss", "val_acc", "onecycle", "flip-translate", "bf16", "coarse", "none",
                     "two\nlines", "carriage\rreturn", "3\n"]))
toml_values64 = st.recursive(toml_scalars64, lambda inner: st.lists(inner, max_size=3)
                             | st.dictionaries(st.text(max_size=5), inner, max_size=2), max_leaves=5)
CHOICES = ["all", "mlp", "linreg", "resnet18", "speednet", "cifar10", "synthetic-linear", "sgd", "adamw", "cpu",
           "val_loss", "val_acc", "onecycle", "step", "flip-translate", "bf16", "coarse", "none", "speedrun",
           "mlp\n", "a\nb"]  # a value with a line break must not break the one-line error
RIGHT_KIND = {"int": st.integers(-3, 3000), "float": st.floats(-1, 5) | st.floats(), "bool": st.booleans(),
              "str": st.sampled_from(CHOICES) | st.text(max_size=8), "list": st.lists(st.integers(-2, 300), max_size=3)}


def right_kind(name: str):
    kind = str(TrainConfig.__dataclass_fields__[name].type)
    if name == "batch_size":
        return st.integers(-3, 3000) | st.just("all")
    return next(strategy for key, strategy in RIGHT_KIND.items() if key in kind)


@st.composite
def toml_files(draw):
    """Mostly known keys with values of their own kind, sometimes of any kind; now and then an unknown key."""
    names = draw(st.lists(st.sampled_from(FIELDS), unique=True, max_size=6))
    values = {name: draw(st.one_of(right_kind(name), right_kind(name), toml_values64)) for name in names}
    if draw(st.sampled_from(["known keys only"] * 5 + ["one unknown key"])) == "one unknown key":
        values[draw(st.text(max_size=8))] = draw(toml_values64)
    return values


@PROPERTY
@example(values={"model": "mlp\n"}, garbage=None)  # line breaks in values of each kind of check
@example(values={"epochs": "ten\nlines", "dataset": "synthetic-linear"}, garbage=None)
@example(values={"dataset": "a\nb"}, garbage=None)
@example(values={"optimizer": "a\nb", "dataset": "synthetic-linear", "model": "linreg"}, garbage=None)
@example(values={"a\nb": 1}, garbage=None)
@given(values=toml_files(), garbage=st.none() | st.binary(max_size=100))
def test_any_file_is_a_config_or_one_cnnlab_error(values, garbage):
    text = "".join(f"{toml_text(k)} = {toml_text(v)}\n" for k, v in values.items())
    assert tomllib.loads(text).keys() == values.keys()  # the writer above writes valid TOML
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.toml"
        path.write_bytes(garbage if garbage is not None else text.encode())
        try:
            config = validate_config(TrainConfig.from_toml(path))
        except CnnlabError as e:
            assert_one_line(e)
            return
        # what validates is a config: it round-trips through the TOML cnnlab writes
        path.write_text(config.to_toml(), encoding="utf-8")
        assert TrainConfig.from_toml(path) == config


NUMERIC_FLAGS = ["epochs", "batch_size", "lr", "momentum", "weight_decay", "gamma", "warmup_epochs",
                 "label_smoothing", "early_stop_delta", "early_stop_patience", "val_split", "subset", "cutout",
                 "seed", "checkpoint_every", "image_size", "resize_size", "workers", "dropout", "hidden",
                 "milestones", "mixup", "cutmix", "mix_prob", "randaugment_n", "randaugment_m", "tensorboard_every"]
number_strings = st.one_of(st.integers(-10**6, 10**30).map(str), st.floats().map(repr), st.text(max_size=10),
                           st.sampled_from(["nan", "-inf", "1e400", "0x10", "1_000", "１２", "all", "", "3,", ",",
                                            "-0", "+5", " 7 ", "1e-400"]))


# Each flag just outside its documented range (or, for the last three, a value the config accepts): run as explicit
# examples, so that a range check dropped from validation fails the property below on every run, not by luck.
OUTSIDE = {"epochs": "0", "batch_size": "0", "lr": "0", "momentum": "1", "weight_decay": "-1", "gamma": "0",
           "warmup_epochs": "2", "label_smoothing": "1", "early_stop_delta": "-1", "early_stop_patience": "0",
           "val_split": "1", "subset": "1", "cutout": "-1", "seed": "-1", "checkpoint_every": "0", "image_size": "0",
           "resize_size": "100", "workers": "-1", "mixup": "-1", "cutmix": "-1", "mix_prob": "0",
           "randaugment_n": "0", "randaugment_m": "31", "tensorboard_every": "-1",
           "dropout": "1.5", "hidden": "0", "milestones": "-1"}
assert sorted(OUTSIDE) == sorted(NUMERIC_FLAGS)


def each_flag_outside_its_range(test):
    for name, value in OUTSIDE.items():
        test = example(flags={name: value})(test)
    return test


def assert_in_documented_ranges(config: TrainConfig) -> None:
    """The ranges of every flag in NUMERIC_FLAGS that the config checks (the base flags make it linear regression
    for one epoch). dropout and hidden are the model's options, checked when a model that takes them is built (the
    FLAGS cases for mlp), and milestones are not range-checked: for those three only the type is."""
    assert isinstance(config.epochs, int) and config.epochs >= 1
    assert config.batch_size == "all" or (isinstance(config.batch_size, int) and config.batch_size >= 1)
    assert 0 < config.lr < float("inf") and 0 <= config.momentum < 1 and 0 <= config.val_split < 1
    assert 0 <= config.weight_decay < float("inf") and 0 <= config.early_stop_delta < float("inf")
    assert 0 <= config.warmup_epochs <= config.epochs
    assert config.label_smoothing is None or 0 <= config.label_smoothing < 1
    assert isinstance(config.early_stop_patience, int) and config.early_stop_patience >= 1
    assert config.subset is None or (isinstance(config.subset, int) and config.subset >= 2)
    assert isinstance(config.cutout, int) and config.cutout >= 0
    assert isinstance(config.seed, int) and 0 <= config.seed < 2**63
    assert 1 <= config.image_size <= config.resize_size and config.workers >= 0
    assert 0 < config.gamma <= 1 and config.checkpoint_every >= 1 and config.tensorboard_every >= 0
    assert config.mixup >= 0 and config.cutmix >= 0 and 0 < config.mix_prob <= 1
    assert 1 <= config.randaugment_n <= 16 and 0 <= config.randaugment_m <= 30
    assert config.dropout is None or isinstance(config.dropout, float)
    assert all(isinstance(v, int) for v in (config.hidden or []) + config.milestones)


@PROPERTY
@each_flag_outside_its_range
@given(flags=st.dictionaries(st.sampled_from(NUMERIC_FLAGS), number_strings, min_size=1, max_size=4))
def test_any_numeric_flag_is_a_valid_setting_or_one_cnnlab_error(flags):
    argv = ["train", *BASE_FLAGS] + [f"--{k.replace('_', '-')}={v}" for k, v in flags.items()]
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except CnnlabError as e:
        assert "\n" not in str(e).strip()
        return
    config, _ = apply_recipe(config)  # as start() does: the flags left open come from the model's recipe
    assert_in_documented_ranges(config)  # what passes validation is in the documented ranges


safe_text = st.text(alphabet=string.ascii_letters + string.digits + " ./_-\\\"'é", max_size=20)
finite = st.floats(min_value=0, max_value=1e6, allow_nan=False)
valid_configs = st.builds(
    TrainConfig, model=st.sampled_from(["mlp", "linreg", "softmax", "vgg11", "resnet18", "A-LRN"]),
    dropout=st.none() | st.floats(0, 0.99), hidden=st.none() | st.lists(st.integers(1, 2**40), max_size=3),
    batch_norm=st.none() | st.booleans(), dataset=st.sampled_from(["mnist", "cifar10", "synthetic-linear"]),
    data=st.none() | safe_text, val_split=st.floats(0, 0.99), subset=st.none() | st.integers(2, 2**62),
    cutout=st.integers(0, 64), epochs=st.integers(1, 2**62), batch_size=st.sampled_from(["all"]) |
    st.integers(1, 2**62), lr=st.floats(1e-12, 1e6), momentum=st.floats(0, 0.99), weight_decay=finite,
    milestones=st.lists(st.integers(0, 10**6), max_size=3), gamma=st.floats(1e-6, 1), warmup_epochs=st.floats(0, 1),
    label_smoothing=st.floats(0, 0.99), early_stop_delta=finite, seed=st.integers(0, 2**62), out=st.none() | safe_text,
    checkpoint_every=st.integers(1, 10**6), mixup=finite, cutmix=finite, mix_prob=st.floats(1e-6, 1),
    auto_augment=st.sampled_from(["none", "trivialaugment", "randaugment"]), randaugment_n=st.integers(1, 16),
    randaugment_m=st.integers(0, 30))


@PROPERTY
@given(config=valid_configs)
def test_valid_configs_round_trip_through_toml(config):
    config.validate()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.toml"
        path.write_text(config.to_toml(), encoding="utf-8")
        assert TrainConfig.from_toml(path) == config


@settings(max_examples=20, deadline=None, database=None)
@example(out="runs/a\nb")
@given(out=st.text(max_size=10))
def test_any_path_round_trips_through_toml(out):
    config = TrainConfig(out=out)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.toml"
        path.write_text(config.to_toml(), encoding="utf-8")
        assert TrainConfig.from_toml(path).out == out
