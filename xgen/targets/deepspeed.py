"""`xgen deepspeed`: a DeepSpeed hostfile and the launch script for its pdsh/ssh launcher."""

from __future__ import annotations

import re
from pathlib import Path

from xgen.checks import launcher_for
from xgen.config import Config
from xgen.errors import XgenError
from xgen.render import render
from xgen.targets.common import container_context, context

# What the launching node forwards to the others through DS_ENV_FILE (plus every cluster.env key).
FORWARDED_ENV = (
    "XGEN_DEVICE",
    "DS_ACCELERATOR",
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
    "XGEN_EXPECT_NNODES",  # runtime/contract/expected_world.py: every rank checks the world it joined
    "XGEN_EXPECT_WORLD_SIZE",
)
# The first line of every hostfile xgen writes (DeepSpeed skips `#` lines): a file at --hostfile without it
# is the user's, and xgen never replaces it (docs/launchers.md).
HOSTFILE_MARK = "# written by xgen deepspeed --hostfile, which rewrites it; delete this line to keep the file"
# DeepSpeed writes these into a remote shell command unquoted or inside "…": allow only plain text.
_PLAIN = re.compile(r"[A-Za-z0-9_@%+=:,./-]*\Z")
_NO_DQ_SPECIAL = re.compile(r'[^"$`\\\n\r]*\Z')


def _check_remote_safe(config: Config) -> None:
    """DeepSpeed's pdsh runner builds a shell command for the remote nodes with weak quoting."""
    if not _PLAIN.match(config.workdir):
        raise XgenError(
            "job.workdir",
            "DeepSpeed's launcher runs `cd <dir>` unquoted on every node; "
            "use a path without spaces or shell characters",
        )
    if not _PLAIN.match(str(config.source)):
        raise XgenError(
            "config",
            "DeepSpeed's launcher passes the config path to remote shells unquoted; "
            "move it to a path without spaces or shell characters",
        )
    secret = set(config.cluster.written_secrets)  # these travel in a file, not on the command line
    for key, value in config.cluster.env.items():
        if key not in secret and not _NO_DQ_SPECIAL.match(value):
            raise XgenError(
                f"cluster.env.{key}",
                "DeepSpeed forwards env to other nodes inside double quotes, "
                'so ", $, `, \\ and newlines cannot pass; remove them',
            )


def _forwarded_names(config: Config, single: bool) -> list[str]:
    """Names whose values go through DS_ENV_FILE: never a credential (those use XGEN_SECRET_ENV_FILE)."""
    hidden = set(config.cluster.hidden_env)
    names = [*FORWARDED_ENV, *(k for k in config.cluster.env if k not in hidden)]
    if hidden:
        names.append("XGEN_SECRET_NAMES")
        if not single:
            names.append("XGEN_SECRET_ENV_FILE")
    return names


def hosts_and_slots(config: Config) -> tuple[list[str], int | None]:
    if config.host_list:
        hosts = [h.name for h in config.host_list]
    elif config.cluster.nodes == 1:
        hosts = ["localhost"]
    else:
        raise XgenError(
            "cluster.hosts",
            "the DeepSpeed launcher needs the node list; set cluster.hosts or cluster.hostfile",
        )
    slots = config.pinned_devices
    if slots is None:
        slots = next((h.slots for h in config.host_list if h.slots is not None), None)
    return hosts, slots


def _hostfile_is_xgens(config: Config, hostfile: str) -> bool:
    """Whether xgen may write `hostfile`: absent, or written by xgen (its first line is HOSTFILE_MARK).
    False for the user's own file that is also cluster.hostfile: read there, launched with as it is.
    Any other existing file is refused in one line: xgen never replaces a file the user wrote."""
    path = Path(hostfile)
    if not path.exists():
        return True
    try:
        first = path.read_text(encoding="utf-8").splitlines()[:1]
    except (OSError, UnicodeDecodeError):
        first = []
    if first == [HOSTFILE_MARK]:
        return True
    listed = config.cluster.hostfile
    if listed and (config.source.parent / listed).resolve() == path.resolve():
        if any(h.slots is None for h in config.host_list):
            raise XgenError(
                "--hostfile",
                f"{hostfile} is your cluster.hostfile, and DeepSpeed's launcher needs slots=N on every line; "
                "add them, or give --hostfile a new path for xgen to write",
            )
        return False
    raise XgenError(
        "--hostfile",
        f"{hostfile} exists and xgen did not write it (no xgen first line), so it is not replaced; give "
        "--hostfile a new path, or name this file in cluster.hostfile to launch with it as it is",
    )


def build(config: Config, hostfile: str | None, module: str = "runtime train") -> tuple[str, str | None]:
    """Return (script, hostfile text or None when slots are only known at run time, one node runs alone,
    or --hostfile is the user's own cluster.hostfile)."""
    name = "deepspeed" if module == "runtime train" else "doctor deepspeed"
    container_context(config, name)  # refuses a container first: it would not wrap this launcher
    launcher_for(config, "deepspeed")
    _check_remote_safe(config)
    hosts, slots = hosts_and_slots(config)
    single = config.cluster.nodes == 1
    if hostfile is None and not single:
        raise XgenError(
            "--hostfile", "required for more than one node: where to write the DeepSpeed hostfile"
        )
    ours = _hostfile_is_xgens(config, hostfile) if hostfile and not single else False
    ctx = context(config, name, f" --hostfile {hostfile}" if hostfile else "")
    ctx["launch_module"] = module
    ctx.update(
        hosts=hosts,
        slots=slots,
        single=single,
        ssh_hosts=[] if single else hosts,
        hostfile=str(Path(hostfile).absolute()) if hostfile else "",
        env_names=_forwarded_names(config, single),
        hostfile_mark=HOSTFILE_MARK,
    )
    text = render("deepspeed.sh.j2", ctx)
    write = slots and ours
    hostfile_text = (
        render("hostfile.j2", {"hosts": hosts, "slots": slots, "mark": HOSTFILE_MARK}) if write else None
    )
    return text, hostfile_text
