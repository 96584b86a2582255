"""One process of tests/test_stream_distributed.py, started by torchrun: iterate a sharded StreamLoader for a few
epochs and write which images this job saw (rank 0 gathers every rank's over gloo).

    python -m torch.distributed.run --standalone --nproc_per_node N tests/stream_shard_job.py ROOT OUT EPOCHS
"""

import json
import sys

import torch
import torch.distributed as dist

from cnnlab.data.stream import StreamingImageFolder, StreamLoader


def main(root: str, out: str, epochs: int) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    dataset = StreamingImageFolder(root, True, image_size=8, resize_size=8, seed=0)
    loader = StreamLoader(dataset, range(len(dataset)), batch_size=4, device="cpu", train=True, mean=[0, 0, 0],
                          std=[1, 1, 1], channels_last=False, workers=2, seed=0, rank=rank, world_size=world)
    seen = []
    for _ in range(epochs):
        batches = []
        for x, y in loader:
            # each image is one flat colour whose red channel is 8 × its index (the crop keeps a flat colour)
            red = (x[:, 0] * 255).round().to(torch.int64)
            batches.append([[int(r.median()) // 8, int(label)] for r, label in zip(red, y)])
        pids = sorted(w.pid for w in loader._loader._iterator._workers)
        seen.append({"batches": batches, "worker_pids": pids})
    everyone = [None] * world
    dist.all_gather_object(everyone, seen)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(everyone, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
