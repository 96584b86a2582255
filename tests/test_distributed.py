"""`torchrun … -m cnnlab train` on the CPU with gloo: the same losses as one process, one run folder."""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest

from cnnlab.config import TrainConfig
from cnnlab.engine import fit
from data_fixtures import write_image_folder

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo on Linux")

# Timeouts only catch a hung job: generous, so a loaded CI machine (the suite once took 1 h 47 min here) cannot fail them.

def torchrun(n, *argv, timeout=900):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
           "-m", "cnnlab", "train", *map(str, argv)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def single(*argv):
    return subprocess.run([sys.executable, "-m", "cnnlab", "train", *map(str, argv)], capture_output=True,
                          text=True, timeout=900)


def rows(run):
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def assert_same_losses(a, b, epochs, keys=("train_loss", "val_loss", "train_acc", "val_acc")):
    ra, rb = rows(a), rows(b)
    assert len(ra) == len(rb) == epochs  # two empty files would otherwise compare equal
    for x, y in zip(ra, rb):
        for k in keys:
            assert x.get(k) and y.get(k), (k, x, y)  # a value missing from both would compare nothing
            assert float(x[k]) == pytest.approx(float(y[k]), rel=1e-4, abs=1e-6), (k, x, y)


def test_two_processes_match_one_on_the_same_global_batch(tmp_path):
    folder, _ = write_image_folder(tmp_path / "digits", classes=[str(d) for d in range(10)], per_class=12, size=28)
    common = ["--model", "mlp", "--hidden", "32", "--dataset", "mnist", "--data", folder, "--augment", "none",
              "--epochs", "2", "--batch-size", "30", "--lr", "0.1", "--momentum", "0.9", "--weight-decay", "1e-3",
              "--val-split", "0.2", "--device", "cpu", "--cache-dir", tmp_path / "cache"]
    one = single(*common, "--out", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    two = torchrun(2, *common, "--out", tmp_path / "two")
    assert two.returncode == 0, two.stderr
    assert_same_losses(tmp_path / "one", tmp_path / "two", epochs=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "digits", "one", "two"]  # one folder per job
    assert two.stdout.count("done:") == 1  # rank 0 alone reports
    assert "--batch-size 30 is the global batch, each process takes 15 images" in two.stdout
    import json

    s1 = json.loads((tmp_path / "one" / "summary.json").read_text())
    s2 = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert s1["test_top1"] == s2["test_top1"] and s1["val_size"] == s2["val_size"]


def test_accumulation_clipping_and_ema_under_two_processes_match_one(tmp_path):
    # DDP averages gradients only in a step's last backward pass (no_sync before it); every rank clips the same
    # global norm and averages the bare module's weights, so the job is the single process's run. Small enough for
    # the default run: the reference trains in this process, so the only processes started are torchrun's.
    folder, _ = write_image_folder(tmp_path / "digits", classes=[str(d) for d in range(10)], per_class=6, size=28)
    settings = dict(model="mlp", hidden=[32], dataset="mnist", data=str(folder), epochs=2, batch_size=10,
                    accumulate=3, clip_grad_norm=0.5, ema_decay=0.9, lr=0.1, val_split=0.2, device="cpu",
                    cache_dir=str(tmp_path / "cache"))
    fit(TrainConfig(**settings, out=str(tmp_path / "one")))
    flags = [f"--{k.replace('_', '-')}={','.join(map(str, v)) if isinstance(v, list) else v}"
             for k, v in settings.items()]
    two = torchrun(2, *flags, "--out", tmp_path / "two")
    assert two.returncode == 0, two.stderr
    # 48 training images: per epoch one step of 3 batches of 10 and a last step of 2 (10 and 8)
    assert [r["step"] for r in rows(tmp_path / "one")] == ["2", "4"]
    assert_same_losses(tmp_path / "one", tmp_path / "two", epochs=2,
                       keys=("train_loss", "val_loss", "train_acc", "val_acc", "grad_norm", "step"))


def test_resume_with_a_different_number_of_processes(tmp_path):
    common = ["--model", "linreg", "--dataset", "synthetic-linear", "--batch-size", "20", "--lr", "0.05",
              "--momentum", "0.9", "--device", "cpu"]
    straight = single(*common, "--epochs", "2", "--out", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    first = torchrun(2, *common, "--epochs", "1", "--out", tmp_path / "split")
    assert first.returncode == 0, first.stderr
    resumed = single("--resume", tmp_path / "split", "--epochs", "2")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_losses(tmp_path / "straight", tmp_path / "split", epochs=2, keys=("train_loss", "val_loss"))


def test_a_two_process_job_resumed_trains_as_one_that_ran_straight_through(tmp_path):
    # Each rank draws its own crops and flips (its own generator): a checkpoint must carry every rank's draw, not
    # rank 0's for all (rank 1 then cropped epoch 2 as rank 0 would have).
    folder, _ = write_image_folder(tmp_path / "digits", classes=[str(d) for d in range(10)], per_class=8, size=28)
    common = ["--model", "mlp", "--hidden", "32", "--dataset", "mnist", "--data", folder, "--augment", "images",
              "--batch-size", "20", "--lr", "0.1", "--schedule", "constant", "--momentum", "0.9", "--val-split", "0.2",
              "--device", "cpu", "--cache-dir", tmp_path / "cache"]
    straight = torchrun(2, *common, "--epochs", "3", "--out", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    first = torchrun(2, *common, "--epochs", "1", "--out", tmp_path / "split")
    assert first.returncode == 0, first.stderr
    resumed = torchrun(2, "--resume", tmp_path / "split", "--epochs", "3")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    assert_same_losses(tmp_path / "straight", tmp_path / "split", epochs=3)


def test_a_killed_rank_ends_the_whole_job(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "cnnlab", "train", "--model", "linreg", "--dataset", "synthetic-linear", "--batch-size", "1",
           "--epochs", "500", "--lr", "0.001", "--momentum", "0", "--device", "cpu", "--out", str(tmp_path / "run")]
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1"))
    try:
        for line in job.stdout:
            if line.startswith("epoch 1/500"):
                break
        children = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 2
        os.kill(int(children[-1]), signal.SIGKILL)
        start = time.monotonic()
        job.communicate(timeout=600)  # a hang guard, generous for a loaded machine
        assert job.returncode != 0 and time.monotonic() - start < 600
    finally:
        if job.poll() is None:
            job.kill()


def test_sync_bn_on_the_cpu_is_one_line_before_any_run_folder(tmp_path):
    folder, _ = write_image_folder(tmp_path / "digits", classes=[str(d) for d in range(10)], per_class=4, size=28)
    two = torchrun(2, "--model", "mlp", "--hidden", "16", "--batch-norm", "--dataset", "mnist", "--data", folder,
                   "--epochs", "1", "--sync-bn", "--device", "cpu", "--cache-dir", tmp_path / "cache",
                   "--out", tmp_path / "run")
    assert two.returncode != 0
    errors = [line for line in two.stderr.splitlines() if line.startswith("cnnlab: error:")]
    assert errors and all(e.startswith("cnnlab: error: --sync-bn needs CUDA GPUs") for e in errors), two.stderr
    assert "Traceback" not in two.stderr.split("cnnlab: error:")[0] and not (tmp_path / "run").exists()
