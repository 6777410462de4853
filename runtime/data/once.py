"""Tokenize once per run, however many ranks and nodes, with no collective waiting on it.

The work itself is cached by `datasets` (every map is fingerprinted; a later process with the same data
file, tokenizer, template and keys reads the cache files instead of mapping) or saved to
`tokenized_path`. What this module decides is WHO builds and how the others wait:

* global rank 0 writes a probe file into the cache root (cache_dir, the HF datasets cache, or
  tokenized_path's folder) and every rank says whether it sees it (two small collectives, before any
  work). Ranks that see it wait for rank 0; on a node that does not see it (the folder is not shared),
  that node's first rank builds for its node. One line says which.
* the builders tokenize; the others poll for a `done` file, printing a progress line every
  PROGRESS_S, and then build too (a cache hit: nothing is tokenized again). No barrier, so a
  tokenization longer than the process-group timeout (`ddp_timeout`) cannot fail the run.
* a builder that fails writes its error into the `done` file (the waiters stop with it); one that dies
  stops touching its heartbeat file, and the waiters stop after STALE_S without a sign of life.
* a waiter builds with `after_builder()` true: a hub dataset is then read from what the builder
  downloaded (runtime.data.hub), with no request to the hub.

Why our own files and not `TrainingArguments.main_process_first`: that waits in a process-group barrier,
whose timeout a long tokenization exceeds, and its `local=True` makes every node tokenize.
"""

from __future__ import annotations

import contextvars
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from runtime.config import ConfigError, TrainConfig
from runtime.contract.files import write_atomic

T = TypeVar("T")

MARKERS = ".xgen-once"  # folder inside the cache root
PROGRESS_S = 30.0  # a waiting node prints a line this often
HEARTBEAT_S = 10.0  # a builder touches its heartbeat file this often
STALE_S = 600.0  # a waiter gives up when the builder shows no sign of life this long
POLL_S = 0.5
KEEP_MARKERS_S = 86400.0  # done files of earlier runs older than this are removed by the next builder
_AFTER_BUILDER = contextvars.ContextVar("xgen_after_builder", default=False)


def cache_root(cfg: TrainConfig) -> Path:
    """Where the tokenized rows end up: tokenized_path's folder, cache_dir, or the HF datasets cache."""
    if cfg.tokenized_path:
        return Path(cfg.tokenized_path).resolve().parent
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    import datasets.config

    return Path(datasets.config.HF_DATASETS_CACHE)


@dataclass
class Plan:
    """Who builds for this rank: `builder` is its rank, `rank0_visible` whether this rank sees rank 0's
    files; `line` is what rank 0 says about the whole world."""

    rank: int
    builder: int
    token: str
    markers: Path
    line: str
    local_line: str | None  # said by a node's builder when that node cannot see rank 0's files

    @property
    def builds(self) -> bool:
        return self.rank == self.builder


def plan_builders(root: Path) -> Plan:
    """Two small collectives (broadcast a token, gather who sees rank 0's probe) over the process group."""
    import torch.distributed as dist

    rank = dist.get_rank()
    markers = root / MARKERS
    markers.mkdir(parents=True, exist_ok=True)
    token = [uuid.uuid4().hex if rank == 0 else None]
    if rank == 0:
        _heartbeat_file(markers, token[0]).touch()
    dist.broadcast_object_list(token, src=0)
    host = socket.gethostname()
    sees = _heartbeat_file(markers, token[0]).exists()
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, (host, sees))
    return make_plan(rank, everyone, token[0], markers)


def make_plan(rank: int, everyone: list[tuple[str, bool]], token: str, markers: Path) -> Plan:
    """Builder of each rank: 0 for ranks that see rank 0's probe; on other hosts the host's lowest rank."""
    host, sees = everyone[rank]
    blind = sorted({h for h, s in everyone if not s})
    builder = 0 if sees else min(r for r, (h, s) in enumerate(everyone) if h == host and not s)
    root = markers.parent
    if not blind:
        line = f"data: rank 0 tokenizes into {root}; the other {len(everyone) - 1} rank(s) wait and read it"
    else:
        line = (
            f"data: {root} is not shared with node(s) {', '.join(blind)}: each of them tokenizes for its own "
            "ranks (set cache_dir, or tokenized_path, to a folder every node sees to tokenize once)"
        )
    local_line = None
    if builder == rank and rank != 0:
        local_line = f"data: this node ({host}) does not see rank 0's files in {root}; tokenizing here"
    return Plan(rank, builder, token, markers, line, local_line)


def run_once(plan: Plan, build: Callable[[], T], say: Callable[[str], None]) -> T:
    """The builder runs `build` and marks it done; the others wait for that mark, then run `build`
    themselves (which reads what the builder left: the datasets cache or tokenized_path)."""
    if plan.builds:
        return _build(plan, build)
    _wait(plan, say)
    token = _AFTER_BUILDER.set(True)
    try:
        return build()
    finally:
        _AFTER_BUILDER.reset(token)


def after_builder() -> bool:
    """True while a waiter builds after its builder finished (it reads what the builder left)."""
    return _AFTER_BUILDER.get()


def _heartbeat_file(markers: Path, token: str) -> Path:
    return markers / f"{token}.building"


def _done_file(markers: Path, token: str) -> Path:
    return markers / f"{token}.done"


def _build(plan: Plan, build: Callable[[], T]) -> T:
    beat = _heartbeat_file(plan.markers, plan.token)
    beat.touch()
    stop = threading.Event()
    thread = threading.Thread(target=_beat, args=(beat, stop), daemon=True)
    thread.start()
    outcome: dict[str, Any] = {"ok": True, "rank": plan.rank, "host": socket.gethostname()}
    try:
        return build()
    except ConfigError as exc:
        outcome.update(ok=False, key=exc.key, message=exc.message)
        raise
    except BaseException as exc:
        outcome.update(ok=False, key=None, message=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        stop.set()
        thread.join()
        write_atomic(_done_file(plan.markers, plan.token), json.dumps(outcome))
        beat.unlink(missing_ok=True)
        _remove_old_markers(plan.markers)


def _beat(path: Path, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        try:
            path.touch()
        except OSError:  # a full or flaky disk must not kill the build; waiters then judge it stale
            pass


def _wait(plan: Plan, say: Callable[[str], None]) -> None:
    done = _done_file(plan.markers, plan.token)
    beat = _heartbeat_file(plan.markers, plan.token)
    start = last_change = last_line = time.monotonic()
    last_sign: Any = None
    while not done.exists():
        now = time.monotonic()
        sign = _mtime(beat)
        if sign != last_sign:  # compared with itself, not with this node's clock: clocks may differ
            last_sign, last_change = sign, now
        elif now - last_change > STALE_S:
            raise RuntimeError(
                f"rank {plan.builder} stopped tokenizing: no sign of life in {beat} for {STALE_S:.0f} s; "
                f"see rank {plan.builder}'s log"
            )
        if now - last_line >= PROGRESS_S:
            say(f"data: waiting for rank {plan.builder} to tokenize ({_elapsed(now - start)})")
            last_line = now
        time.sleep(POLL_S)
    outcome = json.loads(done.read_text())
    if not outcome["ok"]:
        if outcome.get("key"):
            raise ConfigError(outcome["key"], outcome["message"])
        raise RuntimeError(f"rank {plan.builder} failed while tokenizing: {outcome['message']}")


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def _remove_old_markers(markers: Path) -> None:
    cutoff = time.time() - KEEP_MARKERS_S
    for path in markers.glob("*.done"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
        except OSError:
            pass
