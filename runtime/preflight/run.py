"""The order of the checks, the deadline and the exit status (`python -m runtime.preflight`)."""

from __future__ import annotations

import dataclasses
import os
import secrets
import sys
import threading
import time
from typing import Any

from runtime.preflight import (
    EXIT_PREFLIGHT,
    devices,
    exchange,
    inputs,
    memory,
    network,
    resources,
    ssh,
    versions,
)
from runtime.preflight.findings import Finding, errors
from runtime.preflight.settings import Settings, from_args

EXIT_CONFIG = 2


def say(findings: list[Finding]) -> None:
    for f in findings:
        print(f.line(), file=sys.stderr, flush=True)


def local_checks(
    s: Settings, cfg: Any, raw_train: dict[str, Any]
) -> tuple[list[Finding], dict[str, Any], int]:
    """Everything this node can check alone. (findings, facts for the master, number of checks run)."""
    found: list[Finding] = []
    found += network.check_names(s)
    found += network.check_nic(s)
    found += network.check_ib(s)
    found += resources.check_shm(s)
    found += devices.check_cann(s)  # CANN's set_env.sh was sourced before this ran (xgen_cann_env)
    found += devices.check_devices(s)
    found += memory.check_memory(s, cfg)  # the plan against the memory the devices report (xgen plan)
    found += network.check_hccl_ports(s)
    items = inputs.inputs(cfg, raw_train, s.workdir)
    file_findings, files = inputs.check_local(s, items)
    found += file_findings
    out_dir = inputs.output_dir(cfg, s.workdir)
    need, detail = resources.run_bytes(cfg, inputs.model_bytes(files))
    found += resources.check_disk(s, out_dir, need, detail)
    facts = {
        "host": s.host,
        "node_rank": s.node_rank,
        "versions": versions.collect(),
        "inputs": files,
        "output_dir": str(out_dir),
        "shared_needed": inputs.needs_shared_output(cfg),
    }
    return found, facts, 11 + len(items)


def _bounded(fn, seconds: float):
    """Run fn in a thread; (result, None) or (None, "did not finish"): a hung filesystem cannot hang us."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except Exception as err:  # a bug in a check must not hide the others' lines
            box["error"] = f"{type(err).__name__}: {err}"

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(max(seconds, 0.1))
    if thread.is_alive():
        return None, f"did not finish within {seconds:.0f} s (a hung filesystem or tool?)"
    return box.get("value"), box.get("error")


def _load(s: Settings) -> tuple[Any, dict[str, Any]]:
    from runtime.config import load_config
    from runtime.config.files import read_yaml

    raw = read_yaml(s.config)
    cfg = load_config(s.config)
    train = raw.get("train") if isinstance(raw.get("train"), dict) else raw
    return cfg, dict(train)


def preflight(s: Settings) -> int:
    start = time.monotonic()
    from runtime.config import ConfigError

    s = dataclasses.replace(s, config=os.path.abspath(s.config), workdir=os.path.abspath(s.workdir))
    try:
        os.chdir(s.workdir)
    except OSError as err:
        say(
            [
                Finding(
                    s.host, "job.workdir", f"cannot cd to {s.workdir} here: {err.strerror}", inputs.SHARED_FIX
                )
            ]
        )
        return EXIT_PREFLIGHT
    try:
        cfg, raw_train = _load(s)
    except ConfigError as err:
        if err.message.startswith("file not found: "):  # a DeepSpeed/FSDP JSON missing on this node
            path, _, hint = err.message.removeprefix("file not found: ").partition("; ")
            fix = inputs.SHARED_FIX + (f"; {hint}" if hint else "")
            say([Finding(s.host, err.key, f"{os.path.join(s.workdir, path)} not found here", fix)])
            return EXIT_PREFLIGHT
        say([Finding(s.host, err.key, err.message, "fix the config")])
        return EXIT_CONFIG
    result, crash = _bounded(lambda: local_checks(s, cfg, raw_train), s.timeout / 2)
    if result is None:
        found = [Finding(s.host, "preflight", f"local checks {crash}", "see docs/preflight.md")]
        facts: dict[str, Any] = {
            "host": s.host,
            "node_rank": s.node_rank,
            "versions": versions.collect(),
            "inputs": {},
        }
        checks = 0
    else:
        found, facts, checks = result
    say(found)
    mine = len(errors(found))
    facts["errors"] = mine
    total = mine
    if s.nnodes > 1 and s.master_port:
        window_end = start + s.exchange_window
        if s.node_rank == 0:
            master = exchange.Master(s)
            if master.start():
                master.collect(window_end)
                master.compare(facts)
            say(master.findings)
            total = master.finish(mine) if master.sock is not None else mine + len(errors(master.findings))
        else:
            out_dir = inputs.output_dir(cfg, s.workdir)
            probe, why = inputs.write_probe(out_dir, s.host, secrets.token_hex(6))
            if why:
                say(
                    [
                        Finding(
                            s.host,
                            "train.output_dir",
                            f"cannot write in {out_dir} here: {why}",
                            "fix its permissions",
                        )
                    ]
                )
                mine += 1
            facts["probe"] = probe
            facts["errors"] = mine
            try:
                theirs, total = exchange.report(s, facts, window_end, start + s.timeout + 10)
            finally:
                inputs.remove_probe(out_dir, probe)
            say(theirs)
            total = max(total, mine + len(errors(theirs)))
        checks += 5
    took = time.monotonic() - start
    if total:
        elsewhere = total - mine
        where = f", {elsewhere} on other nodes" if elsewhere > 0 else ""
        print(
            f"xgen: preflight: {s.host}: stopping before training: {mine} problem(s) here{where} "
            f"(exit {EXIT_PREFLIGHT})",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_PREFLIGHT
    print(f"xgen: preflight: {s.host}: ok ({checks} checks, {took:.1f} s)", file=sys.stderr, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    s = from_args(args)
    if s.ssh_hosts:
        failed = ssh.check_ssh(s)
        if failed:
            say(failed)
            return EXIT_PREFLIGHT
        return ssh.run_on_hosts(s, args)
    return preflight(s)
