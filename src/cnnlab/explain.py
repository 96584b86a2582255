"""`cnnlab explain`: where a classifier looked. Grad-CAM of the last convolutional block for the convolutional
models; for the flat ones (softmax regression, MLP) the input gradient, and softmax regression's weight template.

The maps explain one forward pass of the image as the run's evaluation preprocessed it (no test-time augmentation),
in fp32, with the model in eval mode; the probabilities shown are that pass's.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure  # not pyplot: no global backend switch
from torch import nn

from cnnlab.atomic import atomic_write
from cnnlab.errors import CnnlabError, check_positive_int
from cnnlab.evaluate import load_image_classifier, normalise, read_image
from cnnlab.models import model_info

# family → the module whose output maps are Grad-CAM's A_k, the last convolutional block: deepest, so the most
# semantic, and still spatial (the next layer pools it away).
LAST_CONV_BLOCK = {
    "resnet": lambda model: model.layer4,
    "vgg": lambda model: model.features[-2],  # the last conv's ReLU: `features` ends with a max-pool
    "speednet": lambda model: model.layers[-1],  # the third conv group, before the global max-pool
}


def grad_cam(model: nn.Module, layer: nn.Module, x: torch.Tensor, target: int) -> tuple[torch.Tensor, ...]:
    """(Grad-CAM map of class `target` at `layer`'s output, (h, w) at that layer's resolution; the logits).

    Selvaraju et al. 2017: α_k = mean over positions of ∂logit_target/∂A_k, map = ReLU(Σ_k α_k A_k). x: one image.
    """
    captured = []
    handle = layer.register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        # An input that requires grad puts the maps in the graph even where the layers before them are frozen.
        logits = model(x.detach().requires_grad_(True))
    finally:
        handle.remove()
    if len(captured) != 1:
        raise ValueError(f"Grad-CAM needs a layer run once per forward pass; this one ran {len(captured)} times")
    activations = captured[0]
    (gradients,) = torch.autograd.grad(logits[0, target], activations)
    alpha = gradients.mean((2, 3), keepdim=True)
    cam = torch.relu((alpha * activations).sum(1))[0]
    return cam.detach(), logits.detach()


def saliency(model: nn.Module, x: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(|∂logit_target/∂x|, the largest over channels, (H, W); the logits) for one image x (Simonyan et al. 2014)."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    (gradient,) = torch.autograd.grad(logits[0, target], x)
    return gradient[0].abs().amax(0), logits.detach()


def upsample(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A map resized bilinearly to `size` and divided by its maximum, so it lies in [0, 1] (all zero stays zero:
    nothing in the image spoke for the class)."""
    up = F.interpolate(cam[None, None], size=size, mode="bilinear", align_corners=False)[0, 0].clamp(min=0)
    peak = up.max()
    return up / peak if peak > 0 else up


class _OnPixels(nn.Module):
    """The run's model taking 0–255 pixels, so that input gradients are with respect to the image as shown."""

    def __init__(self, model: nn.Module, checkpoint: dict):
        super().__init__()
        self.model = model
        self.checkpoint = checkpoint

    def forward(self, pixels):
        return self.model(normalise(pixels, self.checkpoint))


@dataclass
class Explanation:
    pixels: torch.Tensor  # (C, H, W), 0–255, as the model saw the image
    top: list[tuple[str, float]]  # the top-k classes with their probabilities
    target: str  # the class the maps explain
    probability: float  # the target's
    maps: list[tuple[str, str, torch.Tensor]]  # (kind: overlay | heat | template, title, map)


def explain_image(model: nn.Module, family: str, pixels: torch.Tensor, classes: list[str], target: int | None = None,
                  topk: int = 5) -> Explanation:
    """The maps of one (1, C, H, W) 0–255 image for class `target` (default: the top-1 prediction).

    `model` takes pixels (see `_OnPixels`); `family` picks the method: Grad-CAM for LAST_CONV_BLOCK's families, the
    input gradient otherwise, plus the weight template for softmax regression.
    """
    with torch.no_grad():
        probs = torch.softmax(model(pixels).float(), 1)[0]
    target = int(probs.argmax()) if target is None else target
    size = tuple(pixels.shape[2:])
    if family in LAST_CONV_BLOCK:
        cam, _ = grad_cam(model, LAST_CONV_BLOCK[family](model.model), pixels, target)
        maps = [("overlay", f"Grad-CAM, last conv block ({cam.shape[0]}×{cam.shape[1]})", upsample(cam, size))]
    else:
        gradient, _ = saliency(model, pixels, target)
        maps = [("heat", "saliency |∂logit/∂x|, max over channels", gradient)]
        if family == "linear":
            template = model.model.linear.weight[target].detach().reshape(pixels.shape[1:])
            maps.append(("template", "weight template", template))
    top = probs.topk(min(topk, len(classes)))
    return Explanation(pixels[0].detach(), [(classes[i], float(p)) for p, i in zip(top.values, top.indices)],
                       classes[target], float(probs[target]), maps)


def draw(explanation: Explanation, title: str):
    """A figure: the image, each map (Grad-CAM over the image), the top-k probabilities as bars."""
    panels = 2 + len(explanation.maps)
    fig = Figure(figsize=(3.2 * panels, 3.4))
    axes = fig.subplots(1, panels, gridspec_kw={"width_ratios": [1] * (panels - 1) + [1.3]})
    image = _displayable(explanation.pixels / 255)
    axes[0].imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes[0].set_title("input", fontsize=9)
    for ax, (kind, map_title, values) in zip(axes[1:], explanation.maps):
        values = values.numpy()
        if kind == "overlay":
            ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            shown = ax.imshow(values, cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="nearest")
        elif kind == "template" and values.shape[0] == 3:  # a colour template: its own min–max scale, no bar
            low, high = values.min(), values.max()
            ax.imshow(((values - low) / (high - low + 1e-12)).transpose(1, 2, 0), interpolation="nearest")
            shown = None
            map_title += ", min–max scaled"
        elif kind == "template":
            bound = float(abs(values).max()) or 1.0
            shown = ax.imshow(values[0], cmap="coolwarm", vmin=-bound, vmax=bound, interpolation="nearest")
        else:
            shown = ax.imshow(values, cmap="magma", vmin=0, interpolation="nearest")
        if shown is not None:
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=7)
        ax.set_title(f"{map_title}\nclass {explanation.target!r}", fontsize=9)
    for ax in axes[:-1]:
        ax.set_xticks([])
        ax.set_yticks([])
    names = [name for name, _ in explanation.top][::-1]
    probabilities = [p for _, p in explanation.top][::-1]
    bars = axes[-1].barh(range(len(names)), probabilities,
                         color=["tab:orange" if n == explanation.target else "tab:blue" for n in names])
    axes[-1].bar_label(bars, fmt="%.3f", fontsize=8, padding=2)
    axes[-1].set_yticks(range(len(names)), names, fontsize=8)
    axes[-1].set_xlim(0, 1.2)  # room for the labels
    axes[-1].set_xticks([0, 0.5, 1])
    axes[-1].set_xlabel("probability")
    axes[-1].set_title(f"top {len(names)}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _displayable(image: torch.Tensor):
    """(C, H, W) in [0, 1] → what imshow takes: (H, W) for one channel, (H, W, 3) for colour."""
    return image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).clamp(0, 1).numpy()


def explain_run(target, images: list, out_dir=None, topk: int = 5, class_name: str | None = None) -> list[Path]:
    """One PNG per image file in out_dir (default: the run's `explain/` folder); returns their paths.

    Every image and the class are checked before anything is written, and each PNG is written atomically.
    """
    check_positive_int("--topk", topk)
    model, checkpoint = load_image_classifier(target, "explain")
    classes = checkpoint["classes"]
    class_index = None if class_name is None else _class_index(class_name, classes)
    all_pixels = [read_image(path, checkpoint) for path in images]
    run = Path(target) if Path(target).is_dir() else Path(target).parent
    out_dir = Path(out_dir) if out_dir is not None else run / "explain"
    outputs = [out_dir / f"{Path(path).stem}_explain.png" for path in images]
    if len(set(outputs)) < len(outputs):
        raise CnnlabError("two images have the same file name without their extension, so their PNGs would "
                          "overwrite each other; explain them in separate calls with different --out folders")
    name = checkpoint["model_options"]["name"]
    family = model_info(name).family
    pixel_model = _OnPixels(model.float(), checkpoint).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    for path, pixels, output in zip(images, all_pixels, outputs):
        explanation = explain_image(pixel_model, family, pixels, classes, class_index, topk)
        chosen = "the top-1 class" if class_index is None else "--class"
        fig = draw(explanation, f"{Path(path).name} — {name}: why {explanation.target!r} "
                                f"({chosen}, p = {explanation.probability:.3f})")
        with atomic_write(output, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
    return outputs


def _class_index(name: str, classes: list[str]) -> int:
    if name not in classes:
        shown = ", ".join(classes[:12]) + (f", … ({len(classes)} in all)" if len(classes) > 12 else "")
        raise CnnlabError(f"unknown --class {name!r}; this run's classes are: {shown}")
    return classes.index(name)
