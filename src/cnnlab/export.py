"""`cnnlab export`: a run's model as ONNX or TorchScript (fp32, dynamic batch), with a JSON of its preprocessing.

The file is checked before it is written: the exported model and PyTorch run the same batch, and a difference over
`TOLERANCE` is an error, so nothing that disagrees with the run ever lands on disk.
"""

import contextlib
import importlib.util
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnlab import __version__
from cnnlab.atomic import atomic_write
from cnnlab.data import STREAMED
from cnnlab.errors import CnnlabError, check_choice
from cnnlab.evaluate import checkpoint_path, load_model
from cnnlab.runfolder import GIT_REVISION

FORMATS = {"onnx": "model.onnx", "torchscript": "model.ts.pt"}  # format → default file name in the run folder
ONNX_MODULES = ("onnx", "onnxscript", "onnxruntime")  # the `export` extra
TOLERANCE = 1e-4  # max |exported − PyTorch| over the check batch, fp32
TRACE_BATCH, CHECK_BATCH = 2, 5  # traced with one batch size, checked with another: the batch must be dynamic


@dataclass
class Exported:
    path: Path
    meta_path: Path
    max_diff: float
    checked: int  # inputs in the check batch


def export_model(target, fmt: str, out=None, seed: int = 0) -> Exported:
    """Export the model of a run folder (its best.pt) or checkpoint file in eval mode; write `out` (default: the
    run folder's model.onnx / model.ts.pt) and `out`.json, after checking it against PyTorch on random inputs
    preprocessed as the run's were."""
    check_choice("export format", fmt, tuple(FORMATS))
    if fmt == "onnx":
        _require_onnx()
    source = checkpoint_path(target)
    model, checkpoint = load_model(source)
    path = Path(out) if out else source.parent / FORMATS[fmt]
    shape = input_shape(checkpoint)
    example = _random_inputs(checkpoint, TRACE_BATCH, seed)
    check = _random_inputs(checkpoint, CHECK_BATCH, seed + 1)
    name = checkpoint["model_options"]["name"]
    with torch.no_grad():
        expected = model(check).numpy()
    data = _onnx_bytes(model, example, name) if fmt == "onnx" else _torchscript_bytes(model, example, name)
    got = _run_onnx(data, check) if fmt == "onnx" else _run_torchscript(data, check)
    max_diff = float(np.abs(got - expected).max())
    if not max_diff <= TOLERANCE:
        raise CnnlabError(f"the {fmt} export of {name} differs from PyTorch by {max_diff:.3g} (over {TOLERANCE:g}); "
                          f"nothing was written")
    meta = describe(checkpoint, source, fmt, path, shape, max_diff)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "wb") as f:
            f.write(data)
        meta_path = path.with_name(path.name + ".json")
        with atomic_write(meta_path, "w") as f:
            f.write(json.dumps(meta, indent=1) + "\n")
    except OSError as e:
        raise CnnlabError(f"cannot write {path} ({e.strerror or e}); pick another --out") from None
    return Exported(path, meta_path, max_diff, CHECK_BATCH)


def input_shape(checkpoint: dict) -> list[int]:
    """The model's input for one example, batch first: (1, C, H, W) for images, (1, D) for feature vectors."""
    shape = checkpoint["image_shape"]
    if len(shape) == 3:
        h, w, c = shape
        return [1, c, h, w]
    return [1, *shape]


def describe(checkpoint: dict, source: Path, fmt: str, path: Path, shape: list[int], max_diff: float) -> dict:
    """The JSON beside an exported model: what its input must be and what its output means."""
    config = checkpoint["config"]
    is_image = len(shape) == 4
    meta = {
        "model": checkpoint["model_options"]["name"],
        "model_options": checkpoint["model_options"],
        "format": fmt,
        "file": path.name,
        "input": {"name": "input", "shape": shape, "dynamic_batch": True, "dtype": "float32",
                  "layout": "NCHW" if is_image else "ND",
                  "channel_order": ({1: "grayscale", 3: "RGB"}.get(shape[1]) if is_image else None)},
        "output": {"name": "logits", "shape": [1, len(checkpoint["classes"]) or 1],
                   "meaning": ("logits; softmax gives the class probabilities" if checkpoint["task"] == "classification"
                               else "the regression output")},
        "preprocessing": _preprocessing(checkpoint, shape) if is_image else {"normalize": None},
        "classes": checkpoint["classes"],
        "task": checkpoint["task"],
        "check": {"inputs": CHECK_BATCH, "max_abs_diff": max_diff, "tolerance": TOLERANCE},
        "source_checkpoint": str(source.resolve()),
        "epoch": checkpoint.get("epoch"),
        "cnnlab_version": __version__,
        "git_revision": GIT_REVISION,
        "torch_version": torch.__version__,
    }
    tta = config.get("tta", "none")
    if checkpoint["task"] == "classification" and tta != "none":
        meta["test_time_augmentation"] = (f"{tta}: the run's eval averaged the logits over these views; the exported "
                                          "model computes one view")
    return meta


def _preprocessing(checkpoint: dict, shape: list[int]) -> dict:
    """Pixels → model input, as the run's evaluation did it (`evaluate._as_evaluated`)."""
    config, (_, _, h, w) = checkpoint["config"], shape
    if config.get("dataset") in STREAMED:
        resize = {"shorter_side": config.get("resize_size", h), "interpolation": "bilinear", "center_crop": [h, w]}
    else:
        resize = {"size": [h, w], "interpolation": "bilinear"}
    return {"resize": resize, "scale": "divide 0–255 pixel values by 255", "mean": checkpoint["mean"],
            "std": checkpoint["std"], "normalize": "(pixel / 255 − mean) / std, per channel"}


def _random_inputs(checkpoint: dict, n: int, seed: int) -> torch.Tensor:
    """n model inputs: random 0–255 pixels through the run's normalisation (standard normal feature vectors)."""
    generator = torch.Generator().manual_seed(seed)
    shape = [n, *input_shape(checkpoint)[1:]]
    if len(shape) != 4:
        return torch.randn(shape, generator=generator)
    pixels = torch.randint(0, 256, shape, generator=generator).float()
    mean = torch.tensor(checkpoint["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(checkpoint["std"]).view(1, -1, 1, 1)
    return (pixels / 255 - mean) / std


def _require_onnx() -> None:
    if any(importlib.util.find_spec(name) is None for name in ONNX_MODULES):
        raise CnnlabError("ONNX export needs the export extra: pip install 'cnnlab[export]'")


@contextlib.contextmanager
def _exporting(fmt: str, name: str):
    """The exporters' progress prints and warnings are noise here (the check decides); a failure is one line."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except Exception as e:  # the exporters raise many types; any of them means this model does not export
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise CnnlabError(f"model {name} cannot be exported to {fmt} ({type(e).__name__}: "
                          f"{lines[0][:160] if lines else 'no message'})") from None


def _onnx_bytes(model, example: torch.Tensor, name: str) -> bytes:
    with _exporting("ONNX", name):
        program = torch.onnx.export(model, (example,), input_names=["input"], output_names=["logits"],
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True,
                                    verbose=False)
        return program.model_proto.SerializeToString()


def _torchscript_bytes(model, example: torch.Tensor, name: str) -> bytes:
    buffer = io.BytesIO()
    with _exporting("TorchScript", name), torch.no_grad():
        torch.jit.save(torch.jit.trace(model, example), buffer)
    return buffer.getvalue()


def _run_onnx(data: bytes, x: torch.Tensor) -> np.ndarray:
    import onnxruntime  # the optional `export` extra, checked for (ONNX_MODULES) before anything is exported

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})[0]


def _run_torchscript(data: bytes, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; the file is for its users
        return torch.jit.load(io.BytesIO(data))(x).numpy()
