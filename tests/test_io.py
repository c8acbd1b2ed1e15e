"""Atomic writes never leave a half-written target behind."""

import json
import os
import stat

import pytest

from segpipe import io


def test_write_json_replaces_whole_file(tmp_path):
    target = tmp_path / "out" / "a.json"
    io.write_json(target, {"x": 1})
    io.write_json(target, {"x": 2})
    assert json.loads(target.read_text()) == {"x": 2}
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]


def test_failed_writer_keeps_previous_content(tmp_path):
    target = tmp_path / "model.bin"
    io.write_bytes(target, b"old")

    def broken(tmp):
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        io.write_with(target, broken)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]


def test_atomic_directory_swaps_only_on_success(tmp_path):
    target = tmp_path / "prepared"
    with io.atomic_directory(target) as staging:
        (staging / "v").write_text("1")

    def interrupted_swap() -> None:
        with io.atomic_directory(target) as staging:
            (staging / "v").write_text("2")
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        interrupted_swap()
    assert (target / "v").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]
    with io.atomic_directory(target) as staging:
        (staging / "v").write_text("3")
    assert (target / "v").read_text() == "3"
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def test_written_files_and_folders_follow_the_umask(tmp_path, umask_022):
    """A teammate (or a web server) can read what segpipe writes when the umask lets them."""
    io.write_json(tmp_path / "report.json", {"x": 1})
    io.write_with(tmp_path / "model.bin", lambda tmp: tmp.write_bytes(b"weights"))
    with io.atomic_directory(tmp_path / "prepared") as staging:
        (staging / "manifest.csv").write_text("id\n")
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "model.bin").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "prepared").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "prepared" / "manifest.csv").stat().st_mode) == 0o644
    os.umask(0o077)
    io.write_json(tmp_path / "private.json", {"x": 1})
    assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600
