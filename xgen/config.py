"""The typed config: every key, its type, its default and a one-line doc (the README table is built from it).

One YAML file holds the sections `job`, `cluster`, `slurm`, `launcher`, `python` and `train`. Parsing is
strict: an unknown key, a wrong type or an impossible value raises XgenError naming the key path, so
the CLI can print one line and write nothing.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from xgen.errors import XgenError

Device = Literal["auto", "cuda", "npu", "cpu"]
Launcher = Literal["torchrun", "deepspeed", "accelerate"]


def doc(text: str, example: str = "") -> dict[str, str]:
    """Field metadata: the doc line and an example, both shown in the README's config reference."""
    return {"doc": text, "example": example}


@dataclass(frozen=True)
class JobConfig:
    """What the job is called and where it runs."""

    name: str = field(default="xgen-train", metadata=doc("Job name (Slurm --job-name, log names).", "sft-7b"))
    workdir: str | None = field(
        default=None,
        metadata=doc(
            "Directory the script cd's into before launching; relative train paths resolve from it. "
            "Default: the config file's directory. Relative values are taken from the config's directory.",
            "/shared/runs/sft",
        ),
    )


@dataclass(frozen=True)
class ClusterConfig:
    """The machines: how many, which accelerator, how they reach each other."""

    nodes: int = field(default=1, metadata=doc("Number of nodes (>= 1).", "2"))
    devices_per_node: int | Literal["auto"] = field(
        default="auto",
        metadata=doc("Processes per node: `auto` = devices detected at run time, or a fixed count.", "8"),
    )
    device: Device = field(
        default="auto",
        metadata=doc("Accelerator: `auto` detects npu, then cuda, then falls back to cpu (gloo).", "npu"),
    )
    hosts: tuple[str, ...] = field(
        default=(), metadata=doc("Node hostnames/addresses, first = master (hostfile launchers).", "[n0, n1]")
    )
    hostfile: str | None = field(
        default=None,
        metadata=doc("DeepSpeed-style hostfile (`host slots=N` lines) instead of `hosts`.", "hostfile"),
    )
    master_addr: str | None = field(
        default=None,
        metadata=doc("Rendezvous host. Default: first Slurm node, else first host, else $MASTER_ADDR.", "n0"),
    )
    master_port: int | None = field(
        default=None,
        metadata=doc(
            "Rendezvous port. Default: 20000 + SLURM_JOB_ID % 20000 on Slurm; "
            "on one node a free port picked at launch; else 29500.",
            "29500",
        ),
    )
    rdzv_timeout: int = field(
        default=300,
        metadata=doc(
            "Seconds a node waits for the rendezvous (torch.distributed.run --rdzv_conf timeout=N) "
            "before failing; bounds a wrong master_addr.",
            "600",
        ),
    )
    ssh_port: int | None = field(
        default=None, metadata=doc("Non-default ssh port for the DeepSpeed (pdsh/ssh) launcher.", "2222")
    )
    nic: str | None = field(
        default=None,
        metadata=doc(
            "Network interface for NCCL/HCCL/gloo (NCCL_SOCKET_IFNAME …); must exist on every node.", "eth0"
        ),
    )
    ib_disable: bool = field(
        default=False, metadata=doc("Set NCCL_IB_DISABLE=1 (runs without InfiniBand, but slowly).", "false")
    )
    nccl_debug: str = field(default="WARN", metadata=doc("NCCL_DEBUG level.", "INFO"))
    hccl_connect_timeout: int = field(
        default=1200, metadata=doc("HCCL_CONNECT_TIMEOUT seconds on NPU (link setup between ranks).", "1800")
    )
    hccl_exec_timeout: int = field(
        default=1800, metadata=doc("HCCL_EXEC_TIMEOUT seconds on NPU (one collective).", "3600")
    )
    omp_num_threads: int | None = field(
        default=None, metadata=doc("OMP_NUM_THREADS. Default: CPUs of the node / processes per node.", "4")
    )
    env: dict[str, str] = field(
        default_factory=dict,
        metadata=doc(
            "Extra environment exported on every node, last (overrides the defaults).",
            "{NCCL_P2P_LEVEL: NVL}",
        ),
    )
    # --- preflight (issue 12): checks every node runs before training; docs/preflight.md ---
    preflight: bool = field(
        default=True,
        metadata=doc(
            "Check every node before any model loads (names, NIC, master port, versions, files, shared "
            "output_dir, /dev/shm, disk, devices); a problem stops the job with exit 3. false skips it.",
            "false",
        ),
    )
    preflight_timeout: int = field(
        default=60,
        metadata=doc(
            "Seconds the preflight may take on a node, waiting for the other nodes included (capped by "
            "rdzv_timeout); raise it when hand-started nodes start far apart.",
            "120",
        ),
    )
    min_shm_gb: int = field(
        default=1,
        metadata=doc(
            "Smallest /dev/shm (GiB) the preflight accepts: NCCL and DataLoader workers fail with bus "
            "errors on a container's 64 MB default. 0 skips the check.",
            "8",
        ),
    )
    min_bandwidth_gbps: int | None = field(
        default=None,
        metadata=doc(
            "`xgen doctor` warns when the cross-node all-reduce bus bandwidth is under this many Gbit/s "
            "(it also warns under a tenth of the NIC's link speed).",
            "100",
        ),
    )


@dataclass(frozen=True)
class SlurmConfig:
    """sbatch directives and the job's own setup lines (used by `xgen slurm`)."""

    partition: str | None = field(default=None, metadata=doc("--partition.", "gpu"))
    time: str | None = field(default=None, metadata=doc("--time limit (Slurm time format).", "2-00:00:00"))
    account: str | None = field(default=None, metadata=doc("--account.", "proj42"))
    qos: str | None = field(default=None, metadata=doc("--qos.", "high"))
    constraint: str | None = field(default=None, metadata=doc("--constraint.", "a100"))
    cpus_per_task: int | None = field(
        default=None, metadata=doc("--cpus-per-task (one task per node).", "64")
    )
    mem: str | None = field(default=None, metadata=doc("--mem per node.", "480G"))
    gpus_per_node: int | None = field(default=None, metadata=doc("--gpus-per-node.", "8"))
    gres: str | None = field(default=None, metadata=doc("--gres (e.g. for NPUs).", "npu:8"))
    exclusive: bool = field(default=False, metadata=doc("--exclusive.", "true"))
    output: str = field(
        default="%x-%j.out", metadata=doc("--output path (%x = name, %j = job id).", "logs/%x-%j.out")
    )
    error: str | None = field(
        default=None, metadata=doc("--error path. Default: same as output.", "logs/%x-%j.err")
    )
    extra: tuple[str, ...] = field(
        default=(),
        metadata=doc("Free-form directives, each emitted as `#SBATCH <item>`.", "[--mail-type=END]"),
    )
    setup: tuple[str, ...] = field(
        default=(),
        metadata=doc(
            "Shell lines run VERBATIM in the batch shell before launch (the one place config text is shell); "
            "srun --export=ALL carries their environment to every node.",
            "[module load cuda/12.4, source /shared/venv/bin/activate]",
        ),
    )
    requeue: bool = field(
        default=False,
        metadata=doc("Preemption: warn with USR1, checkpoint, requeue (--requeue, --signal).", "true"),
    )
    signal_seconds: int = field(
        default=120, metadata=doc("Seconds before the time limit Slurm sends USR1 (with requeue).", "300")
    )
    max_requeues: int = field(default=3, metadata=doc("Stop requeueing after this many restarts.", "5"))


@dataclass(frozen=True)
class Host:
    """One node of a hostfile cluster; slots = processes on it when the hostfile says so."""

    name: str
    slots: int | None = None


@dataclass(frozen=True)
class Config:
    """The whole job. `source` is the config file's absolute path (what the scripts pass to the runtime)."""

    job: JobConfig = field(default_factory=JobConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    launcher: Launcher = field(
        default="torchrun",
        metadata=doc(
            "Intended launcher, shown by `xgen check`. `xgen slurm`/`xgen shell` always start workers with "
            "torch.distributed.run; `xgen deepspeed`/`xgen accelerate` use their own launcher.",
            "deepspeed",
        ),
    )
    python: str = field(
        default="python3",
        metadata=doc("Interpreter on the nodes (needs torch + this package).", "/shared/venv/bin/python"),
    )
    train: dict[str, Any] = field(
        default_factory=dict,
        metadata=doc(
            "The runtime's keys (LLaMA-Factory names), passed through and validated by it.", "see examples/"
        ),
    )
    source: Path = field(default=Path("/xgen.yaml"), metadata={"internal": True})
    host_list: tuple[Host, ...] = field(default=(), metadata={"internal": True})

    @property
    def workdir(self) -> str:
        """Absolute run directory: job.workdir (relative to the config's directory) or that directory."""
        base = self.source.parent
        if self.job.workdir is None:
            return str(base)
        return str(base / self.job.workdir)

    @property
    def pinned_devices(self) -> int | None:
        value = self.cluster.devices_per_node
        return None if value == "auto" else int(value)


SECTIONS: dict[str, type] = {"job": JobConfig, "cluster": ClusterConfig, "slurm": SlurmConfig}
TOP_LEVEL = ("job", "cluster", "slurm", "launcher", "python", "train")


def _unknown(key_path: str, key: str, allowed: typing.Iterable[str]) -> XgenError:
    allowed = list(allowed)
    guess = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean '{guess[0]}'?" if guess else f"known keys: {', '.join(allowed)}"
    return XgenError(key_path, f"unknown key; {hint}")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _convert(path: str, value: Any, hint: Any) -> Any:
    """Check one YAML value against a field's type annotation; return the typed value."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(path, value, option)
            except XgenError as err:
                errors.append(err.message)
        raise XgenError(path, " or ".join(dict.fromkeys(errors)))
    if origin is Literal:
        if value in args and isinstance(value, str):
            return value
        choices = "|".join(str(a) for a in args)
        raise XgenError(path, f"must be one of {choices}, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise XgenError(path, f"must be true or false, got {_type_name(value)} {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise XgenError(path, f"must be an integer, got {_type_name(value)} {value!r}")
    if hint is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise XgenError(path, f"must be a string, got {_type_name(value)}")
    if origin is tuple:
        if not isinstance(value, list):
            raise XgenError(path, f"must be a list, got {_type_name(value)}")
        return tuple(_convert(f"{path}[{i}]", item, args[0]) for i, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise XgenError(path, f"must be a mapping, got {_type_name(value)}")
        if args[1] is Any:
            return dict(value)
        return {str(k): _convert(f"{path}.{k}", v, args[1]) for k, v in value.items()}
    raise AssertionError(f"unhandled type {hint!r}")  # a programming error, not user input


def _section(name: str, cls: type, raw: Any) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise XgenError(name, f"must be a mapping of keys, got {_type_name(raw)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in raw.items():
        if key not in names:
            raise _unknown(f"{name}.{key}", str(key), names)
        values[key] = _convert(f"{name}.{key}", value, hints[key])
    return cls(**values)


def parse_mapping(raw: Any, source: Path) -> Config:
    """Turn the loaded YAML into a Config, checking types and every cross-key rule."""
    if not isinstance(raw, Mapping):
        raise XgenError(str(source), f"the config must be a YAML mapping of sections, got {_type_name(raw)}")
    for key in raw:
        if key not in TOP_LEVEL:
            raise _unknown(str(key), str(key), TOP_LEVEL)
    hints = typing.get_type_hints(Config)
    sections = {name: _section(name, cls, raw.get(name)) for name, cls in SECTIONS.items()}
    scalars = {
        key: _convert(key, raw[key], hints[key])
        for key in ("launcher", "python", "train")
        if raw.get(key) is not None
    }
    config = Config(**sections, **scalars, source=source)
    from xgen import checks  # late: checks imports config types

    return checks.validate(config)


def load_config(path: str | Path) -> Config:
    """Read and validate one config file; relative paths inside it resolve from its directory."""
    import yaml

    source = Path(path).absolute()
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise XgenError(str(path), "config file not found; check the path") from None
    except (OSError, UnicodeDecodeError) as err:
        raise XgenError(str(path), f"cannot read the config: {err}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise XgenError(str(path), f"{where}{problem}; fix the YAML syntax") from None
    return parse_mapping(raw, source)


def field_docs() -> list[tuple[str, str, str, str]]:
    """(key, default, doc, example) for every documented key, in file order (for the README)."""
    rows: list[tuple[str, str, str, str]] = []

    def add(prefix: str, cls: type) -> None:
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal") or f.name in SECTIONS:
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            rows.append((prefix + f.name, repr(default), f.metadata["doc"], f.metadata["example"]))

    for name, cls in SECTIONS.items():
        add(f"{name}.", cls)
    add("", Config)
    return rows


__all__ = [
    "ClusterConfig",
    "Config",
    "Host",
    "JobConfig",
    "SlurmConfig",
    "field_docs",
    "load_config",
    "parse_mapping",
]
