"""`cnnlab export` (ONNX, TorchScript) checked against PyTorch, and `cnnlab eval --save-predictions`."""

import csv
import importlib.util
import json

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.cli import main
from cnnlab.evaluate import load_model, predict
from data_fixtures import write_image_folder

HAVE_ONNX = all(importlib.util.find_spec(name) for name in ("onnx", "onnxscript", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAVE_ONNX, reason="onnx, onnxscript or onnxruntime is not installed "
                                                      "(pip install 'cnnlab[export]')")
MODELS = {"mlp": ["--hidden", "16"], "resnet18": [], "speednet": ["--hidden", "8,16,16"]}  # resnet18: CIFAR stem


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A CIFAR-10-named image folder of 32-px PNGs: 10 classes × 2 train and 2 test images."""
    root, _ = write_image_folder(tmp_path_factory.mktemp("tree"), per_class=2)
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tree):
    """One trained run folder per model, trained on first use (one epoch on the CPU)."""
    root, made = tmp_path_factory.mktemp("runs"), {}

    def run(model):
        if model not in made:
            assert main(["train", "--device", "cpu", "--cache-dir", str(root / "cache"), "--out", str(root / model),
                         "--model", model, *MODELS[model], "--data", str(tree), "--epochs", "1", "--batch-size",
                         "10", "--val-split", "0"]) == 0
            made[model] = root / model
        return made[model]

    return run


def as_the_json_says(paths, meta) -> np.ndarray:
    """What a deployment without cnnlab does: image files → model input, from the exported JSON alone."""
    pre = meta["preprocessing"]
    _, c, h, w = meta["input"]["shape"]
    mode = {"RGB": "RGB", "grayscale": "L"}[meta["input"]["channel_order"]]
    assert pre["resize"] == {"size": [h, w], "interpolation": "bilinear"}
    batch = []
    for path in paths:
        with Image.open(path) as im:
            pixels = np.asarray(im.convert(mode).resize((w, h), Image.BILINEAR), np.float32).reshape(h, w, c)
        batch.append(((pixels / 255 - pre["mean"]) / pre["std"]).transpose(2, 0, 1))
    return np.stack(batch).astype(np.float32)


def run_exported(path, fmt, x: np.ndarray) -> np.ndarray:
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"input": x})[0]
    with torch.no_grad():
        return torch.jit.load(str(path))(torch.from_numpy(x)).numpy()


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=needs_onnx), "torchscript"])
@pytest.mark.parametrize("model", list(MODELS))
def test_the_export_agrees_with_pytorch_on_real_images(model, fmt, runs, tree, capsys):
    run = runs(model)
    capsys.readouterr()
    assert main(["export", str(run), "--format", fmt]) == 0
    out = capsys.readouterr().out
    path = run / {"onnx": "model.onnx", "torchscript": "model.ts.pt"}[fmt]
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    assert f"max |difference| {meta['check']['max_abs_diff']:.2g}" in out and meta["check"]["max_abs_diff"] <= 1e-4
    assert meta["model"] == model and meta["input"]["shape"] == [1, 3, 32, 32] and len(meta["classes"]) == 10
    assert meta["source_checkpoint"] == str((run / "best.pt").resolve()) and meta["cnnlab_version"]

    images = sorted((tree / "test").glob("*/*.png"))  # all 20: the batch is not the traced one
    x = as_the_json_says(images, meta)
    reference, _ = load_model(run)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    got = run_exported(path, fmt, x)
    assert got.shape == (20, 10)
    assert np.abs(got - expected).max() <= 1e-4
    # The JSON's preprocessing is the one `cnnlab predict` applies.
    (_, top), = predict(run, [images[0]], topk=10)
    probabilities = torch.softmax(torch.from_numpy(got[:1]), 1)[0]
    for name, p in top:
        assert abs(probabilities[meta["classes"].index(name)] - p) <= 1e-4


def test_a_checkpoint_file_exports_to_out_and_a_model_that_cannot_export_is_one_line(runs, tmp_path, capsys,
                                                                                       monkeypatch):
    run = runs("mlp")
    out = tmp_path / "deploy" / "mlp.pt"
    assert main(["export", str(run / "best.pt"), "--format", "torchscript", "--out", str(out)]) == 0
    assert out.is_file() and json.loads((tmp_path / "deploy" / "mlp.pt.json").read_text())["format"] == "torchscript"

    def refuse(*args, **kwargs):
        raise RuntimeError("unsupported op\nmore detail")

    monkeypatch.setattr(torch.jit, "trace", refuse)
    capsys.readouterr()
    assert main(["export", str(run), "--format", "torchscript", "--out", str(tmp_path / "no.pt")]) == 2
    err = capsys.readouterr().err
    assert err == "cnnlab: error: model mlp cannot be exported to TorchScript (RuntimeError: unsupported op)\n"
    assert not (tmp_path / "no.pt").exists()


def test_onnx_without_the_export_extra_is_one_line(runs, capsys, monkeypatch):
    run = runs("mlp")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    capsys.readouterr()
    assert main(["export", str(run), "--format", "onnx", "--out", str(run / "missing.onnx")]) == 2
    assert capsys.readouterr().err == ("cnnlab: error: ONNX export needs the export extra: "
                                       "pip install 'cnnlab[export]'\n")
    assert not (run / "missing.onnx").exists()


def test_saved_predictions_agree_with_the_reported_accuracy(runs, tmp_path, capsys):
    run = runs("mlp")
    capsys.readouterr()
    assert main(["eval", str(run), "--save-predictions"]) == 0
    assert f"predictions: {run / 'predictions_test.npz'}" in capsys.readouterr().out
    accuracy = json.loads((run / "eval_test.json").read_text())["acc"]
    saved = np.load(run / "predictions_test.npz")
    assert saved["logits"].shape == saved["probabilities"].shape == (20, 10)
    assert saved["predicted"].shape == saved["label"].shape == (20,)
    assert list(saved["classes"]) == load_model(run)[1]["classes"]
    np.testing.assert_allclose(saved["probabilities"].sum(1), 1, atol=1e-6)
    assert (saved["predicted"] == saved["logits"].argmax(1)).all()
    assert np.mean(saved["predicted"] == saved["label"]) == pytest.approx(accuracy, abs=1e-6)

    assert main(["eval", str(run), "--save-predictions", str(tmp_path / "p.csv")]) == 0
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["index", "label", "predicted", *(f"prob_{c}" for c in saved["classes"])]
    assert [int(r[0]) for r in rows[1:]] == list(range(20))
    assert [int(r[1]) for r in rows[1:]] == saved["label"].tolist()
    assert [int(r[2]) for r in rows[1:]] == saved["predicted"].tolist()
    np.testing.assert_allclose(np.array([r[3:] for r in rows[1:]], float), saved["probabilities"], atol=1e-5)
