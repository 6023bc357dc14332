"""Outputs follow the user's umask: staged files and folders get the modes open()/mkdir() would give."""

import os
import stat
import tempfile

import pytest

from tuner.core.io import atomic_open, staging_folder, write_text_atomic
from tuner.core.permissions import (
    current_umask,
    new_file_mode,
    new_folder_mode,
    replacement_file_mode,
    share_staged_folder,
)


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_umask_is_read_as_set(umask):
    assert current_umask() == umask
    assert current_umask() == umask  # reading it did not change it


def test_new_modes_are_what_open_and_mkdir_give(umask, tmp_path):
    with open(tmp_path / "plain", "w"):
        pass
    (tmp_path / "plain_dir").mkdir()
    assert new_file_mode() == mode(tmp_path / "plain") == {0o022: 0o644, 0o077: 0o600, 0o002: 0o664}[umask]
    assert (
        new_folder_mode() == mode(tmp_path / "plain_dir") == {0o022: 0o755, 0o077: 0o700, 0o002: 0o775}[umask]
    )


def test_a_staged_folder_gets_a_mkdir_mode(umask, tmp_path):
    folder = tempfile.mkdtemp(dir=tmp_path)
    assert mode(folder) == 0o700  # what mkdtemp makes
    share_staged_folder(folder)
    assert mode(folder) == 0o777 & ~umask


def test_an_existing_files_mode_survives_its_replacement(tmp_path):
    path = tmp_path / "kept.txt"
    path.write_text("old")
    os.chmod(path, 0o640)
    assert replacement_file_mode(path) == 0o640
    write_text_atomic(path, "new")
    assert path.read_text() == "new" and mode(path) == 0o640


def test_atomic_files_and_staged_folders_follow_the_umask(umask, tmp_path):
    with atomic_open(tmp_path / "out.jsonl") as handle:
        handle.write("{}\n")
    assert mode(tmp_path / "out.jsonl") == 0o666 & ~umask
    with staging_folder(tmp_path / "export") as staging:
        (staging / "adapter_config.json").write_text("{}")
    assert mode(tmp_path / "export") == 0o777 & ~umask
    assert mode(tmp_path / "export" / "adapter_config.json") == 0o666 & ~umask
