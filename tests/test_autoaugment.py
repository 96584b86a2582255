"""Batched TrivialAugment Wide and RandAugment against torchvision.transforms.v2, one image at a time.

Every op at every fifth magnitude bin, both signs, must give exactly torchvision's pixels (tolerance 0) on
RGB noise and smooth RGB gradients, and at three bins on a non-square batch and a one-channel batch. Exactness needs two details that the
batched code copies on purpose: the affine grid is scaled in torchvision's order of arithmetic (nearest-pixel ties),
and blends are rounded once, as PyTorch's fused multiply-add in `add_(…, alpha=)` rounds them (color, sharpness).
"""

import math

import numpy as np
import pytest
import torch

from cnnlab.data.autoaugment import NUM_BINS, OPS, apply_ops, auto_augment, magnitude_table

v2 = pytest.importorskip("torchvision.transforms.v2")
TF = v2.functional
NEAREST = TF.InterpolationMode.NEAREST
TORCHVISION_NAMES = {"identity": "Identity", "shear_x": "ShearX", "shear_y": "ShearY", "translate_x": "TranslateX",
                     "translate_y": "TranslateY", "rotate": "Rotate", "brightness": "Brightness", "color": "Color",
                     "contrast": "Contrast", "sharpness": "Sharpness", "posterize": "Posterize",
                     "solarize": "Solarize", "autocontrast": "AutoContrast", "equalize": "Equalize"}


def reference(image: torch.Tensor, op: str, m: float) -> torch.Tensor:
    """torchvision's AutoAugment family applying `op` at magnitude m to one (C, H, W) uint8 image (nearest
    interpolation, no fill), spelled out with torchvision.transforms.v2.functional."""
    shear = math.degrees(math.atan(m))
    calls = {
        "identity": lambda: image,
        "shear_x": lambda: TF.affine(image, angle=0.0, translate=[0, 0], scale=1.0, shear=[shear, 0.0],
                                     interpolation=NEAREST, center=[0, 0]),
        "shear_y": lambda: TF.affine(image, angle=0.0, translate=[0, 0], scale=1.0, shear=[0.0, shear],
                                     interpolation=NEAREST, center=[0, 0]),
        "translate_x": lambda: TF.affine(image, angle=0.0, translate=[int(m), 0], scale=1.0, shear=[0.0, 0.0],
                                         interpolation=NEAREST),
        "translate_y": lambda: TF.affine(image, angle=0.0, translate=[0, int(m)], scale=1.0, shear=[0.0, 0.0],
                                         interpolation=NEAREST),
        "rotate": lambda: TF.rotate(image, angle=m, interpolation=NEAREST),
        "brightness": lambda: TF.adjust_brightness(image, 1.0 + m),
        "color": lambda: TF.adjust_saturation(image, 1.0 + m),
        "contrast": lambda: TF.adjust_contrast(image, 1.0 + m),
        "sharpness": lambda: TF.adjust_sharpness(image, 1.0 + m),
        "posterize": lambda: TF.posterize(image, int(m)),
        "solarize": lambda: TF.solarize(image, 255 * m),
        "autocontrast": lambda: TF.autocontrast(image),
        "equalize": lambda: TF.equalize(image),
    }
    return calls[op]()


def batches():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32]
    smooth = np.stack([np.stack([(xx * 7 + 13 * i) % 256, (yy * 5 + 29 * i) % 256, (xx + yy) * 3 + i], -1)
                       for i in range(2)])
    narrow = np.zeros((1, 24, 40, 3), dtype=np.uint8)
    narrow[:, 6:18, 8:30] = (200, 90, 30)  # one flat channel value per channel: autocontrast's special case
    return {"rgb": np.concatenate([rng.integers(0, 256, (2, 32, 32, 3)), smooth]).astype(np.uint8),
            "non-square": np.concatenate([rng.integers(0, 256, (1, 24, 40, 3), dtype=np.uint8), narrow]),
            "gray": rng.integers(0, 256, (2, 28, 28, 1), dtype=np.uint8)}


@pytest.mark.parametrize("op", list(OPS))
def test_each_op_gives_torchvisions_pixels(op):
    k = list(OPS).index(op)
    for name, x in batches().items():
        x = torch.from_numpy(x)
        table, signed = magnitude_table("trivialaugment", *x.shape[1:3])  # the widest ranges
        for level in range(0, NUM_BINS, 5) if name == "rgb" else (10, 20, 30):  # wide bin 20: rotate 90°
            for sign in (1, -1) if signed[k] else (1,):
                m = sign * table[k, level].item()
                ours = apply_ops(x, torch.full((len(x),), k), torch.full((len(x),), m, dtype=torch.float64))
                theirs = torch.stack([reference(image.permute(2, 0, 1), op, m).permute(1, 2, 0) for image in x])
                assert torch.equal(ours, theirs), (name, level, sign)


@pytest.mark.parametrize("policy, cls", [("trivialaugment", "TrivialAugmentWide"), ("randaugment", "RandAugment")])
def test_magnitude_bins_are_torchvisions(policy, cls):
    space = getattr(getattr(v2, cls), "_AUGMENTATION_SPACE", None)
    if space is None:
        pytest.skip("this torchvision keeps its op table elsewhere")
    assert set(space) == set(TORCHVISION_NAMES.values())
    for h, w in ((32, 32), (24, 40)):
        table, signed = magnitude_table(policy, h, w)
        for k, op in enumerate(OPS):
            make, their_signed = space[TORCHVISION_NAMES[op]]
            theirs = make(NUM_BINS, h, w)
            assert bool(signed[k]) == their_signed, op
            expected = torch.zeros(NUM_BINS) if theirs is None else theirs.double()
            assert torch.equal(table[k], expected.double()), (op, h, w)


def candidates(image: torch.Tensor, policy: str, level=None) -> set:
    """Every result one op can give for `image`: each op at each (or the given) bin and sign, as bytes."""
    table, signed = magnitude_table(policy, *image.shape[:2])
    ops, mags = [], []
    for k in range(len(OPS)):
        for b in range(NUM_BINS) if level is None else (level,):
            for sign in (1, -1) if signed[k] else (1,):
                ops.append(k)
                mags.append(sign * table[k, b].item())
    out = apply_ops(image.expand(len(ops), *image.shape).contiguous(), torch.tensor(ops),
                    torch.tensor(mags, dtype=torch.float64))
    return {bytes(o.flatten().tolist()) for o in out}


def test_each_image_draws_its_own_op_and_magnitude():
    image = torch.from_numpy(batches()["rgb"][2])  # a smooth image: ops rarely coincide
    x = image.expand(300, *image.shape).contiguous()
    out = auto_augment(x, "trivialaugment", torch.Generator().manual_seed(0))
    results = [bytes(o.flatten().tolist()) for o in out]
    assert set(results) <= candidates(image, "trivialaugment")  # each one is a single op at some bin and sign
    assert len(set(results)) > 150  # and they differ from image to image
    one_op = auto_augment(x, "randaugment", torch.Generator().manual_seed(0), num_ops=1, magnitude=20)
    results = {bytes(o.flatten().tolist()) for o in one_op}
    assert results <= candidates(image, "randaugment", level=20) and len(results) > 15


def test_randaugment_applies_n_ops_in_a_row():
    image = torch.from_numpy(batches()["rgb"][2])
    x = image.expand(200, *image.shape).contiguous()
    single = candidates(image, "randaugment", level=30)
    two = auto_augment(x, "randaugment", torch.Generator().manual_seed(1), num_ops=2, magnitude=30)
    beyond_one = sum(bytes(o.flatten().tolist()) not in single for o in two)
    assert beyond_one > 100  # most images went through two ops, which one op alone cannot give
