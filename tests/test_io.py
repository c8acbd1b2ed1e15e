"""Atomic writes never leave a half-written target behind."""

import json

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
    with pytest.raises(RuntimeError):
        with io.atomic_directory(target) as staging:
            (staging / "v").write_text("2")
            raise RuntimeError("interrupted")
    assert (target / "v").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]
    with io.atomic_directory(target) as staging:
        (staging / "v").write_text("3")
    assert (target / "v").read_text() == "3"
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]
