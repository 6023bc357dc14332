"""Fault injection for every writer of the project: a full or read-only disk (an OSError injected at
the moment the data reaches the disk), two writers racing for one file, and the one error path that
turns a refused write into words the user can act on. Training and run-folder faults (kill -9, two
processes on one run) are in tests/train/test_resume.py and tests/runs/."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from tests.tiny import write_data
from tuner.__main__ import main
from tuner.core.errors import OutputExistsError, StorageError, storage_error
from tuner.core.io import atomic_files, atomic_open


def full_disk(monkeypatch, after: int = 0, code: int = errno.ENOSPC):
    """Make the (after+1)-th fsync fail as a full disk does: the data never reached it."""
    calls = {"n": 0}
    real = os.fsync

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(code, os.strerror(code))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_two_writers_without_force_never_lose_a_result(tmp_path):
    target = tmp_path / "out.jsonl"
    with pytest.raises(OutputExistsError), atomic_open(target, force=False) as handle:
        handle.write("mine\n")
        target.write_text("theirs\n")  # another convert finished first
    assert target.read_text() == "theirs\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]  # no temp file left


def test_racing_threads_one_wins_the_other_is_told(tmp_path):
    target, barrier, outcomes = tmp_path / "out.jsonl", threading.Barrier(2), []

    def write(text):
        try:
            with atomic_open(target, force=False) as handle:
                handle.write(text)
                barrier.wait()  # both passed the existence check before either publishes
            outcomes.append("wrote " + text)
        except OutputExistsError:
            outcomes.append("refused")

    threads = [threading.Thread(target=write, args=(t,)) for t in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes)[-1] == "wrote " + target.read_text() and "refused" in outcomes


def test_several_files_are_published_all_or_none(tmp_path, monkeypatch):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    full_disk(monkeypatch, after=1)  # the first file reaches the disk, the second does not
    with pytest.raises(OSError), atomic_files([a, b]) as (ha, hb):
        ha.write("a\n")
        hb.write("b\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "verb",
    [
        ["convert", "qa.csv", "out.jsonl"],
        ["split", "d.jsonl"],
        ["make-identity", "id.jsonl", "--name", "Tutu"],
        ["copy-preset", "smollm2_135m_instruct_lora_identity_256_e3", "."],
    ],
)
@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "the disk is full"), (errno.EROFS, "read-only")])
def test_every_writer_says_disk_full_and_leaves_nothing_half_done(
    workspace, monkeypatch, capsys, verb, code, words
):
    (workspace / "qa.csv").write_text("Question,Answer\nHi?,Hello\nBye?,Bye\n")
    write_data(workspace / "d.jsonl")
    before = sorted(p.name for p in workspace.iterdir())
    full_disk(monkeypatch, code=code)
    assert main(verb) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and "Traceback" not in err
    assert sorted(p.name for p in workspace.iterdir()) == before  # no output, no temp file
    monkeypatch.undo()
    monkeypatch.setenv("TUNER_WORKSPACE", str(workspace))
    monkeypatch.chdir(workspace)
    assert main(verb) == 0  # space freed: the same command now works, nothing is in its way


def test_storage_errors_are_recognised_through_library_wrappers():
    rust = RuntimeError(
        'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
    )
    assert "the disk is full" in str(storage_error(rust))
    try:
        try:
            raise OSError(errno.EROFS, "Read-only file system", "/mnt/ro/x")
        except OSError as inner:
            raise RuntimeError("save failed") from inner
    except RuntimeError as outer:
        refused = storage_error(outer)
    assert isinstance(refused, StorageError) and str(refused).startswith("/mnt/ro/x: cannot write: the file")
    assert storage_error(ValueError("bad value")) is None
    assert storage_error(OSError(errno.ENOENT, "No such file")) is None  # not a storage refusal


def test_split_on_a_disk_that_fills_after_one_part_leaves_neither(workspace, monkeypatch, capsys):
    write_data(workspace / "d.jsonl")
    full_disk(monkeypatch, after=1)  # the first part fits, the second does not
    assert main(["split", "d.jsonl"]) == 2
    assert "the disk is full" in capsys.readouterr().err
    assert sorted(p.name for p in workspace.iterdir()) == ["d.jsonl"]
    monkeypatch.undo()
    monkeypatch.chdir(workspace)
    assert main(["split", "d.jsonl"]) == 0  # the rerun is not refused by a leftover part


def test_torch_saves_failed_write_is_said_without_claiming_more_than_it_knows():
    torch_text = "PytorchStreamWriter failed writing file data/0: file write failed"
    said = str(storage_error(RuntimeError(torch_text)))
    assert said.startswith("cannot write: the write failed, most likely because the disk is full")
