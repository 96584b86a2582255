"""The sharded streamed loader under torchrun (gloo, CPU): every image exactly once per epoch across the processes,
with persistent workers, and as many batches on every rank (DDP needs each to step alike)."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo on Linux")

JOB = Path(__file__).with_name("stream_shard_job.py")


def flat_images(root: Path, n: int, classes: int) -> dict[int, int]:
    """n lossless flat-colour images, red = 8 × index, in `classes` folders; {index: label}."""
    for i in range(n):
        label = i % classes
        folder = root / f"n{label:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        size = (12 + i % 5, 10 + i % 7)  # differing sizes and shapes: crops of every kind
        Image.new("RGB", size, (8 * i, 100, 200)).save(folder / f"{i:03d}.png")
    return {i: i % classes for i in range(n)}


@pytest.mark.parametrize("processes", [pytest.param(2, marks=pytest.mark.slow), 3,
                                       pytest.param(4, marks=pytest.mark.slow)])
def test_every_image_once_per_epoch_across_processes(tmp_path, processes):
    # 22 images in global batches of 4: five full batches and a last one of 2, so with 3 or 4 processes the
    # shares are uneven (2/1/1, 1/1/1/1) and in the last batch one or two ranks' shares are empty.
    n, epochs = 22, 3
    labels = flat_images(tmp_path / "train", n, classes=3)
    out = tmp_path / "seen.json"
    job = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                          str(processes), str(JOB), str(tmp_path / "train"), str(out), str(epochs)],
                         capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert job.returncode == 0, job.stderr[-3000:]
    ranks = json.loads(out.read_text())
    assert len(ranks) == processes
    orders = []
    for epoch in range(epochs):
        counts = [len(rank[epoch]["batches"]) for rank in ranks]
        assert counts == [6] * processes  # every rank steps as often, an empty share included
        seen = [item for rank in ranks for batch in rank[epoch]["batches"] for item in batch]
        assert Counter(image for image, _ in seen) == Counter(range(n)), epoch  # each image exactly once
        assert all(label == labels[image] for image, label in seen)
        orders.append([item[0] for batch in ranks[0][epoch]["batches"] for item in batch])
    assert orders[0] != orders[1]  # a fresh shuffle each epoch
    for rank in ranks:  # persistent: the same two worker processes served every epoch
        pids = [rank[epoch]["worker_pids"] for epoch in range(epochs)]
        assert len(pids[0]) == 2 and all(p == pids[0] for p in pids)
