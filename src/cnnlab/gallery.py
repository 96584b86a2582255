"""Two pictures `cnnlab eval` draws beside its confusion matrix, for a learner to look at: the first layer's
weights as a grid of small images, and the images of the split (test, or val) the model got wrong with the most
confidence.

The report shows them for the best runs; it reads these PNGs (and eval_SPLIT.json), never the checkpoints.
"""

import math
import textwrap
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnlab.atomic import atomic_write

MAX_FILTERS = 64  # 8 × 8: more are too small to see
MISTAKES = 16  # 4 × 4


def first_layer(model: nn.Module, image_shape) -> tuple[str, torch.Tensor] | None:
    """(the layer's name, its weights as (units, C, h, w) images) for the first layer that sees the pixels — the
    first convolution or linear layer a forward pass calls: a convolution's filters, or a linear layer's rows
    (softmax, MLP) reshaped to the input image. None when the inputs are not images (feature vectors), or when the
    first such layer is a linear one that does not take the whole image."""
    if len(image_shape) != 3:
        return None
    height, width, channels = image_shape
    called = []  # modules are registered in any order (a head before the stem); the forward pass tells
    hooks = [module.register_forward_pre_hook(lambda module, args, name=name: called.append(name))
             for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))]
    parameter = next(model.parameters())
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, channels, height, width, device=parameter.device, dtype=parameter.dtype))
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    if not called:
        return None
    name = called[0]
    module = model.get_submodule(name)
    weights = module.weight.detach().float().cpu()
    if isinstance(module, nn.Conv2d):
        return name, weights
    if module.in_features != height * width * channels:
        return None
    # the model flattens (C, H, W) inputs, so a row of the weight matrix is an image in that order
    return name, weights.reshape(-1, channels, height, width)


def filter_tiles(weights: torch.Tensor, limit: int = MAX_FILTERS) -> np.ndarray:
    """The first `limit` filters as (n, h, w, 3) or (n, h, w) images in [0, 1], each scaled by its own largest
    absolute weight around grey (0.5 = zero), so a filter's sign pattern shows whatever its norm."""
    shown = weights[:limit]
    bound = shown.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
    tiles = (0.5 + 0.5 * shown / bound).clamp(0, 1)
    if tiles.shape[1] == 3:
        return tiles.permute(0, 2, 3, 1).numpy()
    return tiles.mean(1).numpy()  # one channel, or many (not a first layer of images): their mean


def save_filters(model: nn.Module, image_shape, path: Path, title: str = "") -> Path | None:
    """A grid of the first layer's weights as images; None (nothing written) when there is no such layer."""
    # Here, not above: matplotlib takes ~0.5 s, and predict and export import evaluate, which imports this.
    from matplotlib.figure import Figure

    found = first_layer(model, image_shape)
    if found is None:
        return None
    name, weights = found
    tiles = filter_tiles(weights)
    columns = min(8, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    fig = Figure(figsize=(1.1 * columns + 0.4, 1.1 * rows + 1.1))
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, tile in zip(axes, tiles):
        ax.imshow(tile, cmap="gray" if tile.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    layer = model.get_submodule(name)
    kind = "filters" if isinstance(layer, nn.Conv2d) else "units' weights as images"
    frozen = "" if layer.weight.requires_grad else " — frozen: set from the training images, not trained"
    shape = f"{weights.shape[2]}×{weights.shape[3]}×{weights.shape[1]}"
    text = (f"{title}first layer {name}: {min(len(weights), MAX_FILTERS)} of {len(weights)} {kind} ({shape}), "
            f"each scaled to its largest |weight|; grey = 0{frozen}")
    fig.suptitle(textwrap.fill(text, int(fig.get_figwidth() * 14)), fontsize=9)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    return Path(path)


def confident_mistakes(probabilities: np.ndarray, labels: np.ndarray, count: int = MISTAKES,
                       predicted: np.ndarray | None = None) -> list[dict]:
    """The `count` wrong predictions made with the highest probability: index into the split, true and predicted
    class index, and that probability; ties go to the earlier example. `predicted`: the classes the caller counted
    (eval's confusion matrix takes the logits' argmax); default the probabilities' argmax."""
    predicted = probabilities.argmax(1) if predicted is None else predicted
    confidence = probabilities[np.arange(len(labels)), predicted]
    wrong = np.flatnonzero(predicted != labels)
    order = wrong[np.argsort(-confidence[wrong], kind="stable")][:count]
    return [{"index": int(i), "true": int(labels[i]), "predicted": int(predicted[i]),
             "probability": round(float(confidence[i]), 4)} for i in order]


def split_images(loader, indices: list[int]) -> list[np.ndarray]:
    """The split's images at `indices` as evaluation saw them before normalising: (h, w, c) uint8 arrays.

    In-memory splits hold them; a streamed split (ImageNet) decodes the files again with its eval transform.
    """
    if hasattr(loader, "images"):
        return [loader.images[i].cpu().numpy() for i in indices]
    dataset = loader.dataset
    return [dataset.load(int(loader.indices[i])).numpy() for i in indices]


def split_paths(loader, indices: list[int]) -> list[str] | None:
    """The image files behind positions of a streamed split (ImageNet); None for in-memory splits, which keep no
    file names (their index is the position in the split, in the order the dataset lists it)."""
    if hasattr(loader, "images"):
        return None
    return [loader.dataset.path(int(loader.indices[i])) for i in indices]


def save_mistakes(mistakes: list[dict], images: list[np.ndarray], classes: list[str], path: Path,
                  title: str = "") -> Path:
    """A 4-column gallery: each image with its true class and the class predicted with probability p."""
    from matplotlib.figure import Figure  # here: see save_filters

    columns = 4
    rows = max(1, math.ceil(len(mistakes) / columns))
    fig = Figure(figsize=(2.3 * columns, 2.5 * rows + 0.5))
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, mistake, image in zip(axes, mistakes, images):
        ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=255,
                  interpolation="nearest")
        ax.set_title(f"true {classes[mistake['true']]}\npredicted {classes[mistake['predicted']]} "
                     f"p={mistake['probability']:.2f}", fontsize=8)
    fig.suptitle(f"{title}the {len(mistakes)} most confident mistakes (#index in the split)" if mistakes
                 else f"{title}no mistakes", fontsize=10)
    for ax, mistake in zip(axes, mistakes):
        ax.text(0.02, 0.02, f"#{mistake['index']}", transform=ax.transAxes, fontsize=7, color="white",
                bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "linewidth": 0})
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    return Path(path)
