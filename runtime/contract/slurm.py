"""The contract between the generated batch script and the runtime: pid files, status 75, progress file.

Two sides follow it: `templates/slurm.sh.j2` (the batch script) and the runtime (this module,
`runtime.fit.preemption.PreemptCallback`, `runtime.fit.progress`). Change one side only together with
the other.

1. The script exports `XGEN_PID_DIR`, a node-local directory per job (`$TMPDIR/xgen-$SLURM_JOB_ID`),
   emptied by each node at the start of every attempt. Without it the runtime writes no pid or status file.
2. Each runtime worker writes `$XGEN_PID_DIR/<host>-<rank>.pid` (its own pid) before loading anything.
   torchrun does not forward SIGUSR1 to its workers (pytorch #154849), so the script signals them by pid.
3. Preemption: Slurm sends SIGUSR1 to the batch shell (`--signal=B:USR1@N`, or
   `scancel --signal=USR1 --batch`); the script runs an overlapping `srun` that sends SIGUSR1 to every
   pid in `$XGEN_PID_DIR` on every node. The runtime treats SIGUSR1 and SIGTERM alike (`PREEMPT_SIGNALS`).
4. The runtime finishes the current step; all ranks agree (a MAX all-reduce, so one rank's signal is
   enough), write one checkpoint, and stop. Each worker then writes its own exit code to
   `$XGEN_PID_DIR/<host>-<rank>.status` (`EXIT_PREEMPTED` = 75, EX_TEMPFAIL: "run me again") and exits
   with it. Status files exist because torchrun reports every failed worker as exit 1.
5. The script requeues (`scontrol requeue`, while `SLURM_RESTART_COUNT < slurm.max_requeues`) only when it
   was signalled AND the node's exit status is 75 or every status file on the node says 75. Anything else
   is a failure and the job ends with the training's exit status.
6. Rank 0 keeps `output_dir/xgen_progress.json` (`PROGRESS_FILE`), replaced whole on each update: step,
   total, loss, tokens_per_s, eta_s, last_checkpoint, updated (UTC) and phase (`PHASES`: training, then
   done, or preempted when the run stopped for a requeue). `xgen status` (xgen/ops/status.py) reads it.

Standard library only: the protocol is plain files and exit codes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path
from typing import Any

from runtime.contract.files import write_atomic

PID_DIR_ENV = "XGEN_PID_DIR"
# Exit status after a preemption checkpoint (EX_TEMPFAIL): "run me again to continue".
EXIT_PREEMPTED = 75
# `runtime launch` (runtime/commands/launch.py) sets it, in the workers' environment, to the UNIX time of
# the failure it restarts them for; rank 0 then prints the restart cost at its first step.
RESTART_FAILED_AT = "XGEN_RESTART_FAILED_AT"
# The c10d rendezvous round the workers were started in: the same on every node, unlike
# TORCHELASTIC_RESTART_COUNT (a node restarted because another node failed does not count a restart).
RDZV_ROUND = "XGEN_RDZV_ROUND"
# Signals that mean "checkpoint and stop" (SIGTERM: what a hand-run node or a plain `scancel` sends).
PREEMPT_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

PROGRESS_FILE = "xgen_progress.json"
PHASES = ("training", "done", "preempted")


def _worker_file(suffix: str, rank: int) -> Path | None:
    """$XGEN_PID_DIR/<host>-<rank>.<suffix>, or None when the launcher did not ask for one."""
    pid_dir = os.environ.get(PID_DIR_ENV)
    if not pid_dir:
        return None
    path = Path(pid_dir) / f"{socket.gethostname()}-{rank}.{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _rank() -> int:
    return int(os.environ.get("RANK", 0))


def write_pid_file() -> Path | None:
    """<host>-<rank>.pid: the batch script signals workers directly (torchrun drops USR1)."""
    path = _worker_file("pid", _rank())
    if path is not None:
        path.write_text(f"{os.getpid()}\n")
    return path


def write_exit_status(code: int) -> Path | None:
    """<host>-<rank>.status: this worker's own exit code, since torchrun reports every failure as 1.
    The batch script requeues only when every worker on the node wrote 75 (checkpointed, stopped)."""
    path = _worker_file("status", _rank())
    if path is not None:
        path.write_text(f"{code}\n")
    return path


def write_progress(output_dir: str, data: dict[str, Any]) -> None:
    """output_dir/xgen_progress.json, replaced whole (a reader never sees half a file)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / PROGRESS_FILE, json.dumps(data, indent=2, sort_keys=True) + "\n")
