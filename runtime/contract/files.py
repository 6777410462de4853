"""One way to write a file that readers may look at any time: whole or not at all.

The generator (`xgen -o`, `xgen submit`'s xgen-runs/) and the runtime (the resolved config, the progress
file, the tokenize-once markers) all write through `write_atomic`: a temp file in the target's own
directory (so `os.replace` is a rename on one filesystem), then `os.replace`. A reader sees the old file
or the new one, never half of either; a failure removes the temp file and leaves the old file as it was.

Standard library only: `xgen` imports this, and `xgen` never imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: str | os.PathLike[str], data: str | bytes, mode: int | None = None) -> Path:
    """Replace `path` with `data` (str: written as UTF-8; bytes: as they are), whole or not at all.

    mode: the file's permission bits, set on the temp file before any byte is written, so a file meant
    to be 0600 is never readable by others, not even half written. None: what a plain `open()` gives
    (0666 less the umask). Returns the path written.
    """
    target = Path(path)
    # With a mode the temp file starts owner-only (as tempfile.mkstemp's) and is then set to `mode`.
    fd, tmp = _create_beside(target, 0o600 if mode is not None else 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            if mode is not None:
                os.fchmod(handle.fileno(), mode)
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def _create_beside(target: Path, permissions: int) -> tuple[int, Path]:
    """A new, empty `.<name>.<random>.tmp` next to `target`, opened for writing (O_EXCL: never an existing
    file; 48 random bits, so a clash is not worth a retry)."""
    tmp = target.with_name(f".{target.name}.{os.urandom(6).hex()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    return os.open(tmp, flags, permissions), tmp


__all__ = ["write_atomic"]
