"""The typed config: every key, its type, its default and a one-line doc (the README table is built from it).

One YAML file holds the sections `job`, `cluster`, `slurm`, `container`, `launcher`, `accelerate_config`,
`sweep`, `python` and `train`.
This module holds only the types; `xgen.load` reads a file into them and `xgen.checks` applies the
cross-key rules.
The `train:` keys belong to the runtime: its parser validates them and `Config.training` holds the result.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from runtime.config import TrainConfig
from runtime.contract.secrets import is_credential_name

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
            "Default: the config file's directory (a bare LLaMA-Factory YAML: the current directory). "
            "Relative values are taken from the config's directory.",
            "/shared/runs/sft",
        ),
    )


def secret_keys(env: Mapping[str, str], secret_env: typing.Iterable[str]) -> tuple[str, ...]:
    """The keys of an `env:` mapping that hold credentials: named like one, or listed in `secret_env`.

    Shared by every section with an env/pass_env/secret_env triple (cluster now, a container later).
    """
    listed = set(secret_env)
    return tuple(k for k in env if k in listed or is_credential_name(k))


# NAME=VALUE and --flag VALUE in a shell line; group 2 is set when VALUE is read from elsewhere
# ($VAR, "$VAR", $(cat file)): that writes no credential into the script.
_ASSIGNED = re.compile(r"(?:^|[\s;&|(])([A-Za-z_][A-Za-z0-9_]*)=(['\"]?\$)?")
_FLAG = re.compile(r"(?:^|\s)--?([A-Za-z][A-Za-z0-9_-]*)(?:=|\s+)(['\"]?\$)?")


def _credentials_in_shell(line: str) -> list[str]:
    """Credential-looking names a shell line sets to a literal (HF_TOKEN=hf_…, --token hf_…)."""
    names = [n for n, ref in _ASSIGNED.findall(line) if not ref and is_credential_name(n)]
    flags = [
        f"--{f}" for f, ref in _FLAG.findall(line) if not ref and is_credential_name(f.replace("-", "_"))
    ]
    return names + flags


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
    rendezvous: Literal["static", "c10d"] = field(
        default="static",
        metadata=doc(
            "How torch.distributed.run's nodes meet: `static` (--master_addr/--node_rank; each node's rank "
            "is its Slurm node id or --node-rank) or `c10d` (--rdzv-backend c10d --rdzv-endpoint "
            "MASTER:PORT --rdzv-id JOB: the node rank comes from the rendezvous; docs/fault-tolerance.md).",
            "c10d",
        ),
    )
    max_restarts: int = field(
        default=0,
        metadata=doc(
            "Restarts inside the job (torch.distributed.run --max-restarts): when any worker fails, the "
            "workers restart and resume from the newest complete checkpoint, each restart said in one line.",
            "3",
        ),
    )
    hang_timeout: int = field(
        default=1800,
        metadata=doc(
            "Seconds without an optimizer step before the watchdog names the stuck rank(s), writes the "
            "ranks' Python stacks to the run directory and ends the workers (a failure for max_restarts); "
            "saves and evaluations pause it; 0 turns it off.",
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
    pass_env: tuple[str, ...] = field(
        default=(),
        metadata=doc(
            "Variables forwarded from the environment the job is submitted/started from to every rank, "
            "by name: their values are never written into a generated file or printed (credentials).",
            "[HF_TOKEN, WANDB_API_KEY]",
        ),
    )
    secret_env: tuple[str, ...] = field(
        default=(),
        metadata=doc(
            "cluster.env keys that are credentials although their names do not say so (*TOKEN*, *KEY*, "
            "*SECRET*, *PASSWORD*, *CREDENTIAL* are found by name): never printed, script written 0700.",
            "[REGISTRY_AUTH]",
        ),
    )

    @property
    def written_secrets(self) -> tuple[str, ...]:
        """cluster.env keys whose values are credentials: a file holding them is written owner-only."""
        return secret_keys(self.env, self.secret_env)

    @property
    def hidden_env(self) -> tuple[str, ...]:
        """Names shown as <set>/<unset>, never with a value: pass_env, then the secret cluster.env keys."""
        return (*self.pass_env, *self.written_secrets)

    # --- preflight: checks every node runs before training; docs/preflight.md ---
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
    device_memory_gb: int | str | None = field(
        default=None,
        metadata=doc(
            "Memory of one device for `xgen plan` and the fit checks: GiB, `auto` (what nvidia-smi/npu-smi "
            "report on each node) or a device name (H100-80GB, A100-40GB, 910B-64GB, …; docs/plan.md). Set, "
            "`xgen check` warns and the preflight stops a run whose plan does not fit. Unset: not checked.",
            "H100-80GB",
        ),
    )
    min_bandwidth_gbps: int | None = field(
        default=None,
        metadata=doc(
            "`xgen doctor` warns when the cross-node all-reduce bus bandwidth is under this many Gbit/s "
            "(unset too, it warns when the busbw is far under the link speed of cluster.nic, or of the "
            "interface routing to the master, and under the intra-node busbw).",
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
    # --- sweep ---
    array_limit: int | None = field(
        default=None,
        metadata=doc("With a sweep: at most this many array tasks run at once (--array=0-N%LIMIT).", "2"),
    )


# --- containers: the per-node launch inside an image; docs/containers.md ---
ContainerRuntime = Literal["pyxis", "apptainer", "docker"]


@dataclass(frozen=True)
class ContainerConfig:
    """Run each node's python commands inside a container image (pyxis under Slurm, Apptainer anywhere,
    docker on hand-run nodes)."""

    image: str | None = field(
        default=None,
        metadata=doc(
            "Image the launch runs in: an enroot URI or squashfs path (pyxis), a .sif path or docker:// URI "
            "(Apptainer), an image name docker pulls or has (docker). Unset: no container.",
            "nvcr.io#nvidia/pytorch:24.05-py3",
        ),
    )
    runtime: ContainerRuntime | None = field(
        default=None,
        metadata=doc(
            "`pyxis` (srun --container-image …; `xgen slurm` only), `apptainer` (apptainer exec, with --nv "
            "on NVIDIA or the Ascend driver binds on NPU) or `docker` (docker run --rm --net=host "
            "--ipc=host, with --gpus all on NVIDIA, or every /dev/davinciN and the Ascend driver mounts on "
            "NPU; `xgen shell`, and `xgen deepspeed` on one node). Required with image.",
            "apptainer",
        ),
    )
    mounts: tuple[str, ...] = field(
        default=(),
        metadata=doc(
            "Bind mounts `SRC:DST[:FLAGS]` (absolute paths; `PATH` alone = same path inside; FLAGS: pyxis "
            "`ro+rprivate`, Apptainer `ro`/`rw`, docker `ro,rslave`). job.workdir is always mounted at its "
            "own path.",
            "[/shared/models:/models:ro]",
        ),
    )
    env: dict[str, str] = field(
        default_factory=dict,
        metadata=doc(
            "Variables set inside the container only (over the image's own values); never on a command "
            "line, credential names hidden like cluster.env.",
            "{HF_HOME: /shared/hf}",
        ),
    )
    workdir: str | None = field(
        default=None,
        metadata=doc(
            "Directory the commands start in inside the container. Default: job.workdir (mounted).",
            "/workspace",
        ),
    )

    @property
    def written_secrets(self) -> tuple[str, ...]:
        """container.env keys named like credentials (the script holding them is written owner-only)."""
        return secret_keys(self.env, ())


@dataclass(frozen=True)
class AccelerateFile:
    """An accelerate config file as read at generation: where it is and its settings (a YAML mapping)."""

    path: str
    settings: dict[str, Any]


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
    # --- containers ---
    container: ContainerConfig = field(default_factory=ContainerConfig)
    launcher: Launcher | None = field(
        default=None,
        metadata=doc(
            "How the workers start. Unset: the command's own (`xgen slurm`/`xgen shell`: "
            "torch.distributed.run, `xgen deepspeed`: DeepSpeed's launcher, `xgen accelerate`: accelerate). "
            "`deepspeed` with `xgen slurm`: DeepSpeed's launcher on every node of the allocation. "
            "A command that cannot start the named launcher refuses the config (docs/launchers.md).",
            "deepspeed",
        ),
    )
    accelerate_config: str | None = field(
        default=None,
        metadata=doc(
            "Your own accelerate config file (LLaMA-Factory's examples/accelerate/fsdp_config.yaml) for "
            "`xgen accelerate` (also `--accelerate-config FILE`); read at generation, relative to the "
            "config's directory like cluster.hostfile. Kept as it is, except: each node's machine_rank, "
            "main_process_ip/port, num_machines and num_processes are filled in at run time, the FSDP "
            "settings the runtime takes from train: are written as it runs them, each change said in one "
            "line; a setting that contradicts train: or cluster: is refused. Unset: xgen writes it from "
            "train:. Other commands refuse it (docs/launchers.md).",
            "fsdp_config.yaml",
        ),
    )
    # --- sweep: one Slurm job array over combinations of train values; docs/submit.md ---
    sweep: dict[str, Any] = field(
        default_factory=dict,
        metadata=doc(
            "train key -> list of values: `xgen slurm`/`xgen submit` render ONE Slurm job array, one task "
            "per combination (cartesian product, keys in file order, the last varying fastest), each "
            "training into output_dir/sweep-<task>-<key>=<value>-…. slurm.array_limit caps tasks at once.",
            "{learning_rate: [1.0e-4, 3.0e-4], lora_rank: [8, 16]}",
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
    # `train:` as the runtime's parser reads it (relative paths from the workdir); None when train: is
    # empty. Generators read this, never the raw `train` mapping.
    training: TrainConfig | None = field(default=None, metadata={"internal": True})
    # accelerate_config as read at generation (xgen.accelerate_file); None without one.
    accelerate_file: AccelerateFile | None = field(default=None, metadata={"internal": True})
    # --- operable: the config file's text as read, frozen into every generated script ---
    text: str = field(default="", metadata={"internal": True})
    # --- a bare LLaMA-Factory YAML and command-line flags (xgen.load) ---
    # The file held only training keys (now `train`): errors name them as the user wrote them.
    bare: bool = field(default=False, metadata={"internal": True})
    # What the bare YAML took from elsewhere, one line each (train.fsdp from the accelerate file's FSDP).
    adopted: tuple[str, ...] = field(default=(), metadata={"internal": True})
    # The flags that set keys, as `xgen <target> CONFIG<regen_flags>` repeats them in the script's header.
    regen_flags: str = field(default="", metadata={"internal": True})

    @property
    def workdir(self) -> str:
        """Absolute run directory: job.workdir (relative to the config's directory) or that directory."""
        base = self.source.parent
        if self.job.workdir is None:
            return str(base)
        return str(base / self.job.workdir)

    def secrets_written(self) -> tuple[tuple[str, str], ...]:
        """(config key, variable name) of each credential value a generated script holds.

        cluster.env keys named like credentials or listed in cluster.secret_env, and slurm.setup lines
        that assign one (`export HF_TOKEN=…`) or pass one as a flag (`--token …`). The same for every
        target: each script embeds the whole config (frozen at generation).
        """
        found = [(f"cluster.env.{name}", name) for name in self.cluster.written_secrets]
        found += [(f"container.env.{name}", name) for name in self.container.written_secrets]
        for i, line in enumerate(self.slurm.setup):
            found += [(f"slurm.setup[{i}]", name) for name in _credentials_in_shell(line)]
        return tuple(found)

    @property
    def sha256(self) -> str:
        """sha256 of the config text the scripts freeze (the file's bytes as read)."""
        import hashlib

        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @property
    def pinned_devices(self) -> int | None:
        value = self.cluster.devices_per_node
        return None if value == "auto" else int(value)


SECTIONS: dict[str, type] = {
    "job": JobConfig,
    "cluster": ClusterConfig,
    "slurm": SlurmConfig,
    # --- containers ---
    "container": ContainerConfig,
}


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
    "SECTIONS",
    "AccelerateFile",
    "ClusterConfig",
    "Config",
    "ContainerConfig",
    "Host",
    "JobConfig",
    "SlurmConfig",
    "field_docs",
]
