"""Decode many small encoded images (JPEG, PNG…) into one uint8 array, in parallel worker processes."""

import io
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image, UnidentifiedImageError

from cnnlab.errors import CnnlabError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")
PARALLEL_FROM = 4096  # below this, forking workers costs more than it saves
# A worker that is not forked (spawn, forkserver) imports cnnlab, and so torch, before its first image: ~1.7 s of CPU,
# the time one core takes to decode ~10,000 CIFAR images.
SPAWNED_PARALLEL_FROM = 16384

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


def _decode_chunk(blobs: list[bytes], start: int, mode: str):
    """Decode blobs, the dataset's from index `start` on → (kept indices, arrays, unreadable indices). Same-size
    arrays come back stacked into one N×H×W×C array, so a worker returns one large array instead of thousands of
    small pickles."""
    kept, arrays, bad = [], [], []
    for i, blob in enumerate(blobs, start):
        try:
            arrays.append(decode(blob, mode))
            kept.append(i)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            bad.append(i)
    if arrays and all(a.shape == arrays[0].shape for a in arrays):
        arrays = np.stack(arrays)
    return kept, arrays, bad


def _decode_inherited(start: int, stop: int, mode: str):
    """A forked worker's chunk, read from the _BLOBS it inherited."""
    return _decode_chunk(_BLOBS[start:stop], start, mode)


def _fork_context():
    """The fork context, where decoding workers should fork; None where they start as the program's do.

    Forking is the quickest start, and a forked worker inherits the blobs instead of receiving them pickled. But
    Windows has no fork, macOS's system libraries are not fork-safe (Python spawns there by default), and a program
    that chose its start method with multiprocessing.set_start_method keeps it.
    """
    chosen = multiprocessing.get_start_method(allow_none=True)
    if chosen == "fork" or (chosen is None and sys.platform != "darwin"
                            and "fork" in multiprocessing.get_all_start_methods()):
        return multiprocessing.get_context("fork")
    return None


def _decode_parts(blobs: list[bytes], mode: str, workers: int) -> list[tuple]:
    """Each chunk's (kept indices, arrays, unreadable indices), in order; large sets in a process pool."""
    fork = _fork_context()
    if len(blobs) < (PARALLEL_FROM if fork else SPAWNED_PARALLEL_FROM) or workers == 1:
        return [_decode_chunk(blobs, 0, mode)]
    edges = np.linspace(0, len(blobs), workers * 4 + 1).astype(int).tolist()
    starts, stops, modes = edges[:-1], edges[1:], [mode] * (len(edges) - 1)
    if fork is None:  # spawn or forkserver: workers do not share this process's memory, so each is sent its chunk
        with ProcessPoolExecutor(workers) as pool:
            return list(pool.map(_decode_chunk, [blobs[a:b] for a, b in zip(starts, stops)], starts, modes))
    global _BLOBS
    _BLOBS = blobs
    try:
        with ProcessPoolExecutor(workers, mp_context=fork) as pool:
            return list(pool.map(_decode_inherited, starts, stops, modes))
    finally:
        _BLOBS = []


def decode_all(blobs: list[bytes], names: list[str], mode: str = "RGB", skip_bad: bool = False,
               workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode every blob; all must share one size. Returns (images N×H×W×C, indices of the blobs kept).

    A blob that is not a readable image raises CnnlabError naming it, or with skip_bad is left out. Large sets
    are decoded by worker processes: PIL holds the GIL for most of a small image's decode, so threads don't help.
    """
    if not blobs:
        return np.zeros((0, 0, 0, 3 if mode == "RGB" else 1), np.uint8), np.zeros(0, np.int64)
    workers = workers or os.cpu_count() or 1
    if sys.platform == "win32":
        workers = min(workers, 61)  # ProcessPoolExecutor refuses more there
    parts = _decode_parts(blobs, mode, workers)
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
