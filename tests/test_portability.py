"""cnnlab where this Linux machine is not: without fcntl (Windows) and without fork (Windows; macOS by default).

Each case runs a fresh interpreter whose prelude takes the POSIX-only piece away before cnnlab is imported, then
imports, decodes and trains there. The old code failed each one: `import fcntl` at the top of runs.py (now runfolder.py), and a decode
pool that always forked.
"""

import json
import multiprocessing
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from cnnlab import filelock
from cnnlab.data import folder, images, load_dataset
from cnnlab.errors import CnnlabError
from cnnlab.runfolder import RunFolder
from data_fixtures import png_bytes, rng_images, write_image_folder

# No fcntl (`import fcntl` raises ImportError), and msvcrt.locking played by POSIX record locks (os.lockf): like
# Windows' locks they cover bytes from the file's current position, fail at once while another process holds them,
# and end with their holder. So cnnlab.filelock's Windows branch is what runs here.
AS_ON_WINDOWS = """
import errno, os, sys, types
sys.modules["fcntl"] = None
import cnnlab.filelock

assert cnnlab.filelock.fcntl is None and cnnlab.filelock.msvcrt is None  # imported with neither


def locking(fd, mode, nbytes):
    try:
        os.lockf(fd, os.F_TLOCK if mode == msvcrt.LK_NBLCK else os.F_ULOCK, nbytes)
    except (BlockingIOError, PermissionError):
        raise PermissionError(errno.EACCES, "Permission denied") from None


msvcrt = types.SimpleNamespace(LK_UNLCK=0, LK_NBLCK=2, locking=locking)
cnnlab.filelock.msvcrt = msvcrt
"""

# Imports every module, trains, then holds the run folder's lock until its stdin closes or it is killed.
HOLDER = AS_ON_WINDOWS + """
import importlib, json, pkgutil
import cnnlab
from cnnlab.cli import main
from cnnlab.runfolder import RunFolder

modules = [m.name for m in pkgutil.walk_packages(cnnlab.__path__, "cnnlab.") if m.name != "cnnlab.__main__"]
for name in modules:
    importlib.import_module(name)
print(json.dumps(modules), flush=True)
assert main(["train", "--model", "linreg", "--dataset", "synthetic-linear", "--epochs", "1", "--device", "cpu",
             "--out", sys.argv[1]]) == 0
with RunFolder(sys.argv[1]).lock():
    print("holding", flush=True)
    sys.stdin.read()
"""

RESUME = AS_ON_WINDOWS + """
from cnnlab.cli import main
raise SystemExit(main(["train", "--resume", sys.argv[1], "--epochs", "2"]))
"""

# Spawn as the start method, and no os.fork at all: what Windows offers.
WITHOUT_FORK = """
import json, multiprocessing, os, sys
multiprocessing.set_start_method("spawn")


def fork():
    raise OSError("this platform cannot fork")


os.fork = fork
"""

# Trains on an image folder whose training split is decoded by a pool (threshold lowered; the 10 test images stay
# serial) and prints the start method of every pool started.
SPAWNED_TRAINING = WITHOUT_FORK + """
from concurrent.futures import ProcessPoolExecutor
from cnnlab.cli import main
from cnnlab.data import images

started = []


class Recorded(ProcessPoolExecutor):
    def __init__(self, workers, mp_context=None):
        started.append((mp_context or multiprocessing.get_context()).get_start_method())
        super().__init__(workers, mp_context=mp_context)


images.ProcessPoolExecutor = Recorded
images.PARALLEL_FROM = images.SPAWNED_PARALLEL_FROM = 11
code = main(["train", "--model", "softmax", "--data", sys.argv[1], "--cache-dir", sys.argv[2], "--epochs", "1",
             "--device", "cpu", "--out", sys.argv[3]])
print(json.dumps(started))
raise SystemExit(code)
"""


def python(code: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_without_fcntl_cnnlab_imports_trains_and_the_lock_keeps_a_second_process_out(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        modules = json.loads(holder.stdout.readline() or "null")
        assert modules, holder.communicate(timeout=60)
        assert {"cnnlab.cli", "cnnlab.runfolder", "cnnlab.engine", "cnnlab.filelock", "cnnlab.data.images"} <= {*modules}
        assert "holding\n" in iter(holder.stdout.readline, ""), holder.communicate(timeout=60)
        second = python(RESUME, run)
        assert second.returncode == 2 and "in use by another cnnlab process" in second.stderr, second.stderr
    finally:
        holder.kill()  # SIGKILL: a lock that outlived its holder would refuse the resume below
        holder.wait()
    resumed = python(RESUME, run)
    assert resumed.returncode == 0, resumed.stderr
    assert len(RunFolder(run).metrics()) == 2


def test_without_fcntl_or_msvcrt_the_lock_is_refused_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(filelock, "fcntl", None)
    monkeypatch.setattr(filelock, "msvcrt", None)
    with pytest.raises(CnnlabError, match="neither fcntl"), RunFolder(tmp_path).lock():
        pass


def test_decoding_and_training_work_with_spawn_and_without_fork(monkeypatch, tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    _, truth = write_image_folder(data, per_class=2, splits=("train",))  # CIFAR-10's classes
    write_image_folder(data, per_class=1, splits=("test",))
    done = python(SPAWNED_TRAINING, data, cache, tmp_path / "run")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == ["spawn"]
    # What the spawned workers decoded, each chunk in its place: from the cache the run left, not decoded again here.
    monkeypatch.setattr(folder, "decode_all", lambda *_: pytest.fail("decoded again"))
    train = load_dataset(None, data, cache_dir=cache).train
    assert np.array_equal(train.images, np.stack(list(truth.values())))
    assert train.labels.tolist() == [c for c in range(10) for _ in range(2)]


def test_pooled_decode_equals_a_serial_one(monkeypatch):
    """The pool of this machine's own start (on Linux forked workers, which inherit the blobs): chunks stitched back
    in order, a bad blob's index left out."""
    started = []

    def pool(workers, mp_context=None):
        started.append((mp_context or multiprocessing.get_context()).get_start_method())
        return ProcessPoolExecutor(workers, mp_context=mp_context)

    monkeypatch.setattr(images, "ProcessPoolExecutor", pool)
    monkeypatch.setattr(images, "PARALLEL_FROM", 8)
    monkeypatch.setattr(images, "SPAWNED_PARALLEL_FROM", 8)
    blobs = [png_bytes(image) for image in rng_images(30, 5, 7, seed=4)]
    blobs.insert(11, b"\xff\xd8 truncated")
    decoded, kept = images.decode_all(blobs, [str(i) for i in range(len(blobs))], skip_bad=True, workers=2)
    assert kept.tolist() == [i for i in range(len(blobs)) if i != 11]
    assert np.array_equal(decoded, np.stack([images.decode(b, "RGB") for b in blobs[:11] + blobs[12:]]))
    assert started == ["fork" if sys.platform == "linux" else multiprocessing.get_start_method()]
