"""The one atomic writer (cnnlab.atomic) and the one run-folder reader that resuming and reporting share."""

import errno
import os

import pytest

from cnnlab.atomic import atomic_folder, atomic_write
from cnnlab.config import TrainConfig
from cnnlab.errors import CnnlabError
from cnnlab.report.records import load_run
from cnnlab.runfolder import METRIC_COLUMNS, RunFolder


class Interrupted(Exception):
    pass


def test_a_write_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("old")
    with atomic_write(target, "w") as f:
        f.write("new,\r\n")  # text is written as given: csv's line ends stay
        assert target.read_text() == "old"  # nothing is visible before the block ends
    assert target.read_bytes() == b"new,\r\n"
    assert os.listdir(tmp_path) == ["summary.json"]


def test_the_temporary_file_is_hidden_and_named_after_its_target(tmp_path):
    """The kill/resume benchmark spots a checkpoint half written by its `.last.pt.` prefix."""
    with atomic_write(tmp_path / "last.pt") as f:
        f.write(b"weights")
        (name,) = os.listdir(tmp_path)
        assert name.startswith(".last.pt.") and name.endswith(".tmp")


def test_an_exception_mid_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "last.pt"
    target.write_bytes(b"old checkpoint")
    with pytest.raises(Interrupted):
        with atomic_write(target) as f:
            f.write(b"half a new")
            raise Interrupted
    assert target.read_bytes() == b"old checkpoint"
    assert os.listdir(tmp_path) == ["last.pt"]


def test_a_failed_rename_keeps_the_old_file_and_removes_the_temporary(tmp_path, monkeypatch):
    target = tmp_path / "config.toml"
    target.write_text("old")

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("cnnlab.atomic.os.replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        with atomic_write(target, "w") as f:
            f.write("new")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["config.toml"]


def test_a_new_file_gets_the_permissions_a_plain_write_gives(tmp_path):
    (tmp_path / "plain").write_bytes(b"")
    with atomic_write(tmp_path / "atomic") as f:
        f.write(b"")
    assert (tmp_path / "atomic").stat().st_mode == (tmp_path / "plain").stat().st_mode


def test_remove_stale_removes_only_the_temporaries_of_that_file(tmp_path):
    for name in (".last.pt.abc123", ".last.pt.abcd1234.tmp", ".best.pt.abc123", "last.pt.old"):
        (tmp_path / name).write_bytes(b"left over")
    with atomic_write(tmp_path / "last.pt", remove_stale=True) as f:
        f.write(b"new")
    assert sorted(os.listdir(tmp_path)) == [".best.pt.abc123", "last.pt", "last.pt.old"]


def test_a_folder_appears_whole_or_not_at_all(tmp_path):
    final = tmp_path / "cifar10-key"
    with pytest.raises(Interrupted):
        with atomic_folder(final) as tmp:
            (tmp / "train_images.npy").write_bytes(b"half")
            raise Interrupted
    assert os.listdir(tmp_path) == []
    with atomic_folder(final) as tmp:
        (tmp / "meta.json").write_text("{}")
        assert not final.exists()
    assert os.listdir(tmp_path) == ["cifar10-key"] and os.listdir(final) == ["meta.json"]


def test_a_folder_another_process_finished_first_is_kept(tmp_path):
    final = tmp_path / "cifar10-key"
    with atomic_folder(final) as tmp:
        (tmp / "meta.json").write_text("ours")
        final.mkdir()
        (final / "meta.json").write_text("theirs")
    assert os.listdir(tmp_path) == ["cifar10-key"] and (final / "meta.json").read_text() == "theirs"


# -- one reader: resume (RunFolder) and report (load_run) read metrics.csv and config.toml the same way ----------
def _run_folder(path):
    path.mkdir()
    (path / "config.toml").write_text(TrainConfig(dataset="synthetic-linear").to_toml())
    (path / "summary.json").write_text("{}")
    run = RunFolder(path)
    for epoch in (1, 2):
        run.append_metrics({"epoch": epoch, "train_loss": 0.5 / epoch, "lr": 0.1, "step": 10 * epoch},
                           METRIC_COLUMNS)
    return run


def test_the_report_reads_the_rows_resume_reads(tmp_path):
    run = _run_folder(tmp_path / "run")
    as_text = run.metrics()
    as_numbers = load_run(run.path).metrics
    assert [{k: (float(v) if v != "" else None) for k, v in row.items()} for row in as_text] == as_numbers
    assert run.config().dataset == load_run(run.path).config["dataset"] == "synthetic-linear"


def test_a_run_resumed_by_a_newer_cnnlab_keeps_the_header_its_metrics_csv_began_with(tmp_path):
    # A column added since the run began (grad_norm, say) must not make the appended row one field longer.
    (tmp_path / "metrics.csv").write_text("epoch,train_loss,lr\n1,0.5,0.1\n")
    RunFolder(tmp_path).append_metrics({"epoch": 2, "train_loss": 0.4, "lr": 0.1, "grad_norm": 3.0},
                                       ["epoch", "train_loss", "lr", "grad_norm"])
    assert (tmp_path / "metrics.csv").read_text() == "epoch,train_loss,lr\n1,0.5,0.1\n2,0.4,0.1\n"
    assert [row["train_loss"] for row in RunFolder(tmp_path).metrics()] == ["0.5", "0.4"]


@pytest.mark.parametrize("name, damage, read, words", [
    ("metrics.csv", b"\x89PNG\r\n\x1a\n\x00\xff", RunFolder.metrics, "metrics.csv is damaged"),
    ("metrics.csv", "epoch,lr\n1,0.1\n".encode("utf-16"), RunFolder.metrics, "metrics.csv is damaged"),
    ("config.toml", b"lr = = 0.1\n", RunFolder.config, "config.toml is not valid TOML"),
])
def test_an_unreadable_file_is_the_same_line_for_resume_and_report(tmp_path, name, damage, read, words):
    run = _run_folder(tmp_path / "run")
    run.file(name).write_bytes(damage)
    with pytest.raises(CnnlabError) as resume:
        read(run)
    with pytest.raises(CnnlabError) as report:
        load_run(run.path)
    assert str(resume.value) == str(report.value) and words in str(report.value)


def test_a_cut_row_is_refused_by_both_where_each_needs_it_whole(tmp_path):
    run = _run_folder(tmp_path / "run")
    text = run.file("metrics.csv").read_text()
    run.file("metrics.csv").write_text(text[: text.rstrip().rindex(",")])  # epoch 2's row lost its last cell
    with pytest.raises(CnnlabError, match="row 2 is not the complete row of epoch 2"):
        run.truncate_metrics(2)
    with pytest.raises(CnnlabError, match=r"line 3 has \d+ fields, expected \d+: the file is truncated"):
        load_run(run.path)
    run.truncate_metrics(1)  # a resume from epoch 1 drops the cut row
    assert [row["epoch"] for row in load_run(run.path).metrics] == [1.0]


def test_a_config_rewritten_on_resume_reads_back(tmp_path):
    run = _run_folder(tmp_path / "run")
    run.write_config(TrainConfig(dataset="synthetic-linear", epochs=7))
    assert run.config().epochs == 7 and sorted(os.listdir(run.path)) == ["config.toml", "metrics.csv", "summary.json"]
