"""Tiny datasets written in each official format, byte for byte as their authors publish them."""

import contextlib
import gzip
import http.server
import io
import pickle
import shutil
import struct
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def rng_images(n, h=32, w=32, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def cifar_rows(images):
    """(N, 32, 32, 3) → CIFAR's (N, 3072) rows: red plane, green plane, blue plane."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


def tar_folder(folder: Path, archive: Path, arcname: str | None = None) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=arcname or folder.name)
    return archive


def write_cifar10_python(root: Path, per_batch=4):
    """cifar-10-batches-py/ with five train batches, a test batch and batches.meta (protocol-2 pickles)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    truth = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        images = rng_images(per_batch, seed=i)
        labels = [(i + j) % 10 for j in range(per_batch)]
        entry = {b"batch_label": name.encode(), b"labels": labels, b"data": cifar_rows(images),
                 b"filenames": [f"img_{j}.png".encode() for j in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
        truth[name] = (images, labels)
    (folder / "batches.meta").write_bytes(pickle.dumps(
        {b"label_names": [c.encode() for c in CIFAR10], b"num_cases_per_batch": per_batch, b"num_vis": 3072},
        protocol=2))
    return folder, truth


def write_cifar10_binary(root: Path, per_batch=4):
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    truth = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        images = rng_images(per_batch, seed=10 + i)
        labels = np.array([(i * 3 + j) % 10 for j in range(per_batch)], np.uint8)
        records = np.concatenate([labels[:, None], cifar_rows(images)], axis=1)
        (folder / f"{name}.bin").write_bytes(records.tobytes())
        truth[name] = (images, labels)
    (folder / "batches.meta.txt").write_text("\n".join(CIFAR10) + "\n\n")
    return folder, truth


def write_cifar100_python(root: Path, n=6):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    truth = {}
    for i, split in enumerate(("train", "test")):
        images = rng_images(n, seed=20 + i)
        fine = [(7 * j + i) % 100 for j in range(n)]
        coarse = [f // 5 for f in fine]
        (folder / split).write_bytes(pickle.dumps(
            {b"filenames": [b"x.png"] * n, b"batch_label": split.encode(), b"fine_labels": fine,
             b"coarse_labels": coarse, b"data": cifar_rows(images)}, protocol=2))
        truth[split] = (images, fine, coarse)
    (folder / "meta").write_bytes(pickle.dumps(
        {b"fine_label_names": [f"fine{k}".encode() for k in range(100)],
         b"coarse_label_names": [f"coarse{k}".encode() for k in range(20)]}, protocol=2))
    return folder, truth


def write_cifar100_binary(root: Path, n=6):
    """cifar-100-binary/: train.bin and test.bin records (coarse label byte, fine label byte, 3072 pixel bytes) and
    the two label-name files."""
    folder = root / "cifar-100-binary"
    folder.mkdir(parents=True)
    truth = {}
    for i, split in enumerate(("train", "test")):
        images = rng_images(n, seed=40 + i)
        fine = np.array([(11 * j + 3 * i + 1) % 100 for j in range(n)], np.uint8)
        coarse = np.array([(f + j) % 20 for j, f in enumerate(fine)], np.uint8)  # not fine // 5: which byte shows
        records = np.concatenate([coarse[:, None], fine[:, None], cifar_rows(images)], axis=1)
        (folder / f"{split}.bin").write_bytes(records.tobytes())
        truth[split] = (images, fine.tolist(), coarse.tolist())
    (folder / "fine_label_names.txt").write_text("".join(f"fine{k}\n" for k in range(100)))
    (folder / "coarse_label_names.txt").write_text("".join(f"coarse{k}\n" for k in range(20)))
    return folder, truth


def write_mnist_idx(root: Path, n_train=5, n_test=3, gz=True):
    root.mkdir(parents=True, exist_ok=True)
    truth = {}
    for prefix, n, seed in (("train", n_train, 30), ("t10k", n_test, 31)):
        images = rng_images(n, 28, 28, 1, seed=seed)[..., 0]
        labels = np.arange(n, dtype=np.uint8) % 10
        blobs = {f"{prefix}-images-idx3-ubyte": struct.pack(">HBBIII", 0, 8, 3, n, 28, 28) + images.tobytes(),
                 f"{prefix}-labels-idx1-ubyte": struct.pack(">HBBI", 0, 8, 1, n) + labels.tobytes()}
        for name, blob in blobs.items():
            if gz:
                (root / f"{name}.gz").write_bytes(gzip.compress(blob))
            else:
                (root / name).write_bytes(blob)
        truth[prefix] = (images, labels)
    return root, truth


def png_bytes(array, fmt="PNG"):
    buf = io.BytesIO()
    Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(buf, format=fmt)
    return buf.getvalue()


def write_image_folder(root: Path, classes=CIFAR10, per_class=2, size=32, splits=("train", "test"), fmt="PNG"):
    """root/<split>/<class>/<i>.png, lossless so pixels can be compared."""
    truth = {}
    for s_i, split in enumerate(splits):
        for c_i, cls in enumerate(classes):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                image = rng_images(1, size, size, seed=1000 * s_i + 10 * c_i + k)[0]
                name = f"{split}/{cls}/{k:04d}.{fmt.lower()}"
                (root / name).write_bytes(png_bytes(image, fmt))
                truth[name] = image
    return root, truth


def write_train_test_tree(root: Path, train_per_class: int, test_per_class: int) -> Path:
    """A CIFAR-10-named image folder with its own numbers of training and test images per class."""
    write_image_folder(root, per_class=train_per_class, splits=("train",))
    write_image_folder(root, per_class=test_per_class, splits=("test",))
    return root


def wnids(n=200):
    return [f"n{10000000 + k:08d}" for k in range(n)]


def write_tinyimagenet(root: Path, train_classes=200, per_class=1, n_val=4, n_test=2, as_zip=True):
    """tiny-imagenet-200/ with all 200 wnids, train images for the first `train_classes` (a complete copy has
    all 200), a few val/test images (one grayscale), zipped like the original."""
    ids = wnids()
    base = "tiny-imagenet-200/"
    files = {base + "wnids.txt": "\n".join(ids[::-1]).encode(),  # not sorted, like the official file
             base + "words.txt": "".join(f"{w}\tthing {k}, other name\n" for k, w in enumerate(ids)).encode()
             + b"n99999999\tunused entry\n"}
    for c in range(train_classes):
        wnid = ids[c]
        boxes = []
        for k in range(per_class):
            image = rng_images(1, 64, 64, seed=c * 10 + k)[0]
            gray = c == 0 and k == 0
            files[f"{base}train/{wnid}/images/{wnid}_{k}.JPEG"] = png_bytes(image[..., :1] if gray else image, "JPEG")
            boxes.append(f"{wnid}_{k}.JPEG\t0\t0\t63\t63")
        files[f"{base}train/{wnid}/{wnid}_boxes.txt"] = "\n".join(boxes).encode()
    annotations = []
    for k in range(n_val):
        files[f"{base}val/images/val_{k}.JPEG"] = png_bytes(rng_images(1, 64, 64, seed=500 + k)[0], "JPEG")
        annotations.append(f"val_{k}.JPEG\t{ids[k % train_classes]}\t0\t0\t63\t63")
    files[base + "val/val_annotations.txt"] = "\n".join(annotations).encode()
    for k in range(n_test):
        files[f"{base}test/images/test_{k}.JPEG"] = png_bytes(rng_images(1, 64, 64, seed=900 + k)[0], "JPEG")
    if as_zip:
        path = root / "tiny-imagenet-200.zip"
        with zipfile.ZipFile(path, "w") as z:
            for name, data in files.items():
                z.writestr(name, data)
        return path, ids
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root / "tiny-imagenet-200", ids


@contextlib.contextmanager
def serve_folder(root: Path):
    """Serve `root` over HTTP on 127.0.0.1 (a free port) in a thread; yield (base URL, the paths requested)."""
    requested = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            requested.append(self.path)
            super().do_GET()

        def log_message(self, *args):  # keep the test output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requested
    finally:
        server.shutdown()
        server.server_close()


def write_shared_datasets(root: Path, per_class=2) -> Path:
    """root/ holding what ../shared/datasets holds, under its names: MNIST and CIFAR-10 as class-folder archives
    (mnist-png.tar.gz, cifar10-jpeg.tar.gz) and Tiny ImageNet (tiny-imagenet-200.zip)."""
    root.mkdir(parents=True, exist_ok=True)
    scratch = root / "_folders"
    write_image_folder(scratch / "mnist", classes=[str(d) for d in range(10)], per_class=per_class, size=28)
    tar_folder(scratch / "mnist", root / "mnist-png.tar.gz")
    tar_folder(write_image_folder(scratch / "cifar", per_class=per_class)[0], root / "cifar10-jpeg.tar.gz")
    shutil.rmtree(scratch)
    write_tinyimagenet(root)
    return root
