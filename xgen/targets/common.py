"""The context every template shares: the config's sections plus the values derived from them."""

from __future__ import annotations

import os
import time
from typing import Any

from xgen import __version__
from xgen.config import Config
from xgen.errors import XgenError

DEFAULT_PORT = 29500


def nic_checks(nic: str | None) -> list[tuple[str, str]]:
    """(name, exact|prefix) per interface NCCL will look for; `^` exclusion lists are not checked."""
    if not nic or nic.startswith("^"):
        return []
    exact = nic.startswith("=")
    return [(name, "exact" if exact else "prefix") for name in nic.lstrip("=").split(",")]


def gloo_nic(nic: str | None) -> str | None:
    """gloo takes one exact interface name (no prefix matching, no lists, no exclusions)."""
    if not nic or nic.startswith("^") or "," in nic:
        return None
    return nic.lstrip("=")


def master_addr(config: Config) -> str | None:
    """cluster.master_addr, else the first host; None leaves it to the environment/Slurm."""
    if config.cluster.master_addr:
        return config.cluster.master_addr
    if config.host_list:
        return config.host_list[0].name
    if config.cluster.nodes == 1:
        return "127.0.0.1"
    return None


def master_port(config: Config) -> int | None:
    """cluster.master_port, else 29500 across nodes; None on one node: the script picks a free port at launch
    (so two runs on one machine never collide). `xgen slurm` derives its own from the job id."""
    if config.cluster.master_port:
        return config.cluster.master_port
    return None if config.cluster.nodes == 1 else DEFAULT_PORT


def generated_at() -> str:
    """UTC generation time for the header; SOURCE_DATE_EPOCH (reproducible-builds.org) fixes it."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    stamp = int(epoch) if epoch and epoch.isdigit() else int(time.time())
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


def frozen_config(config: Config) -> dict[str, str]:
    """The config text embedded in the script (a quoted heredoc: no expansion) and its delimiter."""
    text = config.text if config.text.endswith("\n") else config.text + "\n"
    eof = f"XGEN_FROZEN_CONFIG_{config.sha256[:16]}"
    if eof in text.splitlines():  # practically impossible: the delimiter names the text's own hash
        raise XgenError(str(config.source), f"a line reads {eof}, which ends the embedded copy; remove it")
    return {"config_text": text, "config_eof": eof, "config_sha256": config.sha256}


def context(config: Config, target: str, regen_args: str = "") -> dict[str, Any]:
    if config.sweep and target != "slurm" and not target.startswith("doctor"):
        raise XgenError(
            "sweep",
            f"a sweep is one Slurm job array: render it with xgen slurm or xgen submit, not xgen {target}; "
            "or remove sweep: and set the values in train:",
        )
    c = config.cluster
    secret = set(c.written_secrets)
    return {
        **frozen_config(config),
        "xgen_version": __version__,
        "generated_at": generated_at(),
        "target": target,
        "regen_args": regen_args,
        "job": config.job,
        "cluster": config.cluster,
        "slurm": config.slurm,
        "python": config.python,
        "config_path": str(config.source),
        "workdir": config.workdir,
        "pinned": config.pinned_devices,
        "nic_checks": nic_checks(config.cluster.nic),
        "gloo_nic": gloo_nic(config.cluster.nic),
        "master_addr": master_addr(config),
        "master_port": master_port(config),
        # cluster.env split: plain values are exported and shown; credential values only exported.
        "plain_env": {k: v for k, v in c.env.items() if k not in secret},
        "secret_env": {k: v for k, v in c.env.items() if k in secret},
        "hidden_env": list(c.hidden_env),
        # What the launcher starts on every rank: the trainer, or `xgen doctor`'s bandwidth test.
        "launch_module": "runtime train",
        "ssh_hosts": [],  # hostfile launchers: the preflight runs on these over ssh
        # Node names by rank, so the preflight can name a node that never reported (Slurm: at run time).
        "host_names": ",".join(h.name for h in config.host_list),
    }
