"""Decode many small encoded images (JPEG, PNG…) into one uint8 array, in parallel."""

import io
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image, UnidentifiedImageError

from cnnlab.errors import CnnlabError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")
PARALLEL_FROM = 4096  # below this, starting processes costs more than it saves

_BLOBS: list[bytes] = []  # set before forking, so workers inherit the bytes instead of receiving them pickled


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def decode(data: bytes, mode: str) -> np.ndarray:
    """One image as an (H, W, C) uint8 array; grayscale, palette, CMYK and alpha are converted to `mode`."""
    with Image.open(io.BytesIO(data)) as im:
        if im.mode != mode:
            im = im.convert(mode)
        arr = np.asarray(im)
    return arr[..., None] if arr.ndim == 2 else arr


def _decode_range(bounds: tuple[int, int], mode: str):
    """Decode blobs[start:stop] → (kept indices, arrays, unreadable indices). Same-size arrays come back stacked
    into one N×H×W×C array, so a worker returns one large array instead of thousands of small pickles."""
    kept, arrays, bad = [], [], []
    for i in range(*bounds):
        try:
            arrays.append(decode(_BLOBS[i], mode))
            kept.append(i)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            bad.append(i)
    if arrays and all(a.shape == arrays[0].shape for a in arrays):
        arrays = np.stack(arrays)
    return kept, arrays, bad


def decode_all(blobs: list[bytes], names: list[str], mode: str = "RGB", skip_bad: bool = False,
               workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode every blob; all must share one size. Returns (images N×H×W×C, indices of the blobs kept).

    A blob that is not a readable image raises CnnlabError naming it, or with skip_bad is left out. Large sets
    are decoded by forked processes: PIL holds the GIL for most of a small image's decode, so threads don't help.
    """
    global _BLOBS
    if not blobs:
        return np.zeros((0, 0, 0, 3 if mode == "RGB" else 1), np.uint8), np.zeros(0, np.int64)
    workers = workers or os.cpu_count() or 1
    n_chunks = 1 if len(blobs) < PARALLEL_FROM or workers == 1 else workers * 4
    edges = np.linspace(0, len(blobs), n_chunks + 1).astype(int)
    ranges = list(zip(edges[:-1].tolist(), edges[1:].tolist()))
    _BLOBS = blobs
    try:
        if n_chunks == 1:
            parts = [_decode_range(ranges[0], mode)]
        else:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
                parts = list(pool.map(_decode_range, ranges, [mode] * len(ranges)))
    finally:
        _BLOBS = []
    bad = [i for _, _, part_bad in parts for i in part_bad]
    if bad and not skip_bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise CnnlabError(f"corrupt image {names[bad[0]]}{more}; fix or remove it, or pass --skip-bad-images "
                          "to skip such files")
    kept = [i for part_kept, _, _ in parts for i in part_kept]
    if not kept:
        raise CnnlabError(f"none of the {len(blobs)} images could be decoded (first: {names[0]})")
    arrays = [a for _, a, _ in parts if len(a)]
    shapes = [a.shape[1:] if isinstance(a, np.ndarray) else None for a in arrays]
    if any(s != shapes[0] or s is None for s in shapes):
        sizes = [(i, arr.shape) for part_kept, a, _ in parts for i, arr in zip(part_kept, a)]
        first = sizes[0]
        i, shape = next((i, shape) for i, shape in sizes if shape != first[1])
        raise CnnlabError(f"image {names[i]} is {shape[1]}×{shape[0]}, but {names[first[0]]} is "
                          f"{first[1][1]}×{first[1][0]}; every image of a dataset must have one size")
    return np.concatenate(arrays), np.array(kept, np.int64)
