"""`cnnlab eval` and `cnnlab predict`: a run's best checkpoint on a split, or on image files."""

import csv
import glob
import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from cnnlab import runfiles
from cnnlab.atomic import atomic_write
from cnnlab.calibration import calibration, save_reliability
from cnnlab.checkpoint import load_checkpoint
from cnnlab.config import TrainConfig
from cnnlab.data.images import IMAGE_SUFFIXES, is_image
from cnnlab.data import STREAMED
from cnnlab.data.stream import eval_transform
from cnnlab.engine import evaluate
from cnnlab.gallery import confident_mistakes, save_filters, save_mistakes, split_images, split_paths
from cnnlab.tta import tta_logits
from cnnlab.predictions import write_predictions
from cnnlab.run_data import build_data, wants_channels_last
from cnnlab.hardware import Precision, resolve_device, resolve_precision, reuse_freed_memory, set_deterministic
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model, model_info


def checkpoint_path(target) -> Path:
    target = Path(target)
    if target.is_dir():
        for name in (runfiles.BEST, runfiles.LAST):
            if (target / name).is_file():
                return target / name
        raise CnnlabError(f"{target} has no best.pt or last.pt; is it a cnnlab run folder?")
    return target


def load_model(target, device="cpu"):
    """(model in eval mode, checkpoint dict) from a run folder or a checkpoint file."""
    checkpoint = load_checkpoint(checkpoint_path(target))
    for key in ("model", "model_options", "config"):
        if key not in checkpoint:
            raise CnnlabError(f"{target} is not a cnnlab checkpoint (no {key!r}); cnnlab eval needs one it wrote")
    model = create_model(**checkpoint["model_options"])
    try:
        model.load_state_dict(checkpoint["model"])
    except (RuntimeError, TypeError, AttributeError) as e:
        first = str(e).strip().splitlines()[-1][:120] if str(e).strip() else type(e).__name__
        raise CnnlabError(f"{target}: the saved weights do not fit its model ({first})") from None
    return model.to(device).eval(), checkpoint


def evaluate_run(target, split: str = "test", data: str | None = None, device: str = "auto",
                 out_dir: Path | None = None, save_predictions: str | None = None) -> dict:
    """Top-1/top-5, per-class accuracy, a confusion-matrix PNG, calibration (ECE, reliability PNG), the first
    layer's weights (filters.png) and the most confident mistakes (mistakes_SPLIT.png) for `split` (test or val),
    computed in the precision the run tested in (`eval_precision`); the numbers go to out_dir's eval_SPLIT.json.

    `save_predictions`: a file for each example's logits, probabilities and labels (`predictions.write_predictions`;
    "" is out_dir's predictions_SPLIT.npz), named in the result's "predictions".
    """
    if split not in ("test", "val"):
        raise CnnlabError(f"--split {split!r} is not allowed; choose test or val")
    dev = resolve_device(device)
    if dev.type == "cpu":
        reuse_freed_memory()  # as a CPU training run does: no page faults for every batch's activations
    model, checkpoint = load_model(target, dev)
    if save_predictions is not None and checkpoint.get("task") != "classification":
        raise CnnlabError("--save-predictions needs a classification run (this one is a regression)")
    config = TrainConfig.from_dict(checkpoint["config"])
    config.test_subset = None  # a quick run may have tested on a subset; `cnnlab eval` reports the whole split
    if data:
        config.data = data
    loaders = build_data(config, dev)
    loader = loaders.test if split == "test" else loaders.val
    if loader is None:
        raise CnnlabError("this run held out no validation split (--val-split 0); evaluate --split test")
    set_deterministic(config.deterministic, config.autotune)  # the kernels the run's own test pass chose among
    precision = eval_precision(config, dev, checkpoint["model_options"]["name"], _tested_in(checkpoint_path(target)))
    if wants_channels_last(checkpoint["model_options"]["name"], dev):
        model = model.to(memory_format=torch.channels_last)
    result, logits = evaluate(model, loader, loaders.task, len(loaders.classes), precision.autocast(dev),
                              return_logits=True, tta=config.tta if loaders.task == "classification" else "none")
    result.update(split=split, precision=precision.name, precision_reason=precision.reason)
    if loaders.task == "classification":
        truth = loader.labels.cpu().numpy()
        k = len(loaders.classes)
        predicted = logits.argmax(1).numpy()
        confusion = np.bincount(truth * k + predicted, minlength=k * k).reshape(k, k)
        per_class = confusion.diagonal() / np.maximum(confusion.sum(1), 1)
        result["per_class"] = dict(zip(loaders.classes, per_class.round(4).tolist()))
        out_dir = Path(out_dir or (target if Path(target).is_dir() else Path(target).parent))
        out_dir.mkdir(parents=True, exist_ok=True)
        if save_predictions is not None:
            path = save_predictions or out_dir / runfiles.predictions(split)
            result["predictions"] = str(write_predictions(path, logits, truth, loaders.classes))
        from cnnlab.report.curves import save_confusion  # here: matplotlib takes ~0.5 s; predict and export need none

        result["confusion_png"] = str(save_confusion(confusion, loaders.classes,
                                                     out_dir / runfiles.confusion(split)))
        result["confusion"] = confusion.tolist()
        probabilities = torch.softmax(logits.float(), 1).numpy()
        calibrated = calibration(probabilities, truth)
        result["ece"], result["calibration"] = calibrated["ece"], calibrated["bins"]
        result["reliability_png"] = str(save_reliability(calibrated, out_dir / runfiles.reliability(split)))
        result.update(_gallery(model, checkpoint, loader, probabilities, truth, predicted, loaders.classes, split,
                               out_dir))
        # Reports read per-class accuracy from here; they never load checkpoints.
        with atomic_write(out_dir / runfiles.evaluation(split), "w") as f:
            f.write(json.dumps(result, indent=1) + "\n")
    return result


def eval_precision(config: TrainConfig, device: torch.device, name: str, tested_in: str | None = None) -> Precision:
    """The number format the run's own test pass used (`tested_in`: summary.json's precision; without it, the run's
    setting resolved on this device), so that `cnnlab eval` on the training device repeats summary.json's test
    numbers exactly (an fp32 pass of a bf16 run differs by a few images). fp32 where this device cannot compute it
    (a bf16 run on a GPU without bf16)."""
    asked = tested_in if tested_in in ("fp32", "bf16", "fp16") else config.precision
    try:
        precision = resolve_precision(asked, device, model_info(name).channels_last)
    except CnnlabError:
        return Precision("fp32", f"this device cannot compute {asked}, which the run tested in: the numbers may "
                                 "differ from summary.json's by a few images")
    return Precision(precision.name, "as the run tested" if tested_in else precision.reason)


def _tested_in(source: Path) -> str | None:
    """The precision summary.json says the run trained and tested in, if the checkpoint sits in its run folder."""
    try:
        return json.loads((source.parent / runfiles.SUMMARY).read_text(encoding="utf-8")).get("precision")
    except (OSError, ValueError, AttributeError):
        return None


def _gallery(model, checkpoint: dict, loader, probabilities, truth, predicted, classes: list, split: str,
             out_dir: Path) -> dict:
    """The first layer's weights (filters.png) and the most confident mistakes (mistakes_SPLIT.png) as pictures,
    and the mistakes as data (index into the split, true and predicted class, probability). A model without a first
    layer to draw leaves no filters.png: one from an earlier evaluation would show weights that are not these."""
    name = checkpoint["model_options"]["name"]
    result = {}
    filters = save_filters(model, checkpoint["image_shape"], out_dir / runfiles.FILTERS, title=f"{name}: ")
    if filters is not None:
        result["filters_png"] = str(filters)
    else:
        (out_dir / runfiles.FILTERS).unlink(missing_ok=True)
    if len(checkpoint["image_shape"]) == 3:
        mistakes = confident_mistakes(probabilities, truth, predicted=predicted)
        indices = [m["index"] for m in mistakes]
        result["mistakes_png"] = str(save_mistakes(mistakes, split_images(loader, indices), classes,
                                                   out_dir / runfiles.mistakes(split),
                                                   title=f"{name} on the {split} split: "))
        paths = split_paths(loader, indices) or [None] * len(mistakes)
        result["mistakes"] = [{**m, "true": classes[m["true"]], "predicted": classes[m["predicted"]],
                               **({"path": path} if path else {})} for m, path in zip(mistakes, paths)]
    return result


def _as_evaluated(im, config: dict, h: int, w: int, c: int) -> torch.Tensor:
    """One image as the run's evaluation saw its test images: a (1, C, H, W) float tensor of 0–255 values.

    Streamed runs (imagenet) evaluated on the shorter side resized then a centre crop, so predict does the same;
    in-memory datasets hold images at one size, so a new image is resized to it.
    """
    if config.get("dataset") in STREAMED:
        return eval_transform(im, config.get("image_size", h), config.get("resize_size", h))[None].float()
    im = im.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
    return torch.from_numpy(np.asarray(im).copy()).reshape(1, h, w, c).permute(0, 3, 1, 2).float()


def load_image_classifier(target, command: str):
    """(model in eval mode, checkpoint) of a classification run trained on images; anything else is one line."""
    model, checkpoint = load_model(target)
    if checkpoint.get("task") != "classification":
        raise CnnlabError(f"{command} needs a classification run")
    if len(checkpoint["image_shape"]) != 3:
        raise CnnlabError(f"{command} needs a run trained on images; {target} was trained on feature vectors")
    return model, checkpoint


def read_image(path, checkpoint: dict) -> torch.Tensor:
    """An image file preprocessed as the run's test images were: (1, C, H, W), float 0–255 (see `normalise`)."""
    h, w, c = checkpoint["image_shape"]
    try:
        with Image.open(io.BytesIO(Path(path).read_bytes())) as im:
            return _as_evaluated(im, checkpoint["config"], h, w, c)
    except FileNotFoundError:
        raise CnnlabError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError):
        raise CnnlabError(f"{path} is not a readable image") from None


def normalise(pixels: torch.Tensor, checkpoint: dict) -> torch.Tensor:
    """0–255 pixels → the model's input: scaled to [0, 1], less the training mean, over the training std."""
    mean = torch.tensor(checkpoint["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(checkpoint["std"]).view(1, -1, 1, 1)
    return (pixels / 255 - mean) / std


def image_paths(arguments: list) -> list[Path]:
    """The image files that files, folders (every image below them, hidden ones skipped) and glob patterns name, in
    order, each once. An argument that names no image is an error: a typo must not pass as an empty result."""
    found: dict[Path, None] = {}
    for arg in map(str, arguments):
        if any(c in arg for c in "*?["):
            matches = [Path(m) for m in sorted(glob.glob(arg, recursive=True)) if is_image(m) and Path(m).is_file()]
        elif Path(arg).is_dir():
            matches = sorted(p for p in Path(arg).rglob("*") if is_image(p.name) and p.is_file()
                             and not any(part.startswith(".") for part in p.relative_to(arg).parts))
        else:
            matches = [Path(arg)]  # a file: read_image says if it is missing or not an image
        if not matches:
            raise CnnlabError(f"{arg} names no image files ({', '.join(IMAGE_SUFFIXES)}); check the path or pattern")
        found.update(dict.fromkeys(matches))
    return list(found)


def predict_stream(target, images: list, topk: int = 5):
    """Yield (path, [(class, probability)…]) for each image that `images` names (files, folders, globs), one image
    at a time, preprocessed as the run's data was: memory does not grow with the number of images."""
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise CnnlabError(f"--topk must be a positive integer, got {topk!r}")
    paths = image_paths(images)
    model, checkpoint = load_image_classifier(target, "predict")
    reuse_freed_memory()  # predict runs on the CPU: keep each image's activations' memory for the next
    classes = checkpoint["classes"]
    tta = checkpoint["config"].get("tta", "none")  # the views the run's own evaluation averaged
    for path in paths:
        x = normalise(read_image(path, checkpoint), checkpoint)
        with torch.no_grad():
            probs = torch.softmax(tta_logits(model, x, tta), 1)[0]
        top = probs.topk(min(topk, len(classes)))
        yield str(path), [(classes[i], float(p)) for p, i in zip(top.values, top.indices)]


def predict(target, images: list, topk: int = 5) -> list[tuple[str, list[tuple[str, float]]]]:
    """Top-k classes with probabilities for image files, folders or globs (`predict_stream`, as a list)."""
    return list(predict_stream(target, images, topk))


def predict_to_csv(target, images: list, out, topk: int = 5) -> int:
    """Write path, top-1 class and probability … top-k to a CSV as the images stream through; the file appears
    only when every image was read (an unreadable one leaves no half-written table). Returns the row count."""
    rows = 0
    with atomic_write(out, "w") as f:
        writer = None
        for path, top in predict_stream(target, images, topk):
            if writer is None:
                writer = csv.writer(f)
                writer.writerow(["path"] + [f"{kind}{i}" for i in range(1, len(top) + 1) for kind in ("top", "p")])
            writer.writerow([path] + [v for name, p in top for v in (name, f"{p:.6f}")])
            rows += 1
    return rows
