"""Which failure the restart line and the last line name: the cause, not the collateral ones."""

from __future__ import annotations

import signal

from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from runtime.commands.launch import _first, _message


def _failure(rank: int, exitcode: int, tmp_path) -> ProcessFailure:
    # No error file: what a worker killed by a signal leaves, and the agent's own timestamp.
    return ProcessFailure(
        local_rank=rank, pid=1000 + rank, exitcode=exitcode, error_file=str(tmp_path / "none")
    )


def _at(failure: ProcessFailure, timestamp: int) -> ProcessFailure:
    failure.timestamp = timestamp
    return failure


def test_a_killed_worker_comes_before_a_peer_that_raised_about_it(tmp_path):
    failures = {
        0: _at(_failure(0, 1, tmp_path), 100),  # raised "Connection closed by peer" first
        1: _at(_failure(1, -signal.SIGKILL, tmp_path), 105),  # the dead one, noticed later
    }
    rank, failure = _first(failures)
    assert rank == 1 and _message(failure) == "killed by SIGKILL"


def test_the_agents_own_sigterm_is_never_the_cause(tmp_path):
    # A node was lost: rank 1 here raised about its dead peer, and the agent stopped rank 0 with SIGTERM.
    failures = {
        0: _at(_failure(0, -signal.SIGTERM, tmp_path), 99),
        1: _at(_failure(1, 1, tmp_path), 100),
    }
    assert _first(failures)[0] == 1
    only_term = {0: _at(_failure(0, -signal.SIGTERM, tmp_path), 99)}
    assert _first(only_term)[0] == 0  # a SIGTERM from outside is still named when it is all there is
