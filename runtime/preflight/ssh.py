"""Check 7 (hostfile launchers): DeepSpeed's launcher reaches every host, itself included, by ssh that
may not ask for anything (pdsh runs it non-interactively). Try exactly that, then run the preflight on
every host through it, so each node checks itself as in the Slurm and shell paths."""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys
import time

from runtime.preflight.findings import Finding
from runtime.preflight.settings import Settings

SSH_TIMEOUT = 10
# An ssh command starts without the CANN environment the script's own node sourced (xgen_cann_env in
# templates/_node_env.sh.j2): source CANN's set_env.sh where there is one, say whether it was (the
# preflight's CANN note reads XGEN_CANN_SET_ENV), then run the preflight.
# Sourced inside a function, so set_env.sh sees no positional arguments (the preflight's command line).
SOURCE_CANN = (
    'c="${ASCEND_TOOLKIT_HOME:-/usr/local/Ascend/ascend-toolkit}/set_env.sh"; XGEN_CANN_SET_ENV=""; '
    'cann() { . "$c"; }; if [ -f "$c" ]; then cann && XGEN_CANN_SET_ENV=$c; fi; export XGEN_CANN_SET_ENV; '
    'exec "$@"'
)


def ssh_argv(s: Settings, host: str) -> list[str]:
    argv = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={SSH_TIMEOUT}"]
    if s.ssh_port:
        argv += ["-p", str(s.ssh_port)]
    return [*argv, host]


def check_ssh(s: Settings) -> list[Finding]:
    """`ssh -o BatchMode=yes HOST true` to every host at once; ssh's own reason when one fails."""
    here = socket.gethostname()
    procs = {}
    for host in s.ssh_hosts:
        try:
            procs[host] = subprocess.Popen(
                [*ssh_argv(s, host), "true"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        except OSError as err:
            return [Finding(here, "ssh", f"cannot run ssh: {err.strerror or err}", "install openssh-client")]
    out = []
    for host, proc in procs.items():
        try:
            _, err = proc.communicate(timeout=SSH_TIMEOUT + 5)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            err = f"no answer within {SSH_TIMEOUT + 5} s"
        if proc.returncode != 0:
            reason = (err or "").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
            out.append(
                Finding(
                    host,
                    "ssh",
                    f"`{shlex.join(ssh_argv(s, host))} true` from {here} failed "
                    f"(exit {proc.returncode}): {reason[0]}",
                    "set up key-based ssh from the launching node to every host, itself included "
                    "(ssh-copy-id, known_hosts); a non-default port goes in cluster.ssh_port",
                )
            )
    return out


def remote_command(s: Settings, rank: int, argv: list[str]) -> str:
    """The preflight's own arguments, for host `rank`, as one remote shell command line."""
    keep: list[str] = []
    skip = {"--ssh", "--ssh-port", "--python", "--node-rank", "--host", "--hosts"}
    it = iter(argv)
    for arg in it:
        name = arg.split("=", 1)[0]
        if name in skip:
            if "=" not in arg:
                next(it, None)
            continue
        keep.append(arg)
    cmd = [
        s.python,
        "-m",
        "runtime.preflight",
        *keep,
        "--node-rank",
        str(rank),
        "--hosts",
        ",".join(s.ssh_hosts),
    ]
    if s.device in ("auto", "npu"):  # as xgen_cann_env does in the script: CANN first, then the checks
        cmd = ["bash", "-c", SOURCE_CANN, "xgen-preflight", *cmd]
    return f"cd {shlex.quote(s.workdir)} && exec {shlex.join(cmd)}"


def run_on_hosts(s: Settings, argv: list[str]) -> int:
    """Run the preflight on every host over ssh (rank = position in the host list); relay the lines."""
    procs = []
    for rank, host in enumerate(s.ssh_hosts):
        procs.append(
            subprocess.Popen(
                [*ssh_argv(s, host), remote_command(s, rank, argv)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    until = time.monotonic() + s.timeout + 20
    worst = 0
    for host, proc in zip(s.ssh_hosts, procs, strict=True):
        try:
            text, _ = proc.communicate(timeout=max(until - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            proc.kill()
            text, _ = proc.communicate()
            print(
                Finding(
                    host,
                    "preflight",
                    f"no result over ssh within {s.timeout + 20:.0f} s",
                    "see its lines above",
                ).line(),
                file=sys.stderr,
            )
            worst = 3
        sys.stderr.write(text)
        sys.stderr.flush()
        rc = proc.returncode
        if rc not in (0, None):
            worst = max(worst, 3 if rc == 255 else rc)
    return worst
