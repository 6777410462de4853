"""write_atomic replaces a file whole or not at all: the old file survives a failed write, no temp file is
left behind, and a given mode is on the temp file before its first byte."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from runtime.contract.files import write_atomic


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_target_is_replaced_whole(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("an older and much longer content\n" * 100)
    assert write_atomic(target, "new\n") == target
    assert target.read_text() == "new\n"
    write_atomic(str(target), b"\x00bytes as they are\xff")
    assert target.read_bytes() == b"\x00bytes as they are\xff"
    write_atomic(target, "ünïcode\n")
    assert target.read_bytes() == "ünïcode\n".encode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


class _Spy:
    """A file handle that notes the file's mode and size at each write; `fail` writes half of what it is
    given, then fails as a full disk would."""

    def __init__(self, handle: Any, seen: list[tuple[int, int]], fail: bool) -> None:
        self._handle, self._seen, self._fail = handle, seen, fail

    def __enter__(self) -> _Spy:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()

    def fileno(self) -> int:
        return int(self._handle.fileno())

    def write(self, data: bytes) -> int:
        info = os.fstat(self.fileno())
        self._seen.append((stat.S_IMODE(info.st_mode), info.st_size))
        if not self._fail:
            return int(self._handle.write(data))
        self._handle.write(data[: len(data) // 2])
        self._handle.flush()
        raise OSError(28, "No space left on device")


def _spy_on_writes(monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> list[tuple[int, int]]:
    seen: list[tuple[int, int]] = []
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: _Spy(real_fdopen(fd, *a, **k), seen, fail))
    return seen


def test_a_failure_mid_write_leaves_the_old_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "config.yaml"
    target.write_text("old: true\n")
    seen = _spy_on_writes(monkeypatch, fail=True)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, "new: true\n" * 1000, 0o600)
    assert seen, "the write was reached"
    assert target.read_text() == "old: true\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


@pytest.mark.parametrize("mode", [0o600, 0o700, 0o755, 0o644])
def test_the_mode_is_set_before_any_byte_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: int
) -> None:
    seen = _spy_on_writes(monkeypatch)
    temp_dirs: list[Path] = []
    real_replace = os.replace

    def replace(src: Path, dst: Path) -> None:
        temp_dirs.append(Path(src).parent)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "job.sh"
    write_atomic(target, "#!/usr/bin/env bash\n", mode)
    assert seen == [(mode, 0)]  # the mode, on an empty file
    assert temp_dirs == [tmp_path]  # same directory: the replace is a rename on one filesystem
    assert _mode(target) == mode


def test_without_a_mode_the_file_gets_what_open_gives(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        write_atomic(tmp_path / "progress.json", "{}\n")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "progress.json") == 0o640
