"""The preflight in every job names the broken node and the fault within 90 s, before any model
loads. Faults are injected on node1 only (per-node mount namespaces, a renamed link, a packet filter in
node0's namespace, sshd's key file hidden on node1), as /work/shared/notes/fault-injection.md describes,
and healed in `finally` so a failing test never leaves a node broken for the next one.

Kept lean: six node-local and cross-node faults share ONE job (each check is independent of the others,
and each prints its own line); the blocked master port needs its own job, since it stops the exchange that
the cross-node checks ride on; the ssh fault fails in the DeepSpeed launcher's script in seconds.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import e2e
import harness
import pytest

FAKE_PEFT = "0.17.0"
# Fault 9: node0 shows two free GPUs, node1 one GPU that a stale process holds.
FAKE_NVIDIA_SMI = """#!/bin/sh
n=2; busy=0
if [ "$(hostname)" = node1 ]; then n=1; busy=1; fi
case "$1" in
  -L) i=0; while [ $i -lt $n ]; do echo "GPU $i: Fake GPU (UUID: GPU-fake-$i)"; i=$((i+1)); done ;;
  --query-compute-apps=*) [ $busy = 1 ] && echo "GPU-fake-0, 31337, 15000"; exit 0 ;;
esac
"""


def daemon_pid(cluster: harness.Cluster, name: str) -> str:
    """Pid of a node daemon (slurmd-node1, sshd-node1): its mount namespace is the node's view."""
    return cluster.paths.pid_file(name).read_text().split()[0]


@contextlib.contextmanager
def broken(cluster: harness.Cluster) -> Iterator[Callable[..., None]]:
    """`inject(argv, heal_argv)`: run argv now, heal_argv at the end (reverse order, errors ignored)."""
    heals: list[list[str]] = []

    def inject(argv: list[str], heal: list[str]) -> None:
        harness.run(argv)
        heals.append(heal)

    try:
        yield inject
    finally:
        for heal in reversed(heals):
            harness.run(heal, check=False)
        time.sleep(1.5)  # a renamed link needs about a second to carry traffic again


def in_ns(pid: str, *argv: str) -> list[str]:
    return ["nsenter", "-t", pid, "-m", "--", *argv]


def preflight_lines(out: str, node: str) -> list[str]:
    return re.findall(rf"(?m)^xgen: preflight: {node}: .*$", out)


def problem_lines(out: str, node: str) -> list[str]:
    """Lines naming `node` that are problems (not notes, warnings or the closing line)."""
    return [
        line
        for line in preflight_lines(out, node)
        if not re.search(r": (note|warning): |: stopping before training|: ok \(", line)
    ]


def submit(
    cluster: harness.Cluster, shared: Path, config: dict, env: dict | None = None
) -> tuple[dict[str, str], str, float]:
    script = e2e.render(shared, "slurm", e2e.write_config(shared, config))
    submitted = time.monotonic()
    job = cluster.sbatch(script, cwd=shared, env={**e2e.RUN_ENV, **(env or {})})
    info = cluster.wait_done(job, timeout=180)
    took = time.monotonic() - submitted
    out = Path(info["StdOut"]).read_text(errors="replace")
    print(f"--- {config['job']['name']}: {info['JobState']} {info['ExitCode']} after {took:.1f} s")
    print("\n".join(preflight_lines(out, "node0") + preflight_lines(out, "node1")))
    return info, out, took


def doctor_submit(cluster: harness.Cluster, shared: Path, cfg: Path, tag: str, env: dict | None = None):
    """`xgen doctor slurm CFG --submit`, as a user on the login node runs it; (exit status, its output)."""
    proc = cluster.slurm(
        [str(e2e.XGEN), "doctor", "slurm", str(cfg), "--submit", "-o", str(shared / f"doctor-{tag}.sh")],
        cwd=shared,
        env=cluster.env({**e2e.RUN_ENV, **(env or {})}),
        timeout=300,
        check=False,
    )
    print(
        f"--- xgen doctor slurm --submit ({tag}): exit {proc.returncode}\n{proc.stdout}{proc.stderr[-2000:]}"
    )
    return proc.returncode, proc.stdout + proc.stderr


def newest_report(shared: Path) -> dict:
    """The doctor's last JSON report (by time: job 10's name sorts before job 9's)."""
    return json.loads(max(shared.glob("xgen-doctor-*.json"), key=lambda p: p.stat().st_mtime).read_text())


def test_six_faults_on_node1_each_named_in_one_line(
    cluster: harness.Cluster, tiny: Path, shared_dir: Path
) -> None:
    """Faults 1, 2, 4, 5, 6, 8, 9 on node1: loopback hostname, NIC missing, peft version, model directory
    empty, output_dir private, 1 MiB /dev/shm, one GPU of two pinned and that one busy (a fake
    nvidia-smi on PATH that answers by hostname). The job fails fast; node0 is named in no problem line."""
    model = shared_dir / "model"
    shutil.copytree(tiny / "model", model)
    out_parent = shared_dir / "outparent"
    out_parent.mkdir()
    config = e2e.merge(
        e2e.base_config(tiny, shared_dir, name="xgt-preflight"),
        {
            # cuda: the preflight asks nvidia-smi; it stops the job before anything needs a real GPU.
            "cluster": {"preflight_timeout": 30, "device": "cuda"},
            "train": {
                "model_name_or_path": str(model),
                "output_dir": str(out_parent / "out"),
                "save_strategy": "steps",  # checkpoints: output_dir must be shared
                "save_steps": 1000,
            },
        },
    )
    hosts = Path("/etc/hosts").read_text()
    node1 = cluster.node("node1")
    assert f"{node1.addr} node1" in hosts
    fake_hosts = shared_dir / "hosts-node1"
    fake_hosts.write_text(hosts.replace(f"{node1.addr} node1", "127.0.1.1 node1"))
    dist = importlib.metadata.distribution("peft")
    real_peft = dist.version
    metadata = Path(str(dist.locate_file(next(f for f in dist.files or [] if f.name == "METADATA"))))
    fake_metadata = shared_dir / "peft-METADATA"
    fake_metadata.write_text(re.sub(r"(?m)^Version: .*$", f"Version: {FAKE_PEFT}", metadata.read_text()))
    fake_bin = shared_dir / "fake-bin"
    fake_bin.mkdir()
    (fake_bin / "nvidia-smi").write_text(FAKE_NVIDIA_SMI)
    (fake_bin / "nvidia-smi").chmod(0o755)
    pid = daemon_pid(cluster, "slurmd-node1")
    ip1 = ["ip", "-n", node1.netns, "link", "set"]
    with broken(cluster) as inject:
        inject(
            in_ns(pid, "mount", "--bind", str(fake_hosts), "/etc/hosts"), in_ns(pid, "umount", "/etc/hosts")
        )
        inject(
            in_ns(pid, "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", "/dev/shm"),
            in_ns(pid, "umount", "/dev/shm"),
        )
        inject(
            in_ns(pid, "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(model)),
            in_ns(pid, "umount", str(model)),
        )
        inject(
            in_ns(pid, "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(out_parent)),
            in_ns(pid, "umount", str(out_parent)),
        )
        inject(
            in_ns(pid, "mount", "--bind", str(fake_metadata), str(metadata)),
            in_ns(pid, "umount", str(metadata)),
        )
        inject([*ip1, "eth0", "down"], [*ip1, "eth0", "up"])
        inject([*ip1, "eth0", "name", "eth7"], [*ip1, "eth7", "name", "eth0"])
        inject([*ip1, "eth7", "up"], [*ip1, "eth7", "down"])
        path = {"PATH": f"{fake_bin}:{cluster.env()['PATH']}"}
        info, out, took = submit(cluster, shared_dir, config, path)
        # `xgen doctor slurm` runs the same preflight: the same lines, exit 3, no bandwidth test.
        doctor_rc, doctor_out = doctor_submit(cluster, shared_dir, shared_dir / "xgen.yaml", "faults", path)
    assert info["JobState"] == "FAILED", (info, out[-5000:])
    assert info["ExitCode"].split(":")[0] == "3", (info["ExitCode"], out[-5000:])
    assert took < 90, f"took {took:.0f} s:\n{out[-5000:]}"
    assert "xgen-runtime: world_size" not in out, "training started despite the faults"
    expected = {
        "1 loopback hostname": r"hostname: node1 resolves to loopback 127\.0\.1\.1 here",
        "2 nic": r"cluster\.nic: no interface eth0 here \(has: eth7, lo\); set cluster\.nic",
        "4 version skew": rf"versions: peft {FAKE_PEFT} here, {re.escape(real_peft)} on node0",
        "5 model missing": rf"train\.model_name_or_path: {re.escape(str(model))} is empty here",
        "6 output_dir not shared": r"train\.output_dir: .*/outparent/out is not shared with node0 .*needs it",
        "8 small /dev/shm": r"/dev/shm: 1\.0 MiB here .*below cluster\.min_shm_gb=1",
        "9 fewer GPUs": r"cluster\.devices_per_node: 2 pinned but 1 GPUs visible here \(nvidia-smi -L\)",
        "9 busy GPU": r"devices: GPU 0 is busy: pid 31337 holds 15000 MiB; stop the stale process",
    }
    lines = problem_lines(out, "node1")
    missing = [name for name, pattern in expected.items() if not any(re.search(pattern, x) for x in lines)]
    assert not missing, f"no line for {missing}; node1's lines:\n" + "\n".join(lines) + "\n" + out[-4000:]
    assert len(lines) == len(expected), "one line per problem:\n" + "\n".join(lines)
    assert not problem_lines(out, "node0"), "node0 is healthy:\n" + "\n".join(problem_lines(out, "node0"))
    assert doctor_rc == 3, doctor_out[-4000:]
    assert sorted(problem_lines(doctor_out, "node1")) == sorted(lines), doctor_out[-4000:]
    assert "xgen: doctor: results" not in doctor_out


def test_blocked_master_port_named_before_the_rendezvous_timeout(
    cluster: harness.Cluster, tiny: Path, shared_dir: Path
) -> None:
    """Fault 3: node0's packet filter drops node1's SYNs to the master port (no RST)."""
    if shutil.which("iptables") is None:
        pytest.skip("iptables not installed (apt-get install iptables; scripts/setup.sh does)")
    port = 29655
    config = e2e.merge(
        e2e.base_config(tiny, shared_dir, name="xgt-portblock"),
        {"cluster": {"master_port": port, "preflight_timeout": 20, "rdzv_timeout": 600}},
    )
    rule = ["-p", "tcp", "-s", cluster.node("node1").addr, "--dport", str(port), "-j", "DROP"]
    ns0 = ["ip", "netns", "exec", cluster.node("node0").netns, "iptables"]
    with broken(cluster) as inject:
        inject([*ns0, "-I", "INPUT", *rule], [*ns0, "-D", "INPUT", *rule])
        info, out, took = submit(cluster, shared_dir, config)
    assert info["JobState"] == "FAILED" and info["ExitCode"].split(":")[0] == "3", (info, out[-5000:])
    assert took < 90, f"took {took:.0f} s (rdzv_timeout is 600):\n{out[-5000:]}"
    lines = problem_lines(out, "node1")
    assert any(
        re.search(rf"cluster\.master_port: cannot reach the master node0:{port} .*timed out", x)
        for x in lines
    ), "\n".join(preflight_lines(out, "node1")) + "\n" + out[-4000:]
    assert "xgen-runtime: world_size" not in out


def test_deepspeed_ssh_batchmode_failure_names_node1(
    cluster: harness.Cluster, tiny: Path, shared_dir: Path
) -> None:
    """Fault 7: node1's sshd no longer accepts the key, so `ssh -o BatchMode=yes node1` fails (255)."""
    config = e2e.merge(
        e2e.base_config(tiny, shared_dir, name="xgt-ds-ssh"),
        {"launcher": "deepspeed", "cluster": {"master_port": 29661, "ssh_port": cluster.spec.ssh_port}},
    )
    cfg = e2e.write_config(shared_dir, config)
    script = e2e.render(shared_dir, "deepspeed", cfg, "--hostfile", str(shared_dir / "hostfile"))
    empty = shared_dir / "no-keys"
    empty.write_text("")
    pid = daemon_pid(cluster, "sshd-node1")
    keys = f"{cluster.paths.ssh_key}.pub"
    with broken(cluster) as inject:
        inject(in_ns(pid, "mount", "--bind", str(empty), keys), in_ns(pid, "umount", keys))
        started = time.monotonic()
        proc = cluster.run_in_node(
            "node0",
            ["bash", str(script)],
            cwd=shared_dir,
            timeout=120,
            check=False,
            env=cluster.env(e2e.RUN_ENV),
        )
        took = time.monotonic() - started
    out = proc.stdout + proc.stderr
    print(f"--- deepspeed: exit {proc.returncode} after {took:.1f} s")
    print("\n".join(preflight_lines(out, "node0") + preflight_lines(out, "node1")))
    assert proc.returncode == 3, out[-5000:]
    assert took < 90, f"took {took:.0f} s"
    lines = problem_lines(out, "node1")
    assert len(lines) == 1 and re.search(
        r"ssh: `ssh -o BatchMode=yes .*node1 true` from node0 failed \(exit 255\): .*Permission denied",
        lines[0],
    ), out[-5000:]
    assert not problem_lines(out, "node0"), out[-5000:]
    assert "pdsh" not in out, "the DeepSpeed launcher started despite the ssh failure"


def test_doctor_clean_then_throttled_link(cluster: harness.Cluster, tiny: Path, shared_dir: Path) -> None:
    """`xgen doctor slurm --submit` on the clean cluster: exit 0, a row per node, busbw across nodes and a
    JSON report; then node1's link shaped with tbf both ways (no netem here): it warns about bandwidth."""
    config = e2e.merge(
        e2e.base_config(tiny, shared_dir, name="xgt-doctor"), {"cluster": {"preflight_timeout": 30}}
    )
    cfg = e2e.write_config(shared_dir, config)
    rc, out = doctor_submit(cluster, shared_dir, cfg, "clean")
    assert rc == 0, out[-5000:]
    assert re.search(r"(?m)^node0 .*passed", out) and re.search(r"(?m)^node1 .*passed", out), out
    assert re.search(r"(?m)^all ranks .* 4 ", out), out
    reports = sorted(shared_dir.glob("xgen-doctor-*.json"))
    assert len(reports) == 1, reports
    clean = json.loads(reports[0].read_text())
    assert [n["host"] for n in clean["nodes"]] == ["node0", "node1"] and clean["world_size"] == 4
    assert clean["cross_node_busbw_gbps"] > 0
    assert "cross-node busbw" not in out, out  # the clean link is not named slow
    node1 = cluster.node("node1")
    tbf = ["root", "tbf", "rate", "100mbit", "burst", "64kb", "latency", "400ms"]
    with broken(cluster) as inject:
        inject(
            ["tc", "qdisc", "add", "dev", node1.veth, *tbf], ["tc", "qdisc", "del", "dev", node1.veth, "root"]
        )
        inject(
            ["tc", "-n", node1.netns, "qdisc", "add", "dev", "eth0", *tbf],
            ["tc", "-n", node1.netns, "qdisc", "del", "dev", "eth0", "root"],
        )
        rc, out = doctor_submit(cluster, shared_dir, cfg, "slow")
    assert rc == 0, out[-5000:]  # warnings do not fail the doctor
    slow = newest_report(shared_dir)
    assert slow["cross_node_busbw_gbps"] < clean["cross_node_busbw_gbps"] / 2, (slow, clean)
    assert re.search(
        r"xgen: doctor: warning: node0, node1: cross-node busbw .* under a tenth of eth0's link speed "
        r"\(10 Gbit/s\)",
        out,
    ), out


def test_doctor_names_a_slow_link_without_nic(cluster: harness.Cluster, tiny: Path, shared_dir: Path) -> None:
    """The field trap (`NCCL_IB_DISABLE=1`: "it runs, but slowly") with neither `cluster.nic` nor
    `cluster.min_bandwidth_gbps`: the doctor finds eth0 as the route to MASTER_ADDR and reads its speed (a
    veth: 10000 Mb/s); clean, it names no link; with node1's link shaped by tbf both ways, ONE warning line
    names eth0, its speed and the cross-node busbw."""
    config = e2e.merge(
        e2e.base_config(tiny, shared_dir, name="xgt-doctor-nonic"),
        {"cluster": {"nic": None, "ib_disable": True, "preflight_timeout": 30}},
    )
    assert "nic" not in config["cluster"] and "min_bandwidth_gbps" not in config["cluster"]
    cfg = e2e.write_config(shared_dir, config)

    def doctor(tag: str) -> str:
        rc, out = doctor_submit(cluster, shared_dir, cfg, tag)
        assert rc == 0, out[-5000:]  # warnings do not fail the doctor
        result = newest_report(shared_dir)
        intra = ", ".join(f"{n['intra_busbw_gbps']:.3f}" for n in result["nodes"])
        print(
            f"--- {tag}: cross-node busbw {result['cross_node_busbw_gbps']:.4f} GB/s, intra-node {intra} GB/s"
        )
        assert [(n["host"], n["nic"], n["nic_from"], n["link_mbps"]) for n in result["nodes"]] == [
            (host, "eth0", "route to MASTER_ADDR", 10000) for host in ("node0", "node1")
        ], result["nodes"]
        return out

    out = doctor("clean-nonic")
    assert "cross-node busbw" not in out, out
    node1 = cluster.node("node1")
    tbf = ["root", "tbf", "rate", "100mbit", "burst", "64kb", "latency", "400ms"]
    with broken(cluster) as inject:
        inject(
            ["tc", "qdisc", "add", "dev", node1.veth, *tbf], ["tc", "qdisc", "del", "dev", node1.veth, "root"]
        )
        inject(
            ["tc", "-n", node1.netns, "qdisc", "add", "dev", "eth0", *tbf],
            ["tc", "-n", node1.netns, "qdisc", "del", "dev", "eth0", "root"],
        )
        out = doctor("slow-nonic")
    lines = re.findall(r"(?m)^xgen: doctor: warning: .*cross-node busbw.*$", out)
    assert len(lines) == 1, out[-5000:]
    assert re.fullmatch(
        r"xgen: doctor: warning: node0, node1: cross-node busbw \d\.\d{3} GB/s \(\d+\.\d\d Gbit/s\) is "
        r"under a tenth of eth0's link speed \(10 Gbit/s, the route to MASTER_ADDR\) and a twentieth of the "
        r"intra-node \d\.\d{3} GB/s; NCCL_IB_DISABLE=1 is set, so NCCL uses TCP sockets: .* check eth0 .*"
        r"cluster\.nic.*",
        lines[0],
    ), lines[0]
