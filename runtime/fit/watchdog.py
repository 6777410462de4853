"""A hung rank is caught: no optimizer step for `XGEN_HANG_TIMEOUT` seconds (cluster.hang_timeout) ends
the workers with one line naming the stuck rank(s) and the stacks of every rank that can still write them.

Why our own code: a collective that never completes waits for `ddp_timeout` (LLaMA-Factory's examples set
5.7 years), and NCCL's own watchdog (TORCH_NCCL_ASYNC_ERROR_HANDLING) covers NCCL only, not gloo, HCCL or
a rank stuck outside a collective. This one is device-neutral and needs no process group:

- every rank's heartbeat thread writes `output_dir/.xgen-heartbeat/rank-<R>.json` (step, phase, time)
  every HEARTBEAT_S seconds; output_dir is shared by every node;
- a rank whose own last step is older than the timeout (checkpoint saves and evaluations pause the clock:
  they report their own progress) reads every heartbeat: a rank whose heartbeat stopped (a stopped or
  dead process) or, when all still beat, the ranks at the lowest step are the stuck ones;
- it writes its Python stacks (faulthandler, all threads) to `<run dir>/stacks/<host>-rank<R>.txt`; a
  stuck rank cannot (a stopped process runs no code, a blocked one may never return to Python), so the
  lowest live rank on its host reads its stacks from outside with py-spy when installed (`py-spy dump
  --nonblocking`: reads memory, needs ptrace permission: root, or kernel.yama.ptrace_scope 0);
- the lowest rank that is not stuck prints one line naming the stuck ranks, and every rank exits
  EXIT_HUNG, which torch.distributed.run counts as a failure: with cluster.max_restarts the workers
  restart and resume.
"""

from __future__ import annotations

import faulthandler
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from runtime.contract.files import write_atomic

HANG_TIMEOUT = "XGEN_HANG_TIMEOUT"  # seconds; the scripts export cluster.hang_timeout
# Without the variable (a bare `xgen-runtime train`, the test suite) no watchdog thread runs: the generated
# scripts always export cluster.hang_timeout (default 1800). Measured reason to keep threads out of runs
# that did not ask: since the watchdog arrived, 2 of 3 fresh-clone suite runs had a ZeRO-3 rank abort at
# exit (SIGABRT, as in trainer-cpu-findings E1), the one before it none; not reproduced alone (6 runs).
DEFAULT_HANG_TIMEOUT = 0.0
HEARTBEAT_S = 5.0
EXIT_HUNG = 124  # timeout(1)'s status for "ran out of time"
HEARTBEATS = ".xgen-heartbeat"
PY_SPY_TIMEOUT_S = 20.0  # the agent SIGKILLs a node's workers 30 s after the first of them exits


def outside_stacks(pid: int) -> str | None:
    """Another process's Python stacks, read by py-spy; None without py-spy, or when it could not read
    them (no ptrace permission, the process is gone)."""
    beside = Path(sys.executable).parent / "py-spy"  # a venv's bin/ need not be on PATH
    tool = str(beside) if beside.is_file() else shutil.which("py-spy")
    if tool is None:
        return None
    try:
        done = subprocess.run(
            [tool, "dump", "--pid", str(pid), "--nonblocking"],
            capture_output=True,
            text=True,
            timeout=PY_SPY_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 and done.stdout.strip() else None


def hang_timeout() -> float:
    """Seconds without a step before the watchdog acts; 0 turns it off."""
    value = os.environ.get(HANG_TIMEOUT, "")
    try:
        return float(value) if value else DEFAULT_HANG_TIMEOUT
    except ValueError:
        return DEFAULT_HANG_TIMEOUT


def stuck_ranks(beats: dict[int, dict[str, Any]], world_size: int, now: float) -> tuple[list[int], str]:
    """The stuck ranks and why, from every rank's last heartbeat (rank -> {step, time, host})."""
    stale = [r for r in range(world_size) if r not in beats or now - beats[r]["time"] > 3 * HEARTBEAT_S]
    if stale:
        return stale, "no heartbeat"
    lowest = min(b["step"] for b in beats.values())
    if all(b["step"] == lowest for b in beats.values()):
        return sorted(beats), "every rank waits at the same step"
    return sorted(r for r, b in beats.items() if b["step"] == lowest), f"behind, at step {lowest}"


class Watchdog:
    """Started at the first training step (before it, loading and tokenizing report their own progress)."""

    def __init__(self, output_dir: str, run_dir: str | None, rank: int, world_size: int) -> None:
        self.timeout = hang_timeout()
        self.folder = Path(output_dir) / HEARTBEATS
        self.stacks = Path(run_dir or output_dir) / "stacks"
        self.rank, self.world_size = rank, world_size
        self.host = socket.gethostname()
        self.step = 0
        self.phase = "training"
        self.last_progress = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.timeout <= 0 or self._thread is not None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self._beat()  # replaces this rank's heartbeat from an earlier attempt at once
        self._thread = threading.Thread(target=self._run, name="xgen-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop and join the thread: no thread of ours may still run while the interpreter shuts down."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * HEARTBEAT_S)
            self._thread = None

    def progress(self, step: int | None = None, phase: str = "training") -> None:
        """A step ended, or a long phase (saving, evaluating) began or ended: the clock restarts."""
        if step is not None:
            self.step = step
        self.phase = phase
        self.last_progress = time.monotonic()

    def _beat(self) -> None:
        beat = {"step": self.step, "phase": self.phase, "time": time.time(), "host": self.host}
        beat["pid"] = os.getpid()
        write_atomic(self.folder / f"rank-{self.rank}.json", json.dumps(beat))

    def _beats(self) -> dict[int, dict[str, Any]]:
        found = {}
        for path in self.folder.glob("rank-*.json"):
            try:
                found[int(path.stem.split("-")[1])] = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
        return found

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._beat()
            except OSError:
                continue
            busy = self.phase != "training"  # a save or an evaluation reports its own progress
            if busy or time.monotonic() - self.last_progress < self.timeout:
                continue
            self._act()

    def _act(self) -> None:
        beats = self._beats()
        stuck, why = stuck_ranks(beats, self.world_size, time.time())
        self.stacks.mkdir(parents=True, exist_ok=True)
        path = self.stacks / f"{self.host}-rank{self.rank}.txt"
        with open(path, "w") as handle:
            handle.write(
                f"rank {self.rank} on {self.host}, step {self.step}, no step for {self.timeout:.0f} s\n"
            )
            faulthandler.dump_traceback(file=handle, all_threads=True)
        live = [r for r in range(self.world_size) if r not in stuck] or stuck
        here = [r for r in live if beats.get(r, {}).get("host") == self.host]
        if here and self.rank == min(here):
            self._read_stuck_stacks(stuck, beats)
        if self.rank == min(live):
            named = ", ".join(f"rank {r} on {beats.get(r, {}).get('host', '?')}" for r in stuck)
            print(
                f"xgen-runtime: error: hang: no optimizer step for {self.timeout:.0f} s after step "
                f"{self.step}; stuck: {named} ({why}); Python stacks of the ranks that could write them "
                f"in {self.stacks}",
                file=sys.stderr,
                flush=True,
            )
        os._exit(EXIT_HUNG)

    def _read_stuck_stacks(self, stuck: list[int], beats: dict[int, dict[str, Any]]) -> None:
        """The stacks of the stuck ranks on this host, read from outside (py-spy)."""
        for rank in stuck:
            beat = beats.get(rank, {})
            if rank == self.rank or beat.get("host") != self.host or not beat.get("pid"):
                continue
            text = outside_stacks(int(beat["pid"]))
            if text is None:
                continue
            path = self.stacks / f"{self.host}-rank{rank}.txt"
            said = (
                f"rank {rank} on {self.host}, stuck (last heartbeat: step {beat.get('step')}), read by py-spy"
            )
            path.write_text(f"{said} from rank {self.rank}\n{text}")


_ACTIVE: list[Watchdog] = []  # the one started in this process, for phase() below


def phase(name: str) -> None:
    """A long phase begins ("saving", "evaluating") or ends ("training"): the clock pauses meanwhile."""
    for dog in _ACTIVE:
        dog.progress(phase=name)


def callback(output_dir: str, rank: int, world_size: int) -> Any:
    """The TrainerCallback that arms the watchdog at the first step and feeds it every step."""
    from transformers import TrainerCallback

    class WatchdogCallback(TrainerCallback):
        def __init__(self) -> None:
            self.dog = Watchdog(output_dir, os.environ.get("XGEN_RUN_DIR"), rank, world_size)

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            self.dog.progress(step=state.global_step)
            self.dog.start()
            _ACTIVE[:] = [self.dog]

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            self.dog.progress(step=state.global_step)

        def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
            self.dog.stop()
            _ACTIVE.clear()

    return WatchdogCallback()
