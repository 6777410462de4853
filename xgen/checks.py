"""Cross-key rules the types alone cannot express; each failure names one key and says how to fix it."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runtime.config import TrainConfig
from runtime.contract.plan.devices import memory_setting_problem
from xgen import accelerate_file, sweep
from xgen.config import Config, Host
from xgen.errors import XgenError

NCCL_DEBUG_LEVELS = ("VERSION", "WARN", "INFO", "TRACE")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_HOST = re.compile(r"[A-Za-z0-9_.:\[\]%-]+\Z")
_SLURM_TIME = re.compile(r"(\d+-)?\d+(:\d+){0,2}\Z|infinite\Z|unlimited\Z", re.IGNORECASE)
# Keys the scripts themselves own; overriding them in cluster.env would desynchronise the launch.
_RESERVED_ENV = (
    "XGEN_CONFIG",
    "XGEN_DEVICE",
    "NPROC_PER_NODE",
    "NNODES",
    "NODE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
)


def validate(config: Config) -> Config:
    """Apply every rule; return the config with `host_list` (from hosts or hostfile), `training` and
    `accelerate_file` set."""
    _no_nul(config)
    _check_job(config)
    hosts = _check_cluster(config)
    _check_slurm(config)
    _check_container(config)
    if not config.python.strip():
        raise XgenError("python", "must name the interpreter on the nodes, e.g. python3")
    checked = dataclasses.replace(config, host_list=hosts, training=_parse_train(config))
    sweep.check(checked)
    return accelerate_file.attach(checked)  # read like cluster.hostfile, checked against train:


def _strings(prefix: str, value: Any) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield prefix, value
    elif dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            if not f.metadata.get("internal"):
                yield from _strings(f"{prefix}.{f.name}".lstrip("."), getattr(value, f.name))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(f"{prefix}.{key}", item)
    elif isinstance(value, tuple | list):
        for i, item in enumerate(value):
            yield from _strings(f"{prefix}[{i}]", item)


# --- launcher matrix: what `launcher:` means for each command; docs/launchers.md ---
# Unset, each command starts its own launcher. Named, the command starts that one or refuses in one line.
OWN_LAUNCHER = {
    "slurm": "torchrun",
    "shell": "torchrun",
    "deepspeed": "deepspeed",
    "accelerate": "accelerate",
}
_STARTS = {
    "torchrun": "torch.distributed.run",
    "deepspeed": "DeepSpeed's launcher",
    "accelerate": "accelerate's launcher",
}
_REFUSED = {
    ("slurm", "accelerate"): "xgen slurm starts torch.distributed.run (launcher: torchrun) or DeepSpeed's "
    "launcher (launcher: deepspeed) on each node; set one of those (the train: keys are the same), "
    "or run xgen accelerate on each node",
    ("shell", "deepspeed"): "xgen shell starts torch.distributed.run on the node it runs on; use xgen "
    "deepspeed (one launch over ssh) or xgen slurm for DeepSpeed's launcher, or set launcher: torchrun",
    ("shell", "accelerate"): "xgen shell starts torch.distributed.run; use xgen accelerate for "
    "accelerate's launcher, or set launcher: torchrun",
    ("deepspeed", "torchrun"): "xgen deepspeed starts DeepSpeed's launcher; use xgen shell or xgen slurm "
    "for torch.distributed.run, or set launcher: deepspeed",
    ("deepspeed", "accelerate"): "xgen deepspeed starts DeepSpeed's launcher; use xgen accelerate for "
    "accelerate's, or set launcher: deepspeed",
    ("accelerate", "torchrun"): "xgen accelerate starts accelerate's launcher; use xgen shell or xgen "
    "slurm for torch.distributed.run, or set launcher: accelerate",
    ("accelerate", "deepspeed"): "xgen accelerate starts accelerate's launcher; use xgen deepspeed or "
    "xgen slurm for DeepSpeed's, or set launcher: accelerate",
}


def launcher_for(config: Config, command: str) -> str:
    """The launcher `command` (slurm|shell|deepspeed|accelerate) starts for this config, or XgenError."""
    value = config.launcher or OWN_LAUNCHER[command]
    problem = _REFUSED.get((command, value))
    if problem:
        raise XgenError("launcher", f"{value}: {problem}")
    if config.accelerate_config is not None and command != "accelerate":
        raise XgenError(
            "accelerate_config",
            f"only xgen accelerate reads it, and xgen {command} starts {_STARTS[value]}; run xgen "
            "accelerate, or remove accelerate_config",
        )
    return value


def launcher_commands(launcher: str) -> list[str]:
    """The commands that start `launcher` (for `xgen check`)."""
    return [c for c in OWN_LAUNCHER if (c, launcher) not in _REFUSED]


def _no_nul(config: Config) -> None:
    for key, text in _strings("", config):
        if "\0" in text:
            raise XgenError(key, "contains a NUL byte, which no shell variable can hold; remove it")


def _one_line(key: str, value: str | None, what: str = "this value") -> None:
    if value is not None and ("\n" in value or "\r" in value):
        raise XgenError(key, f"{what} must be on one line (it becomes an #SBATCH line); remove the newline")


def _positive(key: str, value: int | None, minimum: int = 1, maximum: int | None = None) -> None:
    if value is None:
        return
    if value < minimum:
        raise XgenError(key, f"must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise XgenError(key, f"must be at most {maximum}, got {value}")


def _check_job(config: Config) -> None:
    if not config.job.name.strip():
        raise XgenError("job.name", "must not be empty; name the job, e.g. sft-7b")
    _one_line("job.name", config.job.name)
    if config.job.workdir is not None and not config.job.workdir.strip():
        raise XgenError("job.workdir", "must not be empty; leave it out to use the config's directory")


def _check_cluster(config: Config) -> tuple[Host, ...]:
    c = config.cluster
    _positive("cluster.nodes", c.nodes)
    if c.devices_per_node != "auto":
        _positive("cluster.devices_per_node", int(c.devices_per_node))
    _positive("cluster.master_port", c.master_port, 1, 65535)
    _positive("cluster.ssh_port", c.ssh_port, 1, 65535)
    _positive("cluster.rdzv_timeout", c.rdzv_timeout)
    _positive("cluster.max_restarts", c.max_restarts, 0, 100)
    _positive("cluster.hang_timeout", c.hang_timeout, 0)
    _positive("cluster.hccl_connect_timeout", c.hccl_connect_timeout)
    _positive("cluster.hccl_exec_timeout", c.hccl_exec_timeout)
    _positive("cluster.omp_num_threads", c.omp_num_threads)
    _positive("cluster.preflight_timeout", c.preflight_timeout, 5)
    _positive("cluster.min_shm_gb", c.min_shm_gb, 0)
    _positive("cluster.min_bandwidth_gbps", c.min_bandwidth_gbps)
    memory_problem = memory_setting_problem(c.device_memory_gb)
    if memory_problem:
        raise XgenError("cluster.device_memory_gb", memory_problem)
    if c.master_addr is not None and not _HOST.match(c.master_addr):
        raise XgenError("cluster.master_addr", f"{c.master_addr!r} is not a hostname or address")
    if c.nic is not None:
        if not re.fullmatch(r"[=^]?[A-Za-z0-9_.:@-]+(,[A-Za-z0-9_.:@-]+)*", c.nic):
            raise XgenError("cluster.nic", f"{c.nic!r} is not an interface name (e.g. eth0, ib0, =ens1f0)")
        if c.nic.lstrip("=") == "lo" and c.nodes > 1:
            raise XgenError(
                "cluster.nic", "lo is the loopback interface and cannot reach other nodes; name the NIC"
            )
    if c.nccl_debug not in NCCL_DEBUG_LEVELS:
        raise XgenError(
            "cluster.nccl_debug", f"must be one of {'|'.join(NCCL_DEBUG_LEVELS)}, got {c.nccl_debug!r}"
        )
    check_env_names("cluster", c.env, c.pass_env, c.secret_env)
    return _hosts(config)


def check_env_names(
    section: str, env: dict[str, str], pass_env: tuple[str, ...], secret_env: tuple[str, ...]
) -> None:
    """The rules for one env/pass_env/secret_env triple (cluster now; a container section can reuse them)."""
    for name in env:
        if not _ENV_NAME.match(name):
            raise XgenError(
                f"{section}.env.{name}", "is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)"
            )
        if name in _RESERVED_ENV:
            raise XgenError(
                f"{section}.env.{name}", "is set by the generated script itself; use the matching config key"
            )
    for key, names in (("pass_env", pass_env), ("secret_env", secret_env)):
        for i, name in enumerate(names):
            where = f"{section}.{key}[{i}]"
            if not _ENV_NAME.match(name):
                raise XgenError(
                    where, f"{name!r} is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)"
                )
            if name in names[:i]:
                raise XgenError(where, f"{name} is listed twice; list it once")
            if name in _RESERVED_ENV:
                raise XgenError(where, f"{name} is set by the generated script itself; remove it")
    for i, name in enumerate(pass_env):
        if name in env:
            raise XgenError(
                f"{section}.pass_env[{i}]",
                f"{name} is also given a value in {section}.env; keep one (pass_env writes no value)",
            )
    for i, name in enumerate(secret_env):
        if name not in env:
            raise XgenError(
                f"{section}.secret_env[{i}]",
                f"{name} is not a key of {section}.env; add it there or drop it "
                "(pass_env names are always hidden)",
            )


def _hosts(config: Config) -> tuple[Host, ...]:
    c = config.cluster
    if c.hosts and c.hostfile:
        raise XgenError("cluster.hostfile", "give either cluster.hosts or cluster.hostfile, not both")
    if c.hostfile:
        key = "cluster.hostfile"
        hosts = _read_hostfile(config.source.parent / c.hostfile, key)
    else:
        key = "cluster.hosts"
        for i, name in enumerate(c.hosts):
            if not _HOST.match(name) or name.startswith("-"):
                raise XgenError(f"cluster.hosts[{i}]", f"{name!r} is not a hostname or address")
        hosts = tuple(Host(name) for name in c.hosts)
    if hosts and len(hosts) != c.nodes:
        raise XgenError(key, f"lists {len(hosts)} hosts but cluster.nodes is {c.nodes}; make them agree")
    if len({h.name for h in hosts}) != len(hosts):
        raise XgenError(key, "lists a host twice; each node once")
    slots = {h.slots for h in hosts if h.slots is not None}
    if len(slots) > 1:
        raise XgenError(
            key, f"slots differ between hosts ({sorted(slots)}); xgen launches the same count per node"
        )
    pinned = config.pinned_devices
    if slots and pinned is not None and slots != {pinned}:
        raise XgenError(
            key, f"slots={slots.pop()} does not match cluster.devices_per_node={pinned}; make them agree"
        )
    return hosts


def _read_hostfile(path: Path, key: str) -> tuple[Host, ...]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise XgenError(key, f"file {str(path)!r} not found; fix the path (relative to the config)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise XgenError(key, f"cannot read {str(path)!r}: {err}") from None
    hosts = []
    for number, line in enumerate(lines, 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        slots = None
        match = re.fullmatch(r"slots=(\d+)", words[1]) if len(words) == 2 else None
        if len(words) > 2 or (len(words) == 2 and not match) or not _HOST.match(words[0]):
            raise XgenError(key, f"line {number}: expected `host` or `host slots=N`, got {line.strip()!r}")
        if match:
            slots = int(match.group(1))
            if slots < 1:
                raise XgenError(key, f"line {number}: slots must be at least 1")
        hosts.append(Host(words[0], slots))
    if not hosts:
        raise XgenError(key, f"{str(path)!r} lists no hosts; one `host slots=N` line per node")
    return tuple(hosts)


def _check_slurm(config: Config) -> None:
    s = config.slurm
    for name in ("partition", "account", "qos", "constraint", "mem", "gres", "output", "error", "time"):
        value = getattr(s, name)
        _one_line(f"slurm.{name}", value)
        if value is not None and not value.strip():
            raise XgenError(f"slurm.{name}", "must not be empty; leave the key out instead")
    if s.time is not None and not _SLURM_TIME.match(s.time):
        raise XgenError("slurm.time", f"{s.time!r} is not a Slurm time (MM, HH:MM:SS, D-HH:MM:SS)")
    _positive("slurm.cpus_per_task", s.cpus_per_task)
    _positive("slurm.gpus_per_node", s.gpus_per_node)
    _positive("slurm.signal_seconds", s.signal_seconds)
    _positive("slurm.max_requeues", s.max_requeues, 0)
    pinned = config.pinned_devices
    if s.gpus_per_node is not None and pinned is not None and s.gpus_per_node < pinned:
        raise XgenError(
            "slurm.gpus_per_node",
            f"requests {s.gpus_per_node} GPUs but cluster.devices_per_node is {pinned}; make them agree",
        )
    for i, item in enumerate(s.extra):
        _one_line(f"slurm.extra[{i}]", item, "each directive")
        if not item.startswith("-"):
            raise XgenError(
                f"slurm.extra[{i}]", f"{item!r} is not an sbatch option; write it as --option=value"
            )


# --- containers ---
# A mount is SRC:DST[:FLAGS]; pyxis joins mounts with "," and Apptainer splits --bind values on ",", and
# both split on ":", so neither may appear inside a path. Flags: pyxis joins mount options with "+"
# (ro+rprivate); Apptainer knows ro and rw.
_MOUNT_PATH = re.compile(r"/[^,:\n\r]*\Z")
_PYXIS_FLAGS = re.compile(r"[a-z]+(\+[a-z]+)*\Z")
_APPTAINER_FLAGS = ("ro", "rw")
# docker -v's options, joined by "," (a path holds no ","): read-only/write, SELinux labels, propagation.
_DOCKER_FLAGS = re.compile(
    r"(ro|rw|z|Z|r?shared|r?slave|r?private|nocopy)(,(ro|rw|z|Z|r?shared|r?slave|r?private|nocopy))*\Z"
)


def container_mounts(config: Config) -> list[tuple[str, str, str]]:
    """(src, dst, flags) of every container mount: job.workdir first (the config, the run directory
    and the logs live there), then container.mounts; `PATH` alone is mounted at the same path."""
    found = [(config.workdir, config.workdir, "")]
    for item in config.container.mounts:
        src, _, rest = item.partition(":")
        dst, _, flags = rest.partition(":")
        found.append((src, dst or src, flags))
    return found


def _check_container(config: Config) -> None:
    c = config.container
    if c.image is None:
        for key, value in (
            ("runtime", c.runtime),
            ("mounts", c.mounts),
            ("env", c.env),
            ("workdir", c.workdir),
        ):
            if value:
                raise XgenError(f"container.{key}", "needs container.image; set the image or remove the key")
        return
    _one_line("container.image", c.image)
    if not c.image.strip() or c.image.startswith("-"):
        raise XgenError(
            "container.image", f"{c.image!r} is not an image; name a .sif, squashfs or registry image"
        )
    if c.runtime is None:
        raise XgenError(
            "container.runtime", "required with container.image: pyxis (Slurm), apptainer or docker"
        )
    for i, item in enumerate(c.mounts):
        where = f"container.mounts[{i}]"
        parts = item.split(":")
        if len(parts) > 3 or not all(_MOUNT_PATH.match(p) for p in parts[:2]):
            raise XgenError(
                where,
                f"{item!r} is not SRC:DST[:FLAGS] with absolute paths (no ',' or ':' inside a path); "
                "e.g. /shared/models:/models:ro",
            )
        if len(parts) == 3:
            allowed, ok = {
                "apptainer": ("ro or rw", parts[2] in _APPTAINER_FLAGS),
                "docker": ("-v options joined by , (ro,rslave)", bool(_DOCKER_FLAGS.match(parts[2]))),
            }.get(c.runtime, ("mount options joined by + (ro+rprivate)", bool(_PYXIS_FLAGS.match(parts[2]))))
            if not ok:
                raise XgenError(where, f"mount flags {parts[2]!r}: {c.runtime} takes {allowed}")
    if c.workdir is not None and not _MOUNT_PATH.match(c.workdir):
        raise XgenError(
            "container.workdir",
            f"{c.workdir!r} must be an absolute path inside the container, without ',' or ':'",
        )
    if not _MOUNT_PATH.match(config.workdir):
        raise XgenError(
            "job.workdir",
            f"{config.workdir!r} is mounted into the container at its own path, so it cannot hold ',' "
            "or ':'; move it",
        )
    check_env_names("container", c.env, (), ())


def _parse_train(config: Config) -> TrainConfig | None:
    """The runtime owns the `train:` keys: its parser (torch-free) validates them once, reading relative
    paths (deepspeed/fsdp_config JSON, dataset_dir) from the workdir the scripts cd into. A DeepSpeed
    JSON this machine cannot see is noted (training.notes), as datasets are: the nodes check it."""
    if not config.train:
        return None
    from runtime.config import ConfigError, parse_train_config
    from runtime.config.rules import world_size_problems

    prefix = "" if config.bare else "train."  # a bare LLaMA-Factory YAML has its keys at the top level
    try:
        training = parse_train_config(
            config.train, key_prefix=prefix, base_dir=config.workdir, visible_only=True
        )
    except ConfigError as err:
        first, *rest = err.errors  # ConfigErrors: every bad key, one line each
        raise XgenError(first.key, first.message, also=[(e.key, e.message) for e in rest]) from None
    pinned = config.pinned_devices
    if pinned is not None:  # the world size is known now: a fixed DeepSpeed batch size can be checked
        problems = world_size_problems(training, config.cluster.nodes * pinned, prefix)
        if problems:
            first, *rest = problems
            raise XgenError(first.key, first.message, also=[(e.key, e.message) for e in rest])
    return training
