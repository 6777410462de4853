"""Tokenize once: who builds (runtime.data.once), how the others wait, and what the datasets cache
reuses or refuses to reuse between starts."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from runtime.config import ConfigError
from runtime.data import build_datasets
from runtime.data import once as once_mod
from runtime.data.once import Plan, make_plan, run_once

# --- who builds ---------------------------------------------------------------------------------


def test_every_rank_waits_for_rank0_when_all_see_its_files(tmp_path: Path):
    everyone = [("a", True), ("a", True), ("b", True), ("b", True)]
    plans = [make_plan(r, everyone, "t", tmp_path / ".xgen-once") for r in range(4)]
    assert [p.builder for p in plans] == [0, 0, 0, 0]
    assert plans[0].line.startswith(f"data: rank 0 tokenizes into {tmp_path}; the other 3 rank(s)")
    assert all(p.local_line is None for p in plans)


def test_a_node_that_cannot_see_rank0_builds_for_itself(tmp_path: Path):
    everyone = [("a", True), ("a", True), ("b", False), ("b", False), ("c", True)]
    plans = [make_plan(r, everyone, "t", tmp_path / ".xgen-once") for r in range(5)]
    assert [p.builder for p in plans] == [0, 0, 2, 2, 0]
    assert "is not shared with node(s) b:" in plans[0].line
    assert plans[2].local_line and "this node (b) does not see rank 0's files" in plans[2].local_line
    assert plans[3].local_line is None


# --- how the others wait (threads stand in for ranks) ---------------------------------------------


def _plan(tmp_path: Path, rank: int, builder: int = 0) -> Plan:
    markers = tmp_path / ".xgen-once"
    markers.mkdir(exist_ok=True)
    return Plan(rank, builder, "tok", markers, "", None)


def test_the_waiter_builds_only_after_the_builder_is_done(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(once_mod, "PROGRESS_S", 0.2)
    order: list[str] = []
    lines: list[str] = []

    def slow_build():
        time.sleep(1.0)
        order.append("builder")
        return "built"

    builder = threading.Thread(target=run_once, args=(_plan(tmp_path, 0), slow_build, print))
    builder.start()
    got = run_once(_plan(tmp_path, 1), lambda: order.append("waiter") or "read", lines.append)
    builder.join()
    assert got == "read" and order == ["builder", "waiter"]
    assert lines and lines[0].startswith("data: waiting for rank 0 to tokenize (")
    assert not (tmp_path / ".xgen-once" / "tok.building").exists()  # the heartbeat is gone when done


def test_a_config_error_on_the_builder_stops_the_waiter_with_the_same_line(tmp_path: Path):
    def bad_build():
        raise ConfigError("dataset", "no usable rows")

    with pytest.raises(ConfigError):
        run_once(_plan(tmp_path, 0), bad_build, print)
    with pytest.raises(ConfigError, match="^dataset: no usable rows$"):
        run_once(_plan(tmp_path, 1), lambda: "never", print)


def test_a_builder_that_died_is_noticed(tmp_path: Path, monkeypatch):
    """No done file and a heartbeat that stopped changing: the waiter stops after STALE_S."""
    monkeypatch.setattr(once_mod, "STALE_S", 0.5)
    plan = _plan(tmp_path, 1)
    (plan.markers / "tok.building").touch()
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="rank 0 stopped tokenizing: no sign of life"):
        run_once(plan, lambda: "never", print)
    assert time.monotonic() - start < 5


# --- the datasets cache between starts ----------------------------------------------------------


def _arrow_files(cache: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in cache.rglob("*.arrow")}


def test_same_inputs_hit_the_cache_and_any_change_misses(data_cfg, tiny_dir: Path, tmp_path: Path):
    """A second build with the same data, tokenizer, template and cutoff writes nothing (every map read
    from the cache); changing any of them writes new cache files. In-process here; across processes see
    test_data_loading.test_second_process_reuses_the_cache and the two-rank tests below."""
    from transformers import AutoTokenizer

    data = tmp_path / "data"
    data.mkdir()
    rows = json.loads((tiny_dir / "data" / "tiny_alpaca.json").read_text())
    (data / "a.json").write_text(json.dumps(rows))
    (data / "dataset_info.json").write_text(json.dumps({"a": {"file_name": "a.json"}}))
    cfg = data_cfg(dataset="a", dataset_dir=str(data), template="chatml", cutoff_len=64)
    cache = Path(cfg.cache_dir)

    def tok():
        return AutoTokenizer.from_pretrained(tiny_dir / "model")

    first = build_datasets(cfg, tok(), stage="sft").train
    files = _arrow_files(cache)
    again = build_datasets(cfg, tok(), stage="sft").train
    assert _arrow_files(cache) == files, "a second build with the same inputs wrote cache files"
    assert again._fingerprint == first._fingerprint and again["input_ids"] == first["input_ids"]

    def new_files(cfg, tokenizer) -> set[str]:
        before = _arrow_files(cache)
        build_datasets(cfg, tokenizer, stage="sft")
        return set(_arrow_files(cache)) - set(before)

    assert new_files(dataclasses.replace(cfg, cutoff_len=32), tok()), "cutoff_len change reused the cache"
    assert new_files(dataclasses.replace(cfg, template="qwen"), tok()), "template change reused the cache"
    changed = tok()
    changed.add_tokens(["brandnewword"])
    assert new_files(cfg, changed), "a tokenizer change reused the cache"
    rows[0]["output"] = "a changed reply"
    (data / "a.json").write_text(json.dumps(rows))
    assert new_files(cfg, tok()), "a data file change reused the cache"


# --- two ranks, for real (gloo) -----------------------------------------------------------------

HARNESS = r"""
import dataclasses, datetime, json, os, sys, time
from types import SimpleNamespace

import torch
import torch.distributed as dist
from transformers import AutoTokenizer

import runtime.data as data
from runtime.config import TrainConfig
from runtime.data import once
from runtime.stages.recipe import load_datasets

settings = json.loads(sys.argv[1])
rank = int(os.environ["RANK"])
once.PROGRESS_S = 1.0
DELAY = settings["delay"]
CALLS = {"n": 0}
tokenize_sft = data.tokenize_sft


def counted(batch, **kwargs):  # the same function on every rank, so the map fingerprints agree
    CALLS["n"] += 1
    if os.environ["RANK"] == "0" and CALLS["n"] == 1:
        time.sleep(DELAY)  # longer than the process group's timeout
    return tokenize_sft(batch, **kwargs)


data.tokenize_sft = counted
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))  # slow starts on a busy machine
cache = settings["cache"] + (f"-rank{rank}" if settings["separate"] else "")
cfg = dataclasses.replace(TrainConfig(), dataset="tiny_alpaca", dataset_dir=settings["data"], cache_dir=cache,
                          template="chatml", cutoff_len=64)
tokenizer = AutoTokenizer.from_pretrained(settings["model"])
dist.barrier()
# from here on a collective that waits longer than this fails the run
dist.distributed_c10d._set_pg_timeout(datetime.timedelta(seconds=settings["timeout"]))
splits = load_datasets(SimpleNamespace(cfg=cfg, args=None), tokenizer, stage="sft")
# reading the cache takes the waiter a few seconds: the next collective in a run (model, DDP) has ddp_timeout
dist.distributed_c10d._set_pg_timeout(datetime.timedelta(seconds=120))
total = torch.tensor([len(splits.train)])
dist.all_reduce(total)  # the process group still works after the long tokenization
print("RESULT " + json.dumps({"rank": rank, "calls": CALLS["n"], "rows": len(splits.train),
                              "total": int(total), "first": splits.train[0]["input_ids"]}), flush=True)
dist.barrier()
dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(tmp_path: Path, tiny_dir: Path, *, separate: bool, delay: float) -> list[tuple[dict, str]]:
    """Two processes as two nodes of one process each (LOCAL_RANK 0 on both), gloo, a 3 s timeout."""
    script = tmp_path / "harness.py"
    script.write_text(HARNESS)
    settings = {
        "data": str(tiny_dir / "data"),
        "model": str(tiny_dir / "model"),
        "cache": str(tmp_path / "cache"),
        "separate": separate,
        "delay": delay,
        "timeout": 3,
    }
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "HF_DATASETS_CACHE": str(tmp_path / f"hf-{rank}"),
            "TOKENIZERS_PARALLELISM": "false",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), json.dumps(settings)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    try:
        outputs = [p.communicate(timeout=900)[0] for p in procs]  # 2 shared cores: imports can take minutes
    finally:
        for p in procs:
            p.kill()
    results = []
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-3000:]
        line = next(x for x in out.splitlines() if x.startswith("RESULT "))
        results.append((json.loads(line.removeprefix("RESULT ")), out))
    return results


@pytest.mark.slow
def test_two_nodes_sharing_the_cache_tokenize_once_past_the_group_timeout(tiny_dir: Path, tmp_path: Path):
    """Rank 0 tokenizes for 8 s against a 3 s gloo timeout; rank 1 (another node, same folder) waits
    on a file with progress lines, then reads the cache: its tokenize function never runs."""
    (r0, out0), (r1, out1) = _two_nodes(tmp_path, tiny_dir, separate=False, delay=8.0)
    assert r0["calls"] > 0 and r1["calls"] == 0, (r0, r1)
    assert r0["rows"] == r1["rows"] > 100 and r0["first"] == r1["first"] and r0["total"] == 2 * r0["rows"]
    assert "the other 1 rank(s) wait and read it" in out0
    assert "data: waiting for rank 0 to tokenize (" in out1


@pytest.mark.slow
def test_two_nodes_that_do_not_share_the_cache_each_tokenize(tiny_dir: Path, tmp_path: Path):
    (r0, out0), (r1, out1) = _two_nodes(tmp_path, tiny_dir, separate=True, delay=0.0)
    assert r0["calls"] > 0 and r1["calls"] > 0
    assert r0["first"] == r1["first"]
    host = socket.gethostname()
    assert f"is not shared with node(s) {host}: each of them tokenizes for its own ranks" in out0
    assert f"this node ({host}) does not see rank 0's files" in out1
