"""A real cluster of three nodes on one machine (two plus a spare): network namespaces, Slurm, munge, sshd.

Why this exists: the generated scripts are only proven when they run on real launchers across
real separate nodes. Each "node" is a network namespace with its own address on a private /24
and its own hostname (a UTS namespace per daemon), so torch.distributed, Slurm and ssh really
talk over a network. Everything the harness makes carries the prefix ``xgt`` (or a marker
comment), so a bring-up first removes whatever a crashed run left behind. Processes are only
ever killed by the pid files the harness wrote (after checking the pid still runs our command
line) or because they live inside one of our namespaces -- never by name.

Run by hand (as root): ``python tests/cluster/harness.py up|down|status``.
Only stdlib: the harness must start before anything else in the project works.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HOSTS_MARKER = "# xgt-harness"
SSH_CLIENT_CONF = Path("/etc/ssh/ssh_config.d/xgt-harness.conf")
REQUIRED_TOOLS = (
    "ip",
    "unshare",
    "munged",
    "mungekey",
    "slurmctld",
    "slurmd",
    "sbatch",
    "srun",
    "scontrol",
    "squeue",
    "scancel",
    "sinfo",
    "sshd",
    "ssh",
    "ssh-keygen",
    "pdsh",
)
# Job states after which a job never runs again by itself.
FINAL_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
)


class HarnessError(RuntimeError):
    """Bring-up, tear-down or a Slurm client command failed; the message says which step."""


@dataclass(frozen=True)
class Node:
    """One simulated machine: a network namespace, its address and hostname."""

    name: str  # hostname inside the node, and its /etc/hosts name (node0, node1)
    netns: str  # network namespace name (xgt-node0)
    addr: str  # address of its eth0 on the harness subnet
    veth: str  # root-namespace end of its veth pair (xgt-v0)


@dataclass(frozen=True)
class ClusterSpec:
    """Names, addresses and ports of the test cluster; defaults avoid every standard port."""

    prefix: str = "xgt"
    subnet: str = "10.201.7"  # a /24 that the harness creates; only these addresses get traffic
    # Outside /tmp: every node gets its own /tmp, but all of them must see the state dir.
    state_dir: Path = Path("/var/tmp/xgt-cluster")
    # node0 and node1 run every two-node job; node2 is a spare (a higher Slurm Weight: Slurm fills the
    # lowest weight first) that takes over when a test loses one of them for good.
    node_count: int = 3
    spare_from: int = 2  # nodes with this index and up are spares
    cpus_per_node: int = 2  # two ranks per node fit (CPUs are oversubscribed on a 2-core machine)
    real_memory_mb: int = 8000
    slurmctld_port: int = 16817
    slurmd_port: int = 16818
    ssh_port: int = 22022
    partition: str = "xgt"

    @property
    def bridge(self) -> str:
        return f"{self.prefix}-br0"

    @property
    def bridge_addr(self) -> str:
        return f"{self.subnet}.1"

    @property
    def ctl_host(self) -> str:
        """Hostname of the controller (slurmctld runs in the root namespace under this name)."""
        return f"{self.prefix}-ctl"

    @property
    def nodes(self) -> tuple[Node, ...]:
        return tuple(
            Node(f"node{i}", f"{self.prefix}-node{i}", f"{self.subnet}.{10 + i}", f"{self.prefix}-v{i}")
            for i in range(self.node_count)
        )

    def unused_addr(self) -> str:
        """An address inside the harness subnet where nothing listens (for wrong-master tests)."""
        return f"{self.subnet}.99"


@dataclass(frozen=True)
class Paths:
    """Every file the harness writes lives under the state directory."""

    root: Path

    @property
    def slurm_conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    @property
    def munge_key(self) -> Path:
        return self.root / "munge" / "munge.key"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    @property
    def ssh_key(self) -> Path:
        return self.root / "ssh" / "id_ed25519"

    @property
    def ssh_known_hosts(self) -> Path:
        return self.root / "ssh" / "known_hosts"

    def node_tmp(self, node: str) -> Path:
        """What a node sees as /tmp: node-local, as on real clusters."""
        return self.root / "node-tmp" / node

    @property
    def shared(self) -> Path:
        """The cluster's shared filesystem for tests (every node sees it; /tmp is node-local)."""
        return self.root / "shared"

    @property
    def logs(self) -> Path:
        return self.root / "log"

    @property
    def pids(self) -> Path:
        return self.root / "pid"

    def pid_file(self, daemon: str) -> Path:
        return self.pids / f"{daemon}.pid"


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    """subprocess.run with text output captured and the failing command in the error."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise HarnessError(
            f"command failed (exit {proc.returncode}): {shlex.join(argv)}\n{proc.stdout}{proc.stderr}"
        )
    return proc


def missing_prerequisites() -> str | None:
    """Why the harness cannot run here, or None when it can (root and every tool present)."""
    if os.geteuid() != 0:
        return "the cluster harness needs root (network namespaces, slurmd, sshd)"
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        return (
            "missing tools: " + ", ".join(missing) + " (apt-get install slurm-wlm munge openssh-server pdsh)"
        )
    return None


def in_node(node: Node, argv: Sequence[str], spec: ClusterSpec | None = None) -> list[str]:
    """argv that runs inside a node: its network namespace, its hostname, its own /tmp.

    /tmp is a per-node directory bind-mounted in a private mount namespace, so scripts that keep
    node-local state in /tmp behave as on separate machines; everything outside /tmp is shared.
    """
    tmp = Paths((spec or ClusterSpec()).state_dir).node_tmp(node.name)
    # A checkout (and its .venv) that itself lives under /tmp, as CI's clone may, must stay visible:
    # bind it into the node's /tmp at the same place before that directory covers /tmp.
    keep = "".join(
        f"mkdir -p {shlex.quote(str(tmp / name))} && mount --bind {shlex.quote('/tmp/' + name)} "
        f"{shlex.quote(str(tmp / name))} && "
        for name in _tmp_entries_to_keep()
    )
    inner = (
        f"{keep}mount --rbind {shlex.quote(str(tmp))} /tmp && hostname {shlex.quote(node.name)} "
        f"&& exec {shlex.join(argv)}"
    )
    return ["ip", "netns", "exec", node.netns, "unshare", "--uts", "--mount", "sh", "-c", inner]


def _tmp_entries_to_keep() -> list[str]:
    """Top-level /tmp entries holding this checkout, the interpreter or the working directory."""
    names = set()
    for path in (Path(__file__).resolve().parents[2], Path(sys.prefix).resolve(), Path.cwd().resolve()):
        parts = path.parts
        if len(parts) > 2 and parts[:2] == ("/", "tmp"):
            names.add(parts[2])
    return sorted(names)


def in_ctl(spec: ClusterSpec, argv: Sequence[str]) -> list[str]:
    """argv that runs in the root namespace under the controller's hostname."""
    inner = f"hostname {shlex.quote(spec.ctl_host)} && exec {shlex.join(argv)}"
    return ["unshare", "--uts", "sh", "-c", inner]


# ---------------------------------------------------------------- daemons by pid file


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def kill_pid_file(pid_file: Path, must_contain: str, grace: float = 5.0) -> None:
    """Stop the daemon named in pid_file, but only if its command line still mentions our state dir."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    if must_contain not in _cmdline(pid):
        pid_file.unlink(missing_ok=True)  # stale: the pid was reused by something that is not ours
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if not _alive(pid):
            break
    pid_file.unlink(missing_ok=True)


def start_daemon(argv: Sequence[str], pid_file: Path, log: Path) -> int:
    """Start a foreground daemon detached from us; record its pid (exec chains keep the pid)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(f"{proc.pid}\n")
    return proc.pid


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    """Poll predicate until it returns something truthy; raise HarnessError naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise HarnessError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------- /etc files we own


def _hosts_lines(spec: ClusterSpec) -> list[str]:
    lines = [f"{spec.bridge_addr} {spec.ctl_host} {HOSTS_MARKER}"]
    lines += [f"{n.addr} {n.name} {HOSTS_MARKER}" for n in spec.nodes]
    return lines


def _rewrite_hosts(add: Iterable[str]) -> None:
    """Drop every line carrying our marker (also a crashed run's), then append `add`."""
    path = Path("/etc/hosts")
    kept = [line for line in path.read_text().splitlines() if HOSTS_MARKER not in line]
    new = "\n".join([*kept, *add]) + "\n"
    # Write in place: /etc/hosts may be a bind mount that cannot be replaced by rename.
    with open(path, "w") as fh:
        fh.write(new)


def _ssh_client_conf(spec: ClusterSpec, paths: Paths) -> str:
    names = " ".join(n.name for n in spec.nodes) + " " + " ".join(n.addr for n in spec.nodes)
    return (
        f"{HOSTS_MARKER}: lets `ssh node1` reach the test cluster's sshd with its throwaway key.\n"
        f"Host {names}\n"
        f"    Port {spec.ssh_port}\n"
        f"    User root\n"
        f"    IdentityFile {paths.ssh_key}\n"
        f"    IdentitiesOnly yes\n"
        f"    StrictHostKeyChecking no\n"
        f"    UserKnownHostsFile {paths.ssh_known_hosts}\n"
        f"    LogLevel ERROR\n"
        f"    BatchMode yes\n"
        f"    ConnectTimeout 5\n"
    )


# ---------------------------------------------------------------- config files


def slurm_conf(spec: ClusterSpec, paths: Paths) -> str:
    """slurm.conf for the two namespaces: no cgroups, no accounting, short credential expiry."""
    r = paths.root
    node_lines = "\n".join(
        f"NodeName={n.name} NodeAddr={n.addr} CPUs={spec.cpus_per_node} "
        f"RealMemory={spec.real_memory_mb} Weight={100 if i >= spec.spare_from else 1} State=UNKNOWN"
        for i, n in enumerate(spec.nodes)
    )
    node_names = ",".join(n.name for n in spec.nodes)
    return f"""# Written by tests/cluster/harness.py; removed on teardown.
ClusterName={spec.prefix}
SlurmctldHost={spec.ctl_host}({spec.bridge_addr})
SlurmctldPort={spec.slurmctld_port}
SlurmdPort={spec.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire=10: a requeued job restarts after ~10 s instead of 121 s (preemption tests).
AuthInfo=socket={paths.munge_socket},cred_expire=10
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/d-%n
SlurmctldPidFile={paths.pid_file("slurmctld-own")}
SlurmdPidFile={r}/pid/slurmd-own-%n.pid
SlurmctldLogFile={paths.logs}/slurmctld.log
SlurmdLogFile={paths.logs}/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups: the namespaces have no cgroup delegation; track processes through /proc.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# Take CPUs/RealMemory from this file, not from the (2-core) hardware.
SlurmdParameters=config_overrides
ReturnToService=2
# Keep finished jobs visible to `scontrol show job` (there is no accounting database).
MinJobAge=3600
KillWait=5
InactiveLimit=0
Waittime=0
MessageTimeout=10
# A node whose slurmd stops answering is DOWN after 30 s (default 300), and its jobs NODE_FAIL (and
# requeue when they may): the node-loss test waits for this.
SlurmdTimeout=30
{node_lines}
PartitionName={spec.partition} Nodes={node_names} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""


CGROUP_CONF = "# Required even without cgroup plugins.\nCgroupPlugin=cgroup/v1\nCgroupAutomount=no\n"


def sshd_conf(spec: ClusterSpec, paths: Paths, node: Node) -> str:
    d = paths.root / "ssh"
    return f"""# Written by tests/cluster/harness.py for {node.name}.
Port {spec.ssh_port}
ListenAddress {node.addr}
HostKey {d}/host_{node.name}
PidFile {paths.pid_file("sshd-own-" + node.name)}
AuthorizedKeysFile {paths.ssh_key}.pub
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
StrictModes no
UsePAM no
UseDNS no
AcceptEnv *
PermitUserEnvironment no
Subsystem sftp internal-sftp
"""


# ---------------------------------------------------------------- the cluster


@dataclass
class Cluster:
    """A running test cluster plus the client helpers tests need (submit, wait, signal, inspect)."""

    spec: ClusterSpec = field(default_factory=ClusterSpec)
    up_seconds: float = 0.0

    @property
    def paths(self) -> Paths:
        return Paths(self.spec.state_dir)

    @property
    def nodes(self) -> tuple[Node, ...]:
        return self.spec.nodes

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for Slurm client commands (our slurm.conf) and for jobs they start."""
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.paths.slurm_conf)
        # Slurm copies the submitter's environment into jobs; keep other clusters' vars out.
        for key in [k for k in env if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))]:
            if key != "SLURM_CONF":
                del env[key]
        env.update(extra or {})
        return env

    # --- running commands

    def run_in_node(self, node: str, argv: Sequence[str], **kw) -> subprocess.CompletedProcess:
        """Run argv inside a node (its namespace and hostname) and wait for it."""
        kw.setdefault("env", self.env())
        return run(in_node(self.node(node), argv, self.spec), **kw)

    def popen_in_node(self, node: str, argv: Sequence[str], **kw) -> subprocess.Popen:
        """Start argv inside a node without waiting (e.g. one `xgen shell` script per node)."""
        kw.setdefault("env", self.env())
        kw.setdefault("start_new_session", True)
        return subprocess.Popen(in_node(self.node(node), argv, self.spec), **kw)

    def slurm(self, argv: Sequence[str], **kw) -> subprocess.CompletedProcess:
        """A Slurm client command against our controller, run as the controller host."""
        kw.setdefault("env", self.env())
        return run(in_ctl(self.spec, argv), **kw)

    # --- jobs (also the building blocks for the preemption/requeue tests)

    def sbatch(self, script: Path | str, *args: str, cwd: Path | str | None = None, env=None) -> int:
        """Submit a batch script; return its job id."""
        proc = self.slurm(["sbatch", "--parsable", *args, str(script)], cwd=cwd, env=self.env(env))
        return int(proc.stdout.strip().split(";")[0])

    def show_job(self, job_id: int) -> dict[str, str]:
        """`scontrol show job` as a flat dict (JobState, ExitCode, Restarts, StdOut, NodeList...)."""
        proc = self.slurm(["scontrol", "show", "job", "--oneliner", str(job_id)])
        return parse_scontrol(proc.stdout)

    def job_state(self, job_id: int) -> str:
        return self.show_job(job_id).get("JobState", "UNKNOWN")

    def wait_state(self, job_id: int, states: Iterable[str], timeout: float = 300, interval: float = 0.5):
        """Wait until the job is in one of `states`; return its `scontrol show job` dict."""
        wanted = set(states)

        def reached():
            info = self.show_job(job_id)
            return info if info.get("JobState") in wanted else None

        try:
            return wait_until(reached, timeout, f"job {job_id} to reach {sorted(wanted)}", interval)
        except HarnessError as err:
            raise HarnessError(f"{err}; last: {self.show_job(job_id)}") from None

    def wait_done(self, job_id: int, timeout: float = 300) -> dict[str, str]:
        """Wait until the job is finished (any final state)."""
        return self.wait_state(job_id, FINAL_STATES, timeout)

    def signal_batch(self, job_id: int, sig: str = "USR1") -> None:
        """Signal the batch shell only, as `#SBATCH --signal=B:SIG@N` does before the time limit."""
        self.slurm(["scancel", f"--signal={sig}", "--batch", str(job_id)])

    def signal_step(self, job_id: int, sig: str = "USR1", step: int = 0) -> None:
        self.slurm(["scancel", f"--signal={sig}", f"{job_id}.{step}"])

    def cancel(self, job_id: int) -> None:
        self.slurm(["scancel", str(job_id)], check=False)

    def node_pids(self, node: str) -> list[int]:
        """Every process inside a node's namespace (daemons included)."""
        proc = run(["ip", "netns", "pids", self.node(node).netns], check=False)
        return [int(p) for p in proc.stdout.split()]

    def lose_node(self, node: str) -> None:
        """The node dies for good, as a power loss would: all at once and silently. Every process in its
        namespace (slurmd, sshd, slurmstepd, the job's ranks) is first stopped, so none of them reacts
        (a shell that saw its child killed would report exit 137 to srun, a failed task instead of a lost
        node: measured), then its link goes down, so no peer sees a closing connection, then they are
        SIGKILLed. Slurm finds out by itself (SlurmdTimeout)."""
        for _ in range(3):  # a process forked while we stop is caught by the next round
            for pid in self.node_pids(node):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            time.sleep(0.1)
        run(["ip", "link", "set", self.node(node).veth, "down"])
        for pid in self.node_pids(node):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def restore_node(self, node: str, timeout: float = 90) -> None:
        """Bring a lost node back: its link up, its daemons again, RESUME in Slurm, wait until it is idle."""
        run(["ip", "link", "set", self.node(node).veth, "up"])
        _start_node_daemons(self.spec, self.paths, self.node(node))
        wait_until(
            lambda: (
                self.slurm(["scontrol", "update", f"NodeName={node}", "State=RESUME"], check=False).returncode
                == 0
                or "idle" in self._node_state(node)
            ),
            timeout,
            f"Slurm to accept {node} back",
            interval=1,
        )
        wait_until(lambda: self._node_state(node).startswith("idle"), timeout, f"{node} to be idle", 1)

    def _node_state(self, node: str) -> str:
        return self.slurm(["sinfo", "-h", "-n", node, "-o", "%t"], check=False).stdout.strip()

    def stopped_processes(self, node: str) -> list[int]:
        """Pids in a node that are stopped (state T: SIGSTOP), e.g. a rank a fault hook froze."""
        stopped = []
        for pid in self.node_pids(node):
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{pid}/stat").read_text()
                if stat.rpartition(")")[2].split()[0] == "T":
                    stopped.append(pid)
        return stopped

    def node_processes(self, node: str, contains: str) -> list[int]:
        """Pids in a node whose command line contains `contains` (for fault injection)."""
        return [pid for pid in self.node_pids(node) if contains in _cmdline(pid) and _alive(pid)]


def parse_scontrol(text: str) -> dict[str, str]:
    """Parse `scontrol show ... --oneliner` output into Key -> Value."""
    info: dict[str, str] = {}
    for m in re.finditer(r"(\S+?)=(\S*)", text.strip()):
        info.setdefault(m.group(1), m.group(2))
    if "JobState" in info:
        # ExitCode is "code:signal"; Restarts counts requeues.
        info.setdefault("Restarts", "0")
    return info


# ---------------------------------------------------------------- bring-up / tear-down


def _log(msg: str) -> None:
    print(f"[xgt-harness] {msg}", file=sys.stderr, flush=True)


def down(spec: ClusterSpec | None = None, quiet: bool = False) -> float:
    """Remove everything a (possibly crashed) bring-up made. Idempotent; returns seconds taken."""
    spec = spec or ClusterSpec()
    paths = Paths(spec.state_dir)
    start = time.monotonic()
    marker = str(spec.state_dir)
    if paths.pids.is_dir():
        # Controller first, so it does not mark nodes down and requeue while they stop.
        order = sorted(paths.pids.glob("*.pid"), key=lambda p: (not p.name.startswith("slurmctld"), p.name))
        for pid_file in order:
            if not pid_file.name.endswith("-own.pid") and "-own-" not in pid_file.name:
                kill_pid_file(pid_file, marker)
            else:
                pid_file.unlink(missing_ok=True)  # the daemons' own pid files name the same pids
    existing = set(run(["ip", "netns", "list"], check=False).stdout.split())
    for node in spec.nodes:
        if node.netns in existing:
            # Only our processes live in our namespaces: jobs, slurmstepd, sshd sessions.
            for pid in [int(p) for p in run(["ip", "netns", "pids", node.netns], check=False).stdout.split()]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            run(["ip", "netns", "del", node.netns], check=False)
        run(["ip", "link", "del", node.veth], check=False)
    run(["ip", "link", "del", spec.bridge], check=False)
    _rewrite_hosts([])
    SSH_CLIENT_CONF.unlink(missing_ok=True)
    seconds = time.monotonic() - start
    if not quiet:
        _log(f"tear-down took {seconds:.2f} s")
    return seconds


def _make_network(spec: ClusterSpec) -> None:
    run(["ip", "link", "add", spec.bridge, "type", "bridge"])
    run(["ip", "addr", "add", f"{spec.bridge_addr}/24", "dev", spec.bridge])
    run(["ip", "link", "set", spec.bridge, "up"])
    for node in spec.nodes:
        peer = f"{spec.prefix}-p{node.name[-1]}"
        run(["ip", "netns", "add", node.netns])
        run(["ip", "link", "add", node.veth, "type", "veth", "peer", "name", peer])
        run(["ip", "link", "set", peer, "netns", node.netns])
        run(["ip", "link", "set", node.veth, "master", spec.bridge])
        run(["ip", "link", "set", node.veth, "up"])
        ns = ["ip", "netns", "exec", node.netns]
        run([*ns, "ip", "link", "set", peer, "name", "eth0"])
        run([*ns, "ip", "addr", "add", f"{node.addr}/24", "dev", "eth0"])
        run([*ns, "ip", "link", "set", "eth0", "up"])
        run([*ns, "ip", "link", "set", "lo", "up"])


def _write_files(spec: ClusterSpec, paths: Paths) -> None:
    for sub in ("etc", "munge", "ssh", "log", "pid", "state", *(f"spool/d-{n.name}" for n in spec.nodes)):
        (paths.root / sub).mkdir(parents=True, exist_ok=True)
    paths.slurm_conf.write_text(slurm_conf(spec, paths))
    for node in spec.nodes:
        paths.node_tmp(node.name).mkdir(parents=True, exist_ok=True)
        paths.node_tmp(node.name).chmod(0o1777)
    paths.shared.mkdir(parents=True, exist_ok=True)
    (paths.slurm_conf.parent / "cgroup.conf").write_text(CGROUP_CONF)
    paths.munge_key.write_bytes(os.urandom(1024))
    paths.munge_key.chmod(0o400)
    (paths.root / "munge").chmod(0o700)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "xgt-harness", "-f", str(paths.ssh_key)])
    for node in spec.nodes:
        run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-f",
                str(paths.root / "ssh" / f"host_{node.name}"),
            ]
        )
        (paths.root / "ssh" / f"sshd_{node.name}.conf").write_text(sshd_conf(spec, paths, node))
    paths.ssh_known_hosts.write_text("")
    _rewrite_hosts(_hosts_lines(spec))
    SSH_CLIENT_CONF.write_text(_ssh_client_conf(spec, paths))


def _start_daemons(spec: ClusterSpec, paths: Paths) -> None:
    munge = paths.root / "munge"
    start_daemon(
        [
            "munged",
            "--foreground",
            "--force",
            f"--socket={paths.munge_socket}",
            f"--key-file={paths.munge_key}",
            f"--pid-file={munge}/munged-own.pid",
            f"--log-file={paths.logs}/munged.log",
            f"--seed-file={munge}/seed",
        ],
        paths.pid_file("munged"),
        paths.logs / "munged.out",
    )
    wait_until(paths.munge_socket.exists, 10, "munged's socket")
    conf = str(paths.slurm_conf)
    start_daemon(
        in_ctl(spec, ["slurmctld", "-D", "-i", "-f", conf]),
        paths.pid_file("slurmctld"),
        paths.logs / "slurmctld.out",
    )
    for node in spec.nodes:
        _start_node_daemons(spec, paths, node)


def _start_node_daemons(spec: ClusterSpec, paths: Paths, node: Node) -> None:
    """One node's slurmd and sshd (at bring-up, and when a lost node comes back)."""
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    start_daemon(
        in_node(node, ["slurmd", "-D", "-N", node.name, "-f", str(paths.slurm_conf)], spec),
        paths.pid_file(f"slurmd-{node.name}"),
        paths.logs / f"slurmd-{node.name}.out",
    )
    sshd = [
        shutil.which("sshd") or "/usr/sbin/sshd",
        "-D",
        "-e",
        "-f",
        str(paths.root / "ssh" / f"sshd_{node.name}.conf"),
    ]
    start_daemon(
        in_node(node, sshd, spec),
        paths.pid_file(f"sshd-{node.name}"),
        paths.logs / f"sshd-{node.name}.log",
    )


def _wait_ready(cluster: Cluster, timeout: float = 60) -> None:
    def nodes_idle():
        proc = cluster.slurm(["sinfo", "-h", "-N", "-o", "%N %t"], check=False)
        states = dict(line.split() for line in proc.stdout.splitlines() if line.strip())
        return all(states.get(n.name, "").startswith("idle") for n in cluster.nodes)

    wait_until(nodes_idle, timeout, "every slurmd node to be idle in sinfo", interval=0.2)
    for node in cluster.nodes:
        wait_until(
            lambda node=node: (
                run(
                    [
                        "ip",
                        "netns",
                        "exec",
                        node.netns,
                        "bash",
                        "-c",
                        f"exec 3<>/dev/tcp/{node.addr}/{cluster.spec.ssh_port}",
                    ],
                    check=False,
                ).returncode
                == 0
            ),
            timeout,
            f"sshd on {node.name}",
        )


def up(spec: ClusterSpec | None = None) -> Cluster:
    """Bring the cluster up from whatever state the machine is in; returns the running Cluster."""
    reason = missing_prerequisites()
    if reason:
        raise HarnessError(reason)
    spec = spec or ClusterSpec()
    down(spec, quiet=True)  # a crashed run's leftovers
    start = time.monotonic()
    paths = Paths(spec.state_dir)
    if paths.root.exists():
        shutil.rmtree(paths.root)
    try:
        _make_network(spec)
        _write_files(spec, paths)
        _start_daemons(spec, paths)
        cluster = Cluster(spec)
        _wait_ready(cluster)
    except BaseException:
        _log("bring-up failed; logs in " + str(paths.logs))
        for log in sorted(paths.logs.glob("*")) if paths.logs.is_dir() else []:
            _log(f"--- {log.name}:\n" + log.read_text(errors="replace")[-2000:])
        down(spec, quiet=True)
        raise
    cluster.up_seconds = time.monotonic() - start
    _log(f"bring-up took {cluster.up_seconds:.2f} s (state in {paths.root})")
    return cluster


@contextlib.contextmanager
def exclusive(lock_file: Path = Path("/var/tmp/xgt-cluster.lock"), timeout: float = 900):
    """Hold the machine-wide harness lock: two test sessions must not share the names and ports."""
    with open(lock_file, "w") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise HarnessError(
                        f"another test session holds {lock_file} for over {timeout:.0f} s"
                    ) from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    cmd = args[0] if args else "status"
    spec = ClusterSpec()
    if cmd == "up":
        up(spec)
    elif cmd == "down":
        down(spec)
    elif cmd == "status":
        cluster = Cluster(spec)
        print(cluster.slurm(["sinfo", "-N", "-l"], check=False).stdout)
        print(json.dumps({n.name: n.addr for n in spec.nodes}))
    else:
        print("usage: harness.py up|down|status", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
