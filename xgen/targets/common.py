"""The context every template shares: the config's sections plus the values derived from them."""

from __future__ import annotations

import hashlib
import os
import re
import textwrap
import time
from typing import Any

from xgen import __version__
from xgen.checks import container_mounts
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


# --- containers ---
# Which generators cannot wrap their launch in which container runtime, and why.
_CONTAINER_REFUSED = {
    ("pyxis", "shell"): "pyxis is a Slurm (srun) plugin and this script runs without srun; use runtime: "
    "apptainer, or xgen slurm",
    ("pyxis", "deepspeed"): "pyxis is a Slurm (srun) plugin and DeepSpeed's launcher starts ranks over ssh; "
    "use xgen slurm",
    ("apptainer", "deepspeed"): "DeepSpeed's launcher starts every host's ranks over ssh, outside any "
    "container; use xgen slurm or xgen shell, or run the xgen deepspeed script inside the image",
    ("pyxis", "accelerate"): "the accelerate script runs without srun; use xgen slurm",
    (
        "apptainer",
        "accelerate",
    ): "the accelerate script has no container support; use xgen slurm or xgen shell",
    ("docker", "slurm"): "Slurm neither starts nor stops docker containers (a container outlives a "
    "cancelled job, and its devices are not the job's); use runtime: pyxis or apptainer with xgen slurm, "
    "or docker with xgen shell",
    ("docker", "accelerate"): "the accelerate script has no container support; use xgen shell",
}
# docker with xgen deepspeed on several hosts: DeepSpeed's launcher reaches the others over ssh.
_DOCKER_HOSTS = (
    "DeepSpeed's launcher starts the other hosts' ranks over ssh, outside any container; use xgen shell "
    "on every node, or one node (cluster.nodes: 1)"
)


# What the launch relies on inside the container (set by this script or its Slurm/launcher world).
_FORWARDED = (
    "PYTHONUNBUFFERED",
    "PYTHON",
    "XGEN_CONFIG",
    "XGEN_WORKDIR",
    "XGEN_RUN_DIR",
    "XGEN_NODE_LOG",
    "XGEN_PID_DIR",
    "XGEN_DEVICE",
    "XGEN_EXPECT_NNODES",
    "XGEN_EXPECT_WORLD_SIZE",
    "XGEN_SECRET_NAMES",
    "XGEN_RDZV_TIMEOUT",
    "XGEN_HANG_TIMEOUT",
    "NNODES",
    "NODE_RANK",
    "NPROC_PER_NODE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "ASCEND_RT_VISIBLE_DEVICES",
    "CUDA_VISIBLE_DEVICES",
    "NCCL_SOCKET_IFNAME",
    "HCCL_SOCKET_IFNAME",
    "GLOO_SOCKET_IFNAME",
    "NCCL_DEBUG",
    "NCCL_IB_DISABLE",
    "HCCL_CONNECT_TIMEOUT",
    "HCCL_EXEC_TIMEOUT",
    "TASK_QUEUE_ENABLE",
    "OMP_NUM_THREADS",
    # collective failures: async error handling and the flight recorder (templates/_node_env.sh.j2)
    "TORCH_NCCL_ASYNC_ERROR_HANDLING",
    "TORCH_NCCL_TRACE_BUFFER_SIZE",
    "TORCH_FR_BUFFER_SIZE",
    "TORCH_NCCL_DUMP_ON_TIMEOUT",
    "TORCH_NCCL_DEBUG_INFO_TEMP_FILE",
    "TORCH_FR_DUMP_TEMP_FILE",
    "HCCL_ASYNC_ERROR_HANDLING",
    "TORCH_HCCL_TRACE_BUFFER_SIZE",
    "TORCH_HCCL_DUMP_ON_TIMEOUT",
    "TORCH_HCCL_DEBUG_INFO_TEMP_FILE",
)


# docker passes in nothing but what it is told: also what Apptainer lets through from the host's environment.
_DOCKER_FORWARDED = (
    *_FORWARDED,
    "DS_ACCELERATOR",  # xgen deepspeed: DeepSpeed's accelerator, from the detection
    "HCCL_IF_BASE_PORT",  # the preflight's HCCL port check
    "XGEN_DOCTOR_DIR",  # xgen doctor: where the report goes
)


def container_forward(config: Config, runtime: str | None) -> list[str]:
    """Names whose host value must win over the image's inside the container.

    Apptainer: everything the launch relies on (the host side sets them) plus cluster.env and the
    credentials. docker: the same, and the few more Apptainer lets through from the host's environment
    (docker passes in nothing else). pyxis: the node step sets its own inside, so only what comes from the
    submitting environment: PYTHONUNBUFFERED and the credentials (pass_env, secret cluster.env keys).
    container.env keys are left out: their container value wins."""
    own = set(config.container.env)
    if runtime == "pyxis":
        names = ["PYTHONUNBUFFERED", *config.cluster.hidden_env]
    else:
        every = _DOCKER_FORWARDED if runtime == "docker" else _FORWARDED
        names = [*every, *config.cluster.env, *config.cluster.pass_env]
    return [n for n in dict.fromkeys(names) if n not in own]


def docker_name(config: Config, target: str) -> str:
    """The docker containers' name on a node, less its `-node<rank>`: one per job and node, the same on
    every run of this config (so a rerun finds what a killed run left), different per config file."""
    job = re.sub(r"[^A-Za-z0-9_.-]+", "-", config.job.name).strip("-._") or "job"
    tag = hashlib.sha256(str(config.source).encode()).hexdigest()[:8]
    return f"xgen-{'doctor-' if target.startswith('doctor') else ''}{job}-{tag}"


def container_context(config: Config, target: str) -> dict[str, Any]:
    """The container keys the templates read; a runtime the generator cannot use is refused in one line."""
    c = config.container
    runtime = c.runtime if c.image else None
    kind = target.split()[-1]  # "doctor slurm" wraps like "slurm"
    if runtime and (runtime, kind) in _CONTAINER_REFUSED:
        raise XgenError(
            "container.runtime", f"{runtime} with xgen {kind}: {_CONTAINER_REFUSED[runtime, kind]}"
        )
    if runtime == "docker" and kind == "deepspeed" and config.cluster.nodes > 1:
        raise XgenError(
            "container.runtime",
            f"docker with xgen deepspeed on {config.cluster.nodes} nodes: {_DOCKER_HOSTS}",
        )
    return {
        "container": c,
        "container_runtime": runtime or "",
        "container_mounts": container_mounts(config) if runtime else [],
        "container_workdir": c.workdir or config.workdir,
        "container_mounts_pyxis": ",".join(
            ":".join(part for part in mount if part) for mount in container_mounts(config)
        ),
        "container_forward": container_forward(config, runtime),
        "container_forward_lines": textwrap.wrap(" ".join(container_forward(config, runtime)), 96),
        # Apptainer, docker: the prefix that runs a $PYTHON command inside (xgen_container_argv fills it).
        "in_container": '"${XGEN_IN_CONTAINER[@]}" ' if runtime in ("apptainer", "docker") else "",
        "docker_name": docker_name(config, target) if runtime == "docker" else "",
        # pyxis: the srun options that put a step inside the image.
        "pyxis_args": '"${XGEN_PYXIS[@]}" ' if runtime == "pyxis" else "",
        # Set inside the container only; credential values are never echoed (see secret_names).
        "container_env": dict(c.env),
    }


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
        **container_context(config, target),
        **frozen_config(config),
        "xgen_version": __version__,
        "generated_at": generated_at(),
        "target": target,
        "regen_args": config.regen_flags + regen_args,  # flags that set keys (xgen.load), then the target's
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
        # No fixed port (one node, no cluster.master_port): xgen_free_port picks one at launch.
        "free_port": master_port(config) is None,
        # Sections a script may leave out (the export job has no expected world and no preflight).
        "expect_world": True,
        "preflight": True,
        # slurm.setup: Slurm batch scripts only (after the job's values, before the other settings).
        "setup": False,
        # cluster.env split: plain values are exported and shown; credential values only exported.
        "plain_env": {k: v for k, v in c.env.items() if k not in secret},
        "secret_env": {k: v for k, v in c.env.items() if k in secret},
        "hidden_env": list(c.hidden_env),
        # Names the runtime masks (XGEN_SECRET_NAMES): the hidden ones plus the container's credentials.
        "secret_names": [*c.hidden_env, *config.container.written_secrets],
        # What the launcher starts on every rank: the trainer, or `xgen doctor`'s bandwidth test.
        "launch_module": "runtime train",
        "ssh_hosts": [],  # hostfile launchers: the preflight runs on these over ssh
        # Node names by rank, so the preflight can name a node that never reported (Slurm: at run time).
        "host_names": ",".join(h.name for h in config.host_list),
    }
