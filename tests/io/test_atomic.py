"""zoo.io.atomic: a file appears whole, with ordinary permissions, or the previous one stays."""

from __future__ import annotations

import os
import stat

import pytest

from zoo.io.atomic import atomic_output, new_file_mode, write_atomically


def test_text_and_bytes_replace_the_target_with_the_mode_open_would_give(tmp_path):
    target = tmp_path / "sub" / "out.json"
    write_atomically(target, "größe")
    assert target.read_text(encoding="utf-8") == "größe"
    write_atomically(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == new_file_mode()
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"], "no temporary file left"


def test_an_error_inside_the_block_keeps_the_previous_file_and_removes_the_temporary_one(tmp_path):
    target = tmp_path / "model.ckpt"
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_output(target, suffix=".partial") as stream:
            stream.write(b"half of a new")
            assert any(p.name.endswith(".partial") for p in tmp_path.iterdir()), "written beside the target"
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.ckpt"]


def test_the_umask_decides_the_mode(tmp_path):
    previous = os.umask(0o077)
    try:
        write_atomically(tmp_path / "private.txt", "x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "private.txt").stat().st_mode) == 0o600
