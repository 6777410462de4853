"""`python -m runtime launch <torchrun arguments>`: torch.distributed.run, with its endings said in one line.

torch.distributed.run (torchrun) is what starts the ranks of every generated script; this runs the very
same code (`torch.distributed.run.run`), with the same arguments (`--max-restarts`, `--rdzv-backend`, …),
and adds three things torchrun's own CLI lacks (why our own code: torchrun has no hook for them):

- a restart inside the allocation (`--max-restarts`, cluster.max_restarts) prints one line: which rank
  on which host failed and how (its error.json message, or the signal), the restart number out of the
  maximum, and the checkpoint the new workers resume from;
- SIGUSR1 sent to this launcher is passed to every worker (torchrun itself dies of it and leaves the
  workers running unsupervised); with SIGTERM, which torchrun already passes on, it is a planned stop;
- a planned stop (every failed worker exited 75 after its checkpoint: SIGUSR1/SIGTERM) ends with one
  line, `checkpoint-N saved in OUTPUT_DIR; rerun this script to continue`, and exit status 75, instead
  of torchrun's ChildFailedError traceback and exit 1;
- any other failure ends with one line naming the first failing rank, host, exit code and message, and
  the worker's own exit status (2 a config error, 28 a full disk, …), instead of that traceback.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from runtime.contract.slurm import EXIT_PREEMPTED, PROGRESS_FILE, RDZV_ROUND, RESTART_FAILED_AT

EXIT_WORKER_KILLED = 1  # a worker killed by a signal: torchrun's own status for it
# Exit codes whose one line the worker itself printed: a config refused (2), a full disk (28).
SAID_BY_THE_RUNTIME = (2, 28)


def _say(line: str, *, error: bool = False) -> None:
    stream = sys.stderr if error else sys.stdout
    print(f"xgen-runtime: {'error: ' if error else ''}{line}", file=stream, flush=True)


def _message(failure: Any) -> str:
    """The last line of a failure's error.json message, or the signal / exit code it died of."""
    message = failure.message
    if isinstance(message, dict):
        message = message.get("message", "")
    lines = [line for line in str(message or "").splitlines() if line.strip()]
    if failure.exitcode < 0:
        return f"killed by {failure.signal_name()}"
    if lines and not lines[-1].startswith("To enable traceback"):
        last = lines[-1].strip()
        return f"exit code {failure.exitcode}: {last if len(last) <= 160 else last[:157] + '...'}"
    return f"exit code {failure.exitcode}"


def _first(failures: dict[int, Any]) -> tuple[int, Any]:
    """The failure that caused the others: a worker killed by a signal (no error file; its timestamp is
    only when the agent noticed) before one that raised, then the earliest. A rank whose peer died
    raises too ("Connection closed by peer"), often before the agent notices the dead one. SIGTERM comes
    last: it is how the agent stops the rest of a node's workers once one of them failed (measured: a
    node lost, its peer node's rank 1 raised, and the agent's SIGTERM to rank 0 was named first)."""

    def cause(item: tuple[int, Any]) -> tuple[int, float]:
        code = item[1].exitcode
        return (2 if code == -signal.SIGTERM else 0 if code < 0 else 1, item[1].timestamp)

    return min(failures.items(), key=cause)


# A worker the agent stopped while the others were already exiting (SIGTERM, then SIGKILL after 30 s).
_TORN_DOWN = (-signal.SIGTERM, -signal.SIGKILL)


def _output_dir(args: Any) -> Path | None:
    """output_dir of the config the workers train (`-m runtime train CFG`), read torch-free."""
    return _output_dir_of(tuple(args.training_script_args))


@functools.cache  # parsed once per launch, however many restarts and endings ask
def _output_dir_of(argv: tuple[str, ...]) -> Path | None:
    if len(argv) < 2 or argv[0] != "train":
        return None
    try:
        from runtime.config import load_config

        return Path(load_config(argv[1]).output_dir)
    except Exception:  # a config the workers themselves refused: they said why
        return None


def _newest_checkpoint(out: Path | None) -> str:
    if out is None:
        return "the newest complete checkpoint"
    from runtime.fit.checkpoints import complete_checkpoints

    found = complete_checkpoints(out)
    return str(found[-1]) if found else f"the start (no complete checkpoint in {out} yet)"


_AGENT: list[Any] = []  # the elastic agent of this process, once it monitors its workers


def _forward_usr1(signum: int, frame: Any) -> None:
    """SIGUSR1 to this launcher reaches every worker (torchrun would die of it, leaving the workers
    running unsupervised): each checkpoints at the end of its step and exits 75, a planned stop."""
    for agent in _AGENT:
        for worker in agent._worker_group.workers:
            if worker.id is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(worker.id), signal.SIGUSR1)


def _announce_restarts(args: Any) -> None:
    """Wrap the elastic agent's restart so that each one is said in one line (torchrun logs it at INFO
    level, without the failure)."""
    from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent

    if getattr(LocalElasticAgent, "_xgen_announces", False):
        return
    monitor, restart = LocalElasticAgent._monitor_workers, LocalElasticAgent._restart_workers
    rendezvous = LocalElasticAgent._rendezvous

    def met(self: Any, worker_group: Any) -> None:
        # c10d: the workers get the round every node just met in (the agent's environment is theirs), so
        # that all of them create their process group under the same store prefix.
        rendezvous(self, worker_group)
        holder = getattr(worker_group.spec.rdzv_handler, "_state_holder", None)
        if holder is not None:
            os.environ[RDZV_ROUND] = str(holder.state.round)

    def monitored(self: Any, worker_group: Any) -> Any:
        _AGENT[:] = [self]
        self._xgen_last = monitor(self, worker_group)
        return self._xgen_last

    def restarted(self: Any, worker_group: Any) -> None:
        result = getattr(self, "_xgen_last", None)
        spec = worker_group.spec
        number = spec.max_restarts - self._remaining_restarts
        failures = getattr(result, "failures", None) or {}
        failed_at = time.time()
        if failures:
            rank, failure = _first(failures)
            what = f"rank {rank} on {socket.gethostname()} failed ({_message(failure)})"
            failed_at = min(failed_at, float(failure.timestamp))
            said = f"restart {number}/{spec.max_restarts}: {what}"
        else:  # c10d: not counted against this node's max_restarts
            said = (
                f"restart: another node's workers failed or a node joined ({socket.gethostname()} restarts "
                f"with them; {number}/{spec.max_restarts} of its own restarts used)"
            )
        _say(f"{said}; the workers restart and resume from {_newest_checkpoint(_output_dir(args))}")
        os.environ[RESTART_FAILED_AT] = str(failed_at)  # the new workers inherit it
        restart(self, worker_group)

    LocalElasticAgent._monitor_workers = monitored  # type: ignore[method-assign]
    LocalElasticAgent._restart_workers = restarted  # type: ignore[method-assign]
    LocalElasticAgent._rendezvous = met  # type: ignore[method-assign]
    LocalElasticAgent._xgen_announces = True  # type: ignore[attr-defined]


def _progress(args: Any) -> dict[str, Any]:
    out = _output_dir(args)
    path = out / PROGRESS_FILE if out else None
    try:
        return json.loads(path.read_text()) if path is not None and path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _written_since(args: Any, started: float) -> bool:
    """The progress file was written by this launch's workers, not left by an earlier attempt."""
    out = _output_dir(args)
    try:
        return out is not None and (out / PROGRESS_FILE).stat().st_mtime >= started
    except OSError:
        return False


def _planned_stop(args: Any) -> int:
    """Every worker checkpointed and stopped (exit 75): one line, and 75 for the script."""
    checkpoint = _progress(args).get("last_checkpoint")
    where = f"{Path(checkpoint).name} saved in {_output_dir(args)}" if checkpoint else "checkpoint saved"
    _say(f"{where}; rerun this script to continue")
    return EXIT_PREEMPTED


def launch(argv: list[str]) -> int:
    """Run torch.distributed.run with `argv`; the exit status of the workers, said in one line."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = torchrun.parse_args(argv)
    _announce_restarts(args)
    signal.signal(signal.SIGUSR1, _forward_usr1)
    started = time.time()
    try:
        torchrun.run(args)
    except SignalException as err:
        # This launcher was signalled (an operator, a scheduler): it passed the signal to its workers,
        # which checkpoint and stop (exit 75) when they can.
        progress = _progress(args)
        if progress.get("phase") == "preempted" and _written_since(args, started):
            return _planned_stop(args)
        _say(f"stopped by {err.sigval.name}; no checkpoint was written for this stop", error=True)
        return 128 + int(err.sigval)
    except ChildFailedError as err:
        failures = err.failures
        codes = [f.exitcode for f in failures.values()]
        # Every worker checkpointed and exited 75, or some did and the agent stopped the rest while they
        # were exiting too (the progress file says so, written by this launch).
        stopped = EXIT_PREEMPTED in codes and all(c == EXIT_PREEMPTED or c in _TORN_DOWN for c in codes)
        if stopped and (all(c == EXIT_PREEMPTED for c in codes) or _written_since(args, started)):
            return _planned_stop(args)
        rank, failure = _first(failures)
        if failure.exitcode in SAID_BY_THE_RUNTIME:
            return failure.exitcode  # the worker printed its own one line
        restarts = f" after {args.max_restarts} restart(s)" if args.max_restarts else ""
        _say(
            f"rank {rank} on {socket.gethostname()} failed{restarts} ({_message(failure)}); "
            f"its log and error.json: {args.log_dir or 'the console above'}",
            error=True,
        )
        return failure.exitcode if failure.exitcode > 0 else EXIT_WORKER_KILLED
    return 0
