"""Automatic augmentation of uint8 (N, H, W, C) image batches on the device: TrivialAugment Wide (Müller & Hutter,
arXiv:2103.10158) and RandAugment (Cubuk et al., arXiv:1909.13719), with a different op and magnitude per image.

The op set, the magnitude bins and the pixel arithmetic are those of torchvision.transforms.v2's TrivialAugmentWide
and RandAugment (nearest interpolation, zero fill); tests/test_autoaugment.py checks every op against
torchvision.transforms.v2.functional one image at a time. Here each op runs once per batch on the images that drew
it: images are grouped by op (one host sync per layer of ops), never looped over in Python.
"""

import functools

import torch
import torch.nn.functional as F

POLICIES = ("trivialaugment", "randaugment")
NUM_BINS = 31  # magnitude bins; RandAugment's M picks one of them (0…30), TrivialAugment draws one per image

# Each signed op's magnitude at the top bin (the bins rise linearly from 0) for TrivialAugment Wide and for
# RandAugment; a random sign is drawn per image. RandAugment's translations are a fraction of the image's side.
RANGES = {
    #               wide    rand
    "shear_x":     (0.99,  0.3),  # x += m·y, about the top-left corner
    "shear_y":     (0.99,  0.3),
    "translate_x": (32.0,  150 / 331),  # pixels (truncated to whole ones)
    "translate_y": (32.0,  150 / 331),
    "rotate":      (135.0, 30.0),  # degrees, counter-clockwise about the centre
    "brightness":  (0.99,  0.9),  # the enhance ops blend with a degenerate image by the factor 1 + m
    "color":       (0.99,  0.9),
    "contrast":    (0.99,  0.9),
    "sharpness":   (0.99,  0.9),
}
POSTERIZE_DROP = {"trivialaugment": 6, "randaugment": 4}  # bits kept fall from 8 to 8 - this over the bins


@functools.lru_cache(maxsize=16)  # built once per image size, not once per batch
def magnitude_table(policy: str, height: int, width: int, bins: int = NUM_BINS) -> tuple[torch.Tensor, torch.Tensor]:
    """(len(OPS), bins) magnitudes in float64 and which ops take a random sign, on the CPU (not to be modified).
    The bins are float32 linspace values, as torchvision computes them, so both agree to the last bit."""
    table = torch.zeros(len(OPS), bins, dtype=torch.float64)
    names = list(OPS)
    for name, (wide, rand) in RANGES.items():
        side = {"translate_x": width, "translate_y": height}.get(name, 1)
        top = wide if policy == "trivialaugment" else rand * side
        table[names.index(name)] = torch.linspace(0.0, top, bins).double()
    table[names.index("posterize")] = (8 - torch.arange(bins) / ((bins - 1) / POSTERIZE_DROP[policy])).round().double()
    table[names.index("solarize")] = torch.linspace(1.0, 0.0, bins).double()  # threshold / 255: nothing → all
    signed = torch.tensor([name in RANGES for name in names])
    return table, signed


def auto_augment(x: torch.Tensor, policy: str, generator: torch.Generator, num_ops: int = 2,
                 magnitude: int = 9) -> torch.Tensor:
    """TrivialAugment Wide (one op, a random magnitude bin per image) or RandAugment (`num_ops` ops in a row,
    bin `magnitude` for all) over the uint8 (N, H, W, C) batch `x`, each image drawing its own ops and signs."""
    n, h, w, _ = x.shape
    table, signed = (t.to(x.device) for t in magnitude_table(policy, h, w))
    for _ in range(1 if policy == "trivialaugment" else num_ops):
        op = torch.randint(len(OPS), (n,), device=x.device, generator=generator)
        level = (torch.randint(NUM_BINS, (n,), device=x.device, generator=generator) if policy == "trivialaugment"
                 else torch.full((n,), magnitude, device=x.device))
        negative = signed[op] & (torch.rand(n, device=x.device, generator=generator) <= 0.5)
        x = apply_ops(x, op, torch.where(negative, -1.0, 1.0).double() * table[op, level])
    return x


def apply_ops(x: torch.Tensor, op: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """Image i of the uint8 (N, H, W, C) batch through op OPS[op[i]] at magnitude[i] (float64)."""
    order = op.argsort()
    counts = torch.bincount(op, minlength=len(OPS)).tolist()
    out = torch.empty_like(x)
    for fn, idx in zip(OPS.values(), order.split(counts)):
        if len(idx):
            out[idx] = fn(x[idx], magnitude[idx])
    return out


# -- geometric ops: one nearest-pixel resampling -----------------------------------------------------------------
def affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Each image of the batch sampled at theta[i] @ (x, y, 1), in pixel coordinates centred on the image, at the
    nearest pixel (zeros outside). The grid is scaled to grid_sample's [-1, 1] in torchvision's order of
    arithmetic, so a sample point that falls halfway between two pixels rounds the same way."""
    n, h, w, _ = x.shape
    xs = torch.linspace((1 - w) / 2, (w - 1) / 2, w, device=x.device)
    ys = torch.linspace((1 - h) / 2, (h - 1) / 2, h, device=x.device)
    base = torch.stack([xs.expand(h, w), ys[:, None].expand(h, w), torch.ones(h, w, device=x.device)], -1)
    scaled = theta.float().transpose(1, 2) / torch.tensor([w / 2, h / 2], device=x.device)
    grid = base.view(1, h * w, 3).expand(n, -1, -1).bmm(scaled).view(n, h, w, 2)
    out = F.grid_sample(x.permute(0, 3, 1, 2).float(), grid, mode="nearest", padding_mode="zeros",
                        align_corners=False)
    return out.round().to(torch.uint8).permute(0, 2, 3, 1)


def _theta(*entries) -> torch.Tensor:
    """(N, 2, 3) float64 matrices, row by row, from six entries that are numbers or (N,) tensors."""
    device = next(e for e in entries if torch.is_tensor(e)).device
    columns = torch.broadcast_tensors(*(torch.as_tensor(e, dtype=torch.float64, device=device) for e in entries))
    return torch.stack(columns, 1).view(-1, 2, 3)


def shear_x(x, m):
    return affine(x, _theta(1, m, m * x.shape[1] / 2, 0, 1, 0))  # sheared about the top-left corner


def shear_y(x, m):
    return affine(x, _theta(1, 0, 0, m, 1, m * x.shape[2] / 2))


def translate_x(x, m):
    return affine(x, _theta(1, 0, -m.trunc(), 0, 1, 0))


def translate_y(x, m):
    return affine(x, _theta(1, 0, 0, 0, 1, -m.trunc()))


def rotate(x, degrees):
    angle = torch.deg2rad(degrees)
    return affine(x, _theta(angle.cos(), -angle.sin(), 0, angle.sin(), angle.cos(), 0))


# -- colour ops: torchvision's uint8 arithmetic in float32, truncated back to uint8 -------------------------------
def _gray(x: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 1) float32 luma (ITU-R 601-2), floored as torchvision floors it for uint8 images."""
    if x.shape[-1] == 1:
        return x.float()
    r, g, b = x.unbind(-1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).floor_().unsqueeze(-1)


def _fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """a + b·c in float32, rounded once: torchvision's `add_(…, alpha=)` is a fused multiply-add in PyTorch's
    vectorised kernels. The float64 product of two float32 numbers is exact, so one float64 sum emulates it."""
    return (a.double() + b.double() * c.double()).float()


def _blend(x: torch.Tensor, other, factor: torch.Tensor) -> torch.Tensor:
    """x·f + other·(1 - f) per image (f: (N,) float64), clamped and truncated to uint8 as torchvision does."""
    f = factor.view(-1, 1, 1, 1)
    if not torch.is_tensor(other):
        return x.mul(f.float()).clamp_(0, 255).to(torch.uint8)
    return _fma(x.mul(f.float()), other, (1 - f).float()).clamp_(0, 255).to(torch.uint8)


def identity(x, m):
    return x


def brightness(x, m):
    return _blend(x, 0, 1 + m)


def color(x, m):
    return x if x.shape[-1] == 1 else _blend(x, _gray(x), 1 + m)


def contrast(x, m):
    return _blend(x, _gray(x).mean((1, 2, 3), keepdim=True), 1 + m)


def sharpness(x, m):
    """Blend with a 3×3 smoothing (centre weight 5, others 1, /13) of the image's inner pixels; borders stay."""
    n, h, w, c = x.shape
    if h <= 2 or w <= 2:
        return x
    kernel = torch.full((3, 3), 1 / 13, device=x.device)
    kernel[1, 1] = 5 / 13
    image = x.permute(0, 3, 1, 2).float()
    blurred = F.conv2d(image, kernel.expand(c, 1, 3, 3), groups=c).round_()
    inner = image[..., 1:-1, 1:-1]
    out = image.clone()
    # x + (1 - factor)·(blurred - x) with factor = 1 + m, the weight formed in float64 as torchvision forms it
    out[..., 1:-1, 1:-1] = _fma(inner, blurred - inner, (1 - (1 + m)).float().view(-1, 1, 1, 1))
    return out.clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def posterize(x, bits):
    """Keep the top `bits` bits of every value."""
    mask = (255 << (8 - bits.long())) & 255
    return x & mask.to(torch.uint8).view(-1, 1, 1, 1)


def solarize(x, m):
    """Invert every value at or above the threshold 255·m."""
    threshold = (255 * m).float().view(-1, 1, 1, 1)
    return torch.where(x >= threshold, 255 - x, x)


def autocontrast(x, m):
    """Stretch each channel to the full range 0…255 (a flat channel stays as it is)."""
    image = x.float()
    low, high = image.amin((1, 2), keepdim=True), image.amax((1, 2), keepdim=True)
    flat = high == low
    scale = (high - low).mul_(1.0 / 255).masked_fill_(flat, 1.0)
    return (image - low.masked_fill(flat, 0.0)).div_(scale).clamp_(0, 255).to(torch.uint8)


def equalize(x, m):
    """Histogram equalisation per channel, PIL's lookup table: value v maps to (pixels below v + step // 2) //
    step, step = (pixels not at the channel's top value) // 255; a channel with step 0 stays as it is."""
    n, h, w, c = x.shape
    # One histogram per (image, channel): each value offset into its own 256-bin range, one bincount for all.
    slot = (torch.arange(n * c, device=x.device).view(n, 1, 1, c) * 256 + x.long()).flatten()
    hist = torch.bincount(slot, minlength=n * c * 256).view(n, c, 256)
    top = x.amax((1, 2)).long()  # (n, c)
    step = (h * w - hist.gather(2, top[..., None]).squeeze(2)) // 255
    below = hist.cumsum(2) - hist  # pixels under each value
    lut = ((below + (step // 2)[..., None]) // step.clamp(min=1)[..., None]).clamp_(0, 255)
    lut = torch.where((step > 0)[..., None], lut, torch.arange(256, device=x.device))
    return lut.flatten()[slot].to(torch.uint8).view(n, h, w, c)


OPS = {"identity": identity, "shear_x": shear_x, "shear_y": shear_y, "translate_x": translate_x,
       "translate_y": translate_y, "rotate": rotate, "brightness": brightness, "color": color, "contrast": contrast,
       "sharpness": sharpness, "posterize": posterize, "solarize": solarize, "autocontrast": autocontrast,
       "equalize": equalize}
