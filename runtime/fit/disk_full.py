"""A save that runs out of space is one line, not a serializer traceback.

torch's serializer reports a full disk as `RuntimeError: basic_ios::clear: iostream error` or
`unexpected pos …`, safetensors as `SafetensorError: … StorageFull` / `os error 28`, plain writes as
`OSError: [Errno 28] No space left on device`. None of them says which directory or how much space. The
trainer calls `explain` on any exception raised while a checkpoint or the final model is written: when the
disk is the cause it returns the one line to print (output_dir, the free space, how much of the save had
been written, the last complete checkpoint), and the half-written staging folder is removed so the space
is free again. Checkpoints are published only once complete (runtime/fit/checkpoints.py), so the last
complete one still resumes.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from runtime.fit import checkpoints
from runtime.preflight.resources import human, nearest_existing

EXIT_DISK_FULL = 28  # ENOSPC's errno: a distinct status for scripts and `xgen status`
# After a failed write, less free space than this on the filesystem means the disk is why it failed.
NEARLY_FULL = 64 * 2**20
# What the libraries say when the OS said ENOSPC/EDQUOT but the OSError itself was not kept in the chain.
_MESSAGES = ("no space left", "storagefull", "os error 28", "disk quota")


class DiskFull(Exception):
    """Raised by the trainer in place of the serializer's error; str() is the one line to print."""


def _chain(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while err is not None and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    return seen


def _free(path: Path) -> int:
    return shutil.disk_usage(nearest_existing(path)).free


def _size(folder: Path) -> int:
    if not folder.exists():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def is_disk_full(err: BaseException, where: Path) -> bool:
    """ENOSPC/EDQUOT anywhere in the exception chain or in its messages, or any failure of a save that left
    less than NEARLY_FULL free (torch's `iostream error` says nothing more)."""
    chain = _chain(err)
    if any(isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) for e in chain):
        return True
    said = " ".join(str(e).lower() for e in chain)
    return any(m in said for m in _MESSAGES) or _free(where) < NEARLY_FULL


def explain(err: BaseException, output_dir: Path, written: Path | None, what: str) -> str | None:
    """The one line for a save that failed for space (None when space is not why). `written`: the staging
    folder the failed checkpoint was writing (its size is reported, then it is removed), or None."""
    if not is_disk_full(err, output_dir):
        return None
    wrote = ""
    if written is not None:
        wrote = f" after writing {human(_size(written))} of it"
        shutil.rmtree(written, ignore_errors=True)
    done = checkpoints.complete_checkpoints(output_dir)
    last = f"{done[-1]} is the last complete checkpoint and resumes" if done else "no checkpoint is complete"
    return (
        f"{what}: no space left in {output_dir} ({human(_free(output_dir))} free{wrote}); {last}. "
        "Free space there, set save_total_limit, or point output_dir at a larger filesystem, then rerun "
        "to continue"
    )
