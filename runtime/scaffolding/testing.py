"""Test-only hooks, read from the environment; each does nothing unless its variable is set.

  XGEN_FAULT_KILL_IN_SAVE=N        rank 0 SIGKILLs itself after every rank staged checkpoint-N, before
                                   publishing it (proves a save killed half-way is never resumed from).
  XGEN_FAULT_SIGNAL_AT_STEP=N[@R]  rank R (default 0) sends itself SIGUSR1 after step N: a deterministic
                                   preemption (R > 0: the signal reaches another rank first).
  XGEN_FAULT_KILL_AT_STEP=N[@R]    rank R (default 0) SIGKILLs itself after step N, on the first attempt
                                   only (TORCHELASTIC_RESTART_COUNT and SLURM_RESTART_COUNT 0): a worker
                                   that dies mid-run.
  XGEN_FAULT_STOP_AT_STEP=N[@R]    the same with SIGSTOP: a rank that hangs (the hang watchdog's proof).
  XGEN_TEST_ASSERT_ENV=NAME,NAME   every rank checks these variables are set and non-empty and prints
                                   their names only (the cluster test for cluster.pass_env uses it).
  XGEN_TEST_LOG_EXAMPLES=DIR       every rank appends, per micro-batch, the optimizer step it belongs to
                                   and a hash of each example's tokens to DIR/rank-<R>.jsonl (proves
                                   which examples a resumed run sees).

Standard library only: `runtime.cli` calls `check_test_assert_env` before anything heavy is imported.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
from pathlib import Path
from typing import Any

FAULT_KILL_IN_SAVE = "XGEN_FAULT_KILL_IN_SAVE"
FAULT_SIGNAL_AT_STEP = "XGEN_FAULT_SIGNAL_AT_STEP"
FAULT_KILL_AT_STEP = "XGEN_FAULT_KILL_AT_STEP"
FAULT_STOP_AT_STEP = "XGEN_FAULT_STOP_AT_STEP"
TEST_ASSERT_ENV = "XGEN_TEST_ASSERT_ENV"
TEST_LOG_EXAMPLES = "XGEN_TEST_LOG_EXAMPLES"


def _rank() -> int:
    return int(os.environ.get("RANK", 0))


def kill_in_save(step: int) -> None:
    """XGEN_FAULT_KILL_IN_SAVE: called between staging and publishing checkpoint-<step>."""
    if os.environ.get(FAULT_KILL_IN_SAVE) == str(step) and _rank() == 0:
        os.kill(os.getpid(), signal.SIGKILL)


def signal_at_step(step: int) -> None:
    """XGEN_FAULT_SIGNAL_AT_STEP: called at the end of every optimizer step."""
    at, _, rank = os.environ.get(FAULT_SIGNAL_AT_STEP, "").partition("@")
    if at == str(step) and _rank() == int(rank or 0):
        os.kill(os.getpid(), signal.SIGUSR1)


def kill_at_step(step: int) -> None:
    """XGEN_FAULT_KILL_AT_STEP / XGEN_FAULT_STOP_AT_STEP: called at the end of every optimizer step."""
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0" and os.environ.get(
        "SLURM_RESTART_COUNT", "0"
    ) in ("", "0")
    for variable, sig in ((FAULT_KILL_AT_STEP, signal.SIGKILL), (FAULT_STOP_AT_STEP, signal.SIGSTOP)):
        at, _, rank = os.environ.get(variable, "").partition("@")
        if at == str(step) and _rank() == int(rank or 0) and first_attempt:
            os.kill(os.getpid(), sig)


def check_test_assert_env() -> None:
    """XGEN_TEST_ASSERT_ENV: exit 3 on this rank when a listed variable is unset or empty."""
    names = [n for n in os.environ.get(TEST_ASSERT_ENV, "").split(",") if n]
    if not names:
        return
    rank = os.environ.get("RANK", "0")
    missing = [n for n in names if not os.environ.get(n)]
    said = f"NOT set: {', '.join(missing)}" if missing else f"set: {', '.join(names)}"
    # One write per line: the ranks of a node share the log, and print() may split a line in two writes.
    os.write(
        2 if missing else 1,
        f"xgen-runtime: test hook: rank {rank} on {socket.gethostname()}: {said}\n".encode(),
    )
    if missing:
        raise SystemExit(3)


def log_examples(step: int, inputs: Any) -> None:
    """XGEN_TEST_LOG_EXAMPLES: called with each micro-batch before its forward pass. `step` is the
    optimizer step being accumulated (1-based); an example is the tokens its attention mask keeps."""
    folder = os.environ.get(TEST_LOG_EXAMPLES)
    if not folder:
        return
    ids, mask = inputs["input_ids"], inputs.get("attention_mask")
    hashes = []
    for i in range(ids.shape[0]):
        row = ids[i] if mask is None else ids[i][mask[i].bool()]
        hashes.append(hashlib.sha1(row.cpu().numpy().tobytes()).hexdigest()[:12])
    with open(Path(folder) / f"rank-{_rank()}.jsonl", "a") as handle:
        handle.write(json.dumps({"step": step, "examples": hashes}) + "\n")
