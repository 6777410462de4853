"""Each preflight check on its own, fast and without a cluster (the cluster proof is
tests/cluster/test_e2e_preflight.py). Fake nvidia-smi / npu-smi / ssh on PATH, real sockets on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from runtime.preflight import EXIT_PREFLIGHT, devices, exchange, inputs, network, resources, ssh, versions
from runtime.preflight.findings import Finding
from runtime.preflight.run import _bounded
from runtime.preflight.settings import Settings, from_args

REPO = Path(__file__).resolve().parents[3]


def settings(**kw) -> Settings:
    base = {"config": "x.yaml", "host": "nodeX", "nnodes": 2, "master_addr": "127.0.0.1"}
    return Settings(**{**base, **kw})


def test_exit_status_is_distinct():
    # 1 = training failed (torchrun), 2 = bad config, 75 = checkpointed for requeue, 124/137 = timeout(1).
    assert EXIT_PREFLIGHT == 3


def test_line_format():
    f = Finding("node1", "cluster.nic", "no interface eth0 here (has: lo, ib0)", "set cluster.nic")
    assert (
        f.line()
        == "xgen: preflight: node1: cluster.nic: no interface eth0 here (has: lo, ib0); set cluster.nic"
    )
    w = Finding("node0", "clock", "9 s off", "run chrony", level="warning")
    assert w.line() == "xgen: preflight: node0: clock: warning: 9 s off; run chrony"
    assert Finding.from_json(json.loads(json.dumps(w.to_json()))) == w


# --- check 1: names -----------------------------------------------------------------------------------


def test_loopback_hostname_and_master(monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "node1")
    table = {"node1": "127.0.1.1", "node0": "10.0.0.10"}
    monkeypatch.setattr(network, "resolve", lambda name: table.get(name))
    lines = [f.line() for f in network.check_names(settings(master_addr="node0"))]
    assert len(lines) == 1 and "hostname: node1 resolves to loopback 127.0.1.1 here" in lines[0]
    table["node0"] = "127.0.0.1"
    lines = [f.line() for f in network.check_names(settings(master_addr="node0"))]
    assert any("cluster.master_addr: node0 resolves to loopback 127.0.0.1" in x for x in lines)
    table.clear()
    lines = [f.line() for f in network.check_names(settings(master_addr="node0"))]
    assert any("node1 does not resolve here" in x for x in lines)
    assert any("cluster.master_addr: node0 does not resolve here" in x for x in lines)
    # One node: loopback is fine.
    assert network.check_names(settings(nnodes=1, master_addr="node0")) == []


def test_real_address_passes(monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "node1")
    monkeypatch.setattr(network, "resolve", lambda name: "10.0.0.11")
    assert network.check_names(settings(master_addr="node0")) == []


# --- check 2: NIC --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "nic,names,ok",
    [
        ("eth0", ["lo", "eth0"], True),
        ("eth", ["lo", "eth0"], True),  # NCCL matches by prefix
        ("=eth", ["lo", "eth0"], False),  # "=" means exact names
        ("=eth0", ["lo", "eth0"], True),
        ("eth0,ib0", ["lo", "ib0"], True),  # a list passes when any one exists
        ("eth0,ib0", ["lo", "eth7"], False),
        ("^docker", ["lo"], None),  # an exclusion list cannot be missing
    ],
)
def test_nic_semantics(nic, names, ok):
    assert network.nic_matches(nic, names) is ok


def test_missing_nic_line(tmp_path):
    for name in ("lo", "ib0"):
        (tmp_path / name).mkdir()
    (line,) = [f.line() for f in network.check_nic(settings(nic="eth0"), str(tmp_path))]
    assert line == (
        "xgen: preflight: nodeX: cluster.nic: no interface eth0 here (has: ib0, lo); "
        "set cluster.nic to an interface every node has, or a comma list"
    )
    assert network.check_nic(settings(nic="eth0,ib0"), str(tmp_path)) == []


def test_ib_disable_is_a_warning(monkeypatch):
    monkeypatch.delenv("NCCL_IB_DISABLE", raising=False)
    assert network.check_ib(settings()) == []
    (f,) = network.check_ib(settings(ib_disable=True))
    assert f.level == "warning" and "slow" in f.wrong
    monkeypatch.setenv("NCCL_IB_DISABLE", "1")
    assert network.check_ib(settings())[0].level == "warning"


# --- check 8: /dev/shm and disk ----------------------------------------------------------------------


def fake_statvfs(total: int, free: int):
    return lambda path: SimpleNamespace(f_blocks=total // 4096, f_frsize=4096, f_bavail=free // 4096)


def test_small_shm(monkeypatch):
    monkeypatch.setattr(os, "statvfs", fake_statvfs(64 << 20, 60 << 20))
    (line,) = [f.line() for f in resources.check_shm(settings(min_shm_gb=1))]
    assert "/dev/shm: 64.0 MiB here (60.0 MiB free), below cluster.min_shm_gb=1" in line
    assert resources.check_shm(settings(min_shm_gb=0)) == []  # 0 turns it off
    monkeypatch.setattr(os, "statvfs", fake_statvfs(16 << 30, 16 << 30))
    assert resources.check_shm(settings(min_shm_gb=1)) == []


def test_disk_for_the_whole_run(monkeypatch, tmp_path):
    full = SimpleNamespace(finetuning_type="full", save_strategy="steps", save_only_model=False)
    assert resources.checkpoint_bytes(full, 1000) == 4000
    assert resources.checkpoint_bytes(SimpleNamespace(finetuning_type="lora"), 1000) == 50
    assert resources.checkpoint_bytes(full, 0) == 0  # a hub id: size unknown, nothing checked
    # How many checkpoints exist at once: every one without save_total_limit, else the limit + 1 staging.
    run = dict(finetuning_type="full", save_strategy="steps", save_only_model=False, num_train_epochs=3)
    every = SimpleNamespace(**run, max_steps=1000, save_steps=100, save_total_limit=None)
    assert resources.checkpoints_at_once(every)[0] == 10
    assert resources.run_bytes(every, 1000)[0] == 10 * 4000 + 1000  # + the final weights
    limited = SimpleNamespace(**run, max_steps=1000, save_steps=100, save_total_limit=2)
    assert resources.checkpoints_at_once(limited) == (3, "save_total_limit")
    by_epoch = SimpleNamespace(**{**run, "save_strategy": "epoch"}, max_steps=-1, save_steps=500,
                               save_total_limit=None)  # fmt: skip
    assert resources.checkpoints_at_once(by_epoch)[0] == 3
    unknown = SimpleNamespace(**run, max_steps=-1, save_steps=500, save_total_limit=None)
    assert resources.checkpoints_at_once(unknown)[0] == 1  # epochs saved by steps: depends on the data
    monkeypatch.setattr(os, "statvfs", fake_statvfs(10 << 30, 1 << 30))
    need, detail = resources.run_bytes(every, 1 << 28)
    (line,) = [f.line() for f in resources.check_disk(settings(), tmp_path / "a" / "b", need, detail)]
    assert f"1.0 GiB free under {tmp_path}, the run's saves need about 10.2 GiB: 10 x 1.0 GiB" in line
    assert "set save_total_limit" in line
    assert resources.check_disk(settings(), tmp_path, 1 << 20) == []


# --- check 4: versions ---------------------------------------------------------------------------------


def test_versions_from_metadata_without_importing():
    found = versions.collect()
    assert found["python"].count(".") == 2 and "peft" in found and "torch" in found


def test_version_skew_names_package_and_both_versions():
    mine = {"python": "3.11.7", "peft": "0.21.2", "torch": "2.5.0"}
    (f,) = versions.compare("node0", mine, "node1", {**mine, "peft": "0.17.0"})
    assert f.line().startswith("xgen: preflight: node1: versions: peft 0.17.0 here, 0.21.2 on node0; install")
    assert versions.compare("node0", mine, "node1", dict(mine)) == []


# --- checks 5 and 6: files -------------------------------------------------------------------------


def make_run(root: Path) -> Path:
    """A config in root with a fake model, a dataset and a DeepSpeed JSON (no torch needed)."""
    (root / "model").mkdir(parents=True)
    (root / "model" / "config.json").write_text('{"model_type": "llama"}')
    (root / "model" / "model.safetensors").write_bytes(b"\0" * 4096)
    (root / "data").mkdir()
    (root / "data" / "dataset_info.json").write_text(json.dumps({"tiny": {"file_name": "tiny.json"}}))
    (root / "data" / "tiny.json").write_text('[{"instruction": "a", "output": "b"}]')
    (root / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    train = {
        "model_name_or_path": str(root / "model"),
        "dataset": "tiny",
        "dataset_dir": "data",
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "output_dir": "out",
        "deepspeed": "ds.json",
        "save_strategy": "no",
    }
    config = root / "xgen.yaml"
    config.write_text(yaml.safe_dump({"cluster": {"nodes": 2}, "train": train}))
    return config


def local_facts(root: Path, s: Settings):
    from runtime.config import load_config

    cfg = load_config(root / "xgen.yaml")
    raw = yaml.safe_load((root / "xgen.yaml").read_text())["train"]
    items = inputs.inputs(cfg, raw, str(root))
    return cfg, items, inputs.check_local(s, items)


def test_inputs_found(tmp_path, monkeypatch):
    make_run(tmp_path)
    monkeypatch.chdir(tmp_path)
    _, items, (found, facts) = local_facts(tmp_path, settings(workdir=str(tmp_path)))
    keys = [k for k, _, _ in items]
    assert keys == [
        "train.model_name_or_path",
        "train.deepspeed",
        "train.dataset_dir",
        "train.dataset (tiny)",
    ]
    assert found == []
    assert facts["train.model_name_or_path"]["files"]["config.json"][2]  # small files are hashed
    assert inputs.model_bytes(facts) == 4096


def test_empty_model_dir_and_missing_dataset(tmp_path, monkeypatch):
    make_run(tmp_path)
    monkeypatch.chdir(tmp_path)
    for f in (tmp_path / "model").iterdir():
        f.unlink()
    (tmp_path / "data" / "tiny.json").unlink()
    _, _, (found, _) = local_facts(tmp_path, settings(workdir=str(tmp_path)))
    lines = [f.line() for f in found]
    assert (
        f"xgen: preflight: nodeX: train.model_name_or_path: {tmp_path}/model is empty here; put it"
        in lines[0]
    )
    assert f"train.dataset (tiny): {tmp_path}/data/tiny.json not found here" in lines[1]
    assert len(lines) == 2


def test_files_compared_across_nodes(tmp_path, monkeypatch):
    make_run(tmp_path / "a")
    make_run(tmp_path / "b")
    monkeypatch.chdir(tmp_path / "a")
    _, _, (_, mine) = local_facts(tmp_path / "a", settings())
    (tmp_path / "b" / "model" / "config.json").write_text('{"model_type": "qwen2"}')
    (tmp_path / "b" / "model" / "model.safetensors").write_bytes(b"\0" * 100)
    monkeypatch.chdir(tmp_path / "b")
    _, _, (_, theirs) = local_facts(tmp_path / "b", settings())
    for facts in (mine, theirs):  # same paths on both "nodes", as on a real cluster
        for key in facts:
            facts[key]["path"] = key
    (f,) = inputs.compare("node0", mine, "node1", theirs)
    assert f.host == "node1" and f.what == "train.model_name_or_path"
    assert "config.json content" in f.wrong and "model.safetensors size 100 vs 4096" in f.wrong
    theirs["train.deepspeed"] = {"exists": False, "dir": False, "files": {}, "path": "ds.json"}
    assert any(
        x.what == "train.deepspeed" and "exists on node0 but not here" in x.wrong
        for x in inputs.compare("node0", mine, "node1", theirs)
    )
    assert inputs.compare("node0", mine, "node1", mine) == []


def test_when_output_dir_must_be_shared():
    cfg = SimpleNamespace(save_strategy="no", load_best_model_at_end=False, strategy="ddp")
    assert inputs.needs_shared_output(cfg) is None
    assert "checkpoints" in inputs.needs_shared_output(SimpleNamespace(save_strategy="steps"))
    assert "ZeRO-3" in inputs.needs_shared_output(
        SimpleNamespace(save_strategy="no", strategy="deepspeed-z3")
    )
    assert "load_best" in inputs.needs_shared_output(
        SimpleNamespace(save_strategy="no", load_best_model_at_end=True)
    )


def test_output_dir_probe(tmp_path):
    name, why = inputs.write_probe(tmp_path / "out", "node1", "abc")
    assert why is None and (tmp_path / "out" / name).exists()
    mine = {"output_dir": str(tmp_path / "out"), "shared_needed": "checkpoints are saved"}
    assert exchange.shared_output("node0", mine, "node1", {"probe": name}) == []
    (f,) = exchange.shared_output("node0", mine, "node1", {"probe": ".xgen-preflight-node1-zzz"})
    assert f.level == "error" and "is not shared with node0" in f.wrong and f.host == "node1"
    (w,) = exchange.shared_output("node0", {**mine, "shared_needed": None}, "node1", {"probe": "nope"})
    assert w.level == "warning"
    inputs.remove_probe(tmp_path / "out", name)
    assert not (tmp_path / "out" / name).exists()


# --- check 9: devices (fake vendor tools) ------------------------------------------------------------

NVIDIA_SMI = """#!/bin/sh
# fake: {n} GPUs; GPU 1 held by pid 4242 when BUSY=1
case "$1" in
  -L) i=0; while [ $i -lt {n} ]; do echo "GPU $i: NVIDIA H100 (UUID: GPU-uuid-$i)"; i=$((i+1)); done ;;
  --query-compute-apps=*) [ "${{BUSY:-0}}" = 1 ] && echo "GPU-uuid-1, 4242, 20480" ; exit 0 ;;
esac
"""
NPU_SMI = """#!/bin/sh
# fake: 8 NPUs, NPU 3 held by pid 777
if [ "$1" = info ] && [ "$2" = -l ]; then echo "        Total Count                    : 8"; exit 0; fi
if [ "$1" = info ]; then
cat <<'EOF'
+---------------------------+---------------+----------------------------------------------------+
| NPU     Chip              | Process id    | Process name             | Process memory(MB)      |
+===========================+===============+====================================================+
| 3       0                 | 777           | python3.10               | 3000                    |
+===========================+===============+====================================================+
| No running processes found in NPU 4                                                            |
EOF
fi
"""


@pytest.fixture
def fake_bin(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("ASCEND_RT_VISIBLE_DEVICES", raising=False)

    def add(name: str, body: str) -> None:
        (bindir / name).write_text(body)
        (bindir / name).chmod(0o755)

    return add


def test_fewer_gpus_than_pinned(fake_bin):
    fake_bin("nvidia-smi", NVIDIA_SMI.format(n=4))
    (f,) = devices.check_devices(settings(device="cuda", devices_per_node=8))
    assert f.line().startswith(
        "xgen: preflight: nodeX: cluster.devices_per_node: 8 pinned but 4 GPUs visible here (nvidia-smi -L)"
    )
    assert devices.check_devices(settings(device="auto", devices_per_node=4)) == []


def test_cuda_visible_devices_counts(fake_bin, monkeypatch):
    fake_bin("nvidia-smi", NVIDIA_SMI.format(n=4))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,2")
    (f,) = devices.check_devices(settings(device="cuda", devices_per_node=4))
    assert "2 GPUs visible here (CUDA_VISIBLE_DEVICES)" in f.wrong


def test_busy_gpu(fake_bin, monkeypatch):
    fake_bin("nvidia-smi", NVIDIA_SMI.format(n=4))
    monkeypatch.setenv("BUSY", "1")
    (f,) = devices.check_devices(settings(device="auto"))
    assert f.line().startswith(
        "xgen: preflight: nodeX: devices: GPU 1 is busy: pid 4242 holds 20480 MiB; stop"
    )
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,2")  # the busy GPU is not ours
    assert devices.check_devices(settings(device="auto")) == []


def test_busy_npu_and_count(fake_bin):
    fake_bin("npu-smi", NPU_SMI)
    found = devices.check_devices(settings(device="auto", devices_per_node=16))
    lines = [f.line() for f in found]
    assert "cluster.devices_per_node: 16 pinned but 8 NPUs visible here (npu-smi info -l)" in lines[0]
    assert "devices: NPU 3 is busy: pid 777 holds 3000 MB" in lines[1]
    assert len(lines) == 2


def test_no_tools_says_so_once(fake_bin):
    (f,) = devices.check_devices(settings(device="auto"))
    assert f.level == "note" and "no npu-smi or nvidia-smi" in f.wrong
    assert devices.check_devices(settings(device="cpu")) == []


def test_hanging_tool_is_cut_off(fake_bin, monkeypatch):
    fake_bin("nvidia-smi", "#!/bin/sh\nsleep 30\n")
    monkeypatch.setattr(devices, "TOOL_TIMEOUT", 0.5)
    start = time.monotonic()
    (f,) = devices.check_devices(settings(device="cuda"))
    assert time.monotonic() - start < 5
    assert f.level == "note" and "did not answer within" in f.wrong


def test_bounded_check_cannot_hang():
    value, why = _bounded(lambda: time.sleep(30), 0.2)
    assert value is None and "did not finish within" in why


# --- check 3 and the exchange over real sockets --------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_exchange_compares_versions_and_output_dir(tmp_path):
    port = free_port()
    master_s = settings(host="node0", node_rank=0, master_port=port, timeout=10)
    client_s = settings(host="node1", node_rank=1, master_port=port, timeout=10)
    out_dir = tmp_path / "out"
    mine = {"versions": {"peft": "0.21.2"}, "inputs": {}, "output_dir": str(out_dir), "shared_needed": "x"}
    probe, _ = inputs.write_probe(tmp_path / "private", "node1", "n")  # a dir node0 does not look in
    theirs = {
        "host": "node1",
        "node_rank": 1,
        "versions": {"peft": "0.17.0"},
        "inputs": {},
        "probe": probe,
        "errors": 0,
    }
    master = exchange.Master(master_s)
    assert master.start()
    result = {}
    client = threading.Thread(
        target=lambda: result.update(
            r=exchange.report(client_s, theirs, time.monotonic() + 10, time.monotonic() + 15)
        )
    )
    client.start()
    start = time.monotonic()
    master.collect(time.monotonic() + 10)
    master.compare(mine)
    total = master.finish(0)
    client.join(10)
    assert time.monotonic() - start < 8  # ends when everyone reported, not at the deadline
    assert master.probe_ok, master.probe_error
    lines = [f.line() for f in master.findings]
    assert any("node1: versions: peft 0.17.0 here, 0.21.2 on node0" in x for x in lines), lines
    assert any("node1: train.output_dir:" in x and "not shared with node0" in x for x in lines), lines
    assert total == 2
    assert result["r"] == ([], 2)  # the client learns the job-wide verdict
    # The master port is free again for torch.distributed right after.
    with socket.create_server(("", port)):
        pass


def test_unreachable_master_is_named_within_the_window():
    port = free_port()  # nothing listens: refused
    s = settings(host="node1", node_rank=1, master_port=port, timeout=2)
    start = time.monotonic()
    found, errors = exchange.report(s, {}, time.monotonic() + 2, time.monotonic() + 3)
    assert time.monotonic() - start < 4
    (f,) = found
    assert errors == 1 and f.what == "cluster.master_port"
    assert f"cannot reach the master 127.0.0.1:{port} from here within 2 s (refused" in f.wrong


def test_silent_node_and_wrong_master_addr_named_by_master():
    port = free_port()
    s = settings(
        host="node0",
        node_rank=0,
        master_addr="192.0.2.1",
        master_port=port,
        timeout=3,
        hosts=("node0", "node1"),
    )
    master = exchange.Master(s)
    assert master.start()
    master.collect(time.monotonic() + 3)
    lines = [f.line() for f in master.findings]
    assert any(x.startswith("xgen: preflight: node1: preflight: did not report to node0") for x in lines), (
        lines
    )
    assert any("cluster.master_addr: 192.0.2.1:" in x and "does not lead to this node" in x for x in lines), (
        lines
    )


def test_master_port_in_use():
    with socket.create_server(("", 0)) as busy:
        port = busy.getsockname()[1]
        master = exchange.Master(settings(host="node0", master_port=port))
        assert not master.start()
        assert f"port {port} is already in use here" in master.findings[0].wrong


# --- check 7: ssh --------------------------------------------------------------------------------------


def test_ssh_batchmode_failure_gives_ssh_reason(fake_bin):
    fake_bin(
        "ssh",
        '#!/bin/sh\nfor last; do :; done\ncase "$*" in *node1*) echo "root@node1: Permission denied '
        '(publickey)." >&2; exit 255;; esac\nexit 0\n',
    )
    s = settings(ssh_hosts=("node0", "node1"), ssh_port=2222)
    (f,) = ssh.check_ssh(s)
    assert f.host == "node1" and f.what == "ssh"
    assert "`ssh -o BatchMode=yes -o ConnectTimeout=10 -p 2222 node1 true`" in f.wrong
    assert f.wrong.endswith("failed (exit 255): root@node1: Permission denied (publickey).")


def test_remote_command_quotes_and_sets_rank():
    s = settings(workdir="/runs/my run", python="/venv/bin/python", ssh_hosts=("a", "b"), device="cuda")
    argv = [
        "cfg.yaml",
        "--workdir",
        "/runs/my run",
        "--ssh",
        "a,b",
        "--python",
        "/venv/bin/python",
        "--nnodes",
        "2",
    ]
    cmd = ssh.remote_command(s, 1, argv)
    assert cmd.startswith("cd '/runs/my run' && exec /venv/bin/python -m runtime.preflight cfg.yaml")
    assert "--ssh" not in cmd and cmd.endswith("--nnodes 2 --node-rank 1 --hosts a,b")


# --- the command as the scripts run it ----------------------------------------------------------------


def run_preflight(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runtime.preflight", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_command_ok_and_torch_free(tmp_path):
    config = make_run(tmp_path)
    probe = (
        "import sys, runtime.preflight.run as r; rc = r.main(sys.argv[1:]); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'datasets')))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, str(config), "--workdir", str(tmp_path), "--device", "cpu"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.stdout.strip().endswith("[]"), proc.stdout + proc.stderr
    assert "xgen: preflight: " in proc.stderr and ": ok (" in proc.stderr, proc.stderr


def test_command_fails_with_exit_3_and_one_line(tmp_path):
    config = make_run(tmp_path)
    (tmp_path / "ds.json").unlink()
    proc = run_preflight(str(config), "--workdir", str(tmp_path), "--device", "cpu", cwd=tmp_path)
    assert proc.returncode == EXIT_PREFLIGHT, proc.stderr
    problems = [
        x for x in proc.stderr.splitlines() if x.startswith("xgen: preflight:") and "stopping" not in x
    ]
    assert problems == [
        f"xgen: preflight: {socket.gethostname()}: train.deepspeed: {tmp_path}/ds.json not found here; "
        "put it on a filesystem every node mounts at the same path (or copy it to every node)"
    ]


def test_settings_from_script_arguments():
    s = from_args(["c.yaml", "--master-port", "auto", "--devices-per-node", "auto", "--hosts", "n0,n1"])
    assert s.master_port is None and s.devices_per_node is None and s.name_of(1) == "n1"
    s = from_args(
        [
            "c.yaml",
            "--master-port",
            "29500",
            "--devices-per-node",
            "8",
            "--timeout",
            "90",
            "--rdzv-timeout",
            "20",
        ]
    )
    assert s.master_port == 29500 and s.devices_per_node == 8 and s.exchange_window == 20


def test_clock_skew_is_a_warning():
    master = exchange.Master(settings(host="node0"))
    facts = {"host": "node1", "versions": {}, "inputs": {}, "time": time.time() + 42}
    master.peers[1] = exchange.Peer(conn=None, facts=facts, received=time.time())  # type: ignore[arg-type]
    master.compare({"versions": {}, "inputs": {}})
    (f,) = master.findings
    assert (
        f.level == "warning"
        and f.host == "node1"
        and f.what == "clock"
        and "+42 s off node0's clock" in f.wrong
    )


# --- issue 27: visible-device ids, CANN before the checks, HCCL's ports (fake npu-smi / nvidia-smi) -----

NPU_SMI_2 = """#!/bin/sh
# fake: a container with 2 NPUs (npu-smi shows what the container has)
if [ "$1" = info ] && [ "$2" = -l ]; then echo "        Total Count                    : 2"; exit 0; fi
if [ "$1" = info ]; then echo "| No running processes found in NPU 0 |"; fi
"""


def test_fake_npu_smi_ascend_visible_devices_beyond_the_node(fake_bin, monkeypatch):
    """ASCEND_RT_VISIBLE_DEVICES=4,5 (host ids) where npu-smi shows 2 NPUs: one line naming the ids."""
    fake_bin("npu-smi", NPU_SMI_2)
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "4,5")
    lines = [f.line() for f in devices.check_devices(settings(device="auto"))]
    assert lines == [
        "xgen: preflight: nodeX: ASCEND_RT_VISIBLE_DEVICES: 4,5 names NPU 4, 5, but `npu-smi info -l` shows "
        "2 NPUs here (ids 0-1); ids count from 0 among the devices this node or container shows, not the "
        "host's numbering: use ids 0-1"
    ]
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "0,1")
    assert devices.check_devices(settings(device="npu")) == []


def test_fake_nvidia_smi_cuda_visible_devices_beyond_the_node(fake_bin, monkeypatch):
    fake_bin("nvidia-smi", NVIDIA_SMI.format(n=4))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,5")
    (f,) = devices.check_devices(settings(device="cuda"))
    assert (f.what, f.level) == ("CUDA_VISIBLE_DEVICES", "error")
    assert f.wrong.startswith("0,5 names GPU 5, but `nvidia-smi -L` shows 4 GPUs here (ids 0-3)")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-uuid-2,1")  # a UUID (prefix) of a GPU here is fine
    assert devices.check_devices(settings(device="cuda")) == []


def test_fake_npu_smi_deepspeed_include_over_ssh_is_checked_on_every_host(fake_bin, monkeypatch):
    """DeepSpeed's --include gives every host the launching node's list; a host's own env does not count."""
    fake_bin("npu-smi", NPU_SMI_2)
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "0")  # ignored: the launcher sets it from --include
    (f,) = devices.check_devices(settings(device="npu", include_npu="2,3", include_cuda=""))
    assert f.line().startswith(
        "xgen: preflight: nodeX: --include: 2,3 (the launching node's ASCEND_RT_VISIBLE_DEVICES, given to "
        "every host) names NPU 2, 3, but `npu-smi info -l` shows 2 NPUs here (ids 0-1)"
    )
    assert devices.check_devices(settings(device="npu", include_npu="1,0")) == []
    assert devices.check_devices(settings(device="npu", include_npu="")) == []  # none exported: 0 … n-1
    s = from_args(["c.yaml", "--ssh", "a,b", "--include-npu", "4,5", "--include-cuda", ""])
    assert (s.include_npu, s.include_cuda) == ("4,5", "")


def test_missing_cann_set_env_on_an_npu_node_is_one_note(fake_bin, monkeypatch):
    """The script sourced CANN before the preflight (XGEN_CANN_SET_ENV: what it sourced, "" = nothing)."""
    monkeypatch.setattr(devices, "DAVINCI_MANAGER", "/nonexistent/davinci_manager")
    monkeypatch.setenv("ASCEND_TOOLKIT_HOME", "/opt/no-cann")
    monkeypatch.setenv("XGEN_CANN_SET_ENV", "")
    (f,) = devices.check_cann(settings(device="npu"))
    assert f.line() == (
        "xgen: preflight: nodeX: CANN: note: no /opt/no-cann/set_env.sh here, so it was not sourced: "
        "npu-smi, HCCL and the TBE modules it puts on the paths may be missing; install the CANN toolkit "
        "there, or export ASCEND_TOOLKIT_HOME to its folder where the job starts"
    )
    assert devices.check_cann(settings(device="auto")) == []  # no NPU here: a GPU or CPU node says nothing
    fake_bin("npu-smi", NPU_SMI_2)
    assert len(devices.check_cann(settings(device="auto"))) == 1
    monkeypatch.setenv("XGEN_CANN_SET_ENV", "/opt/cann/set_env.sh")  # sourced: nothing to say
    assert devices.check_cann(settings(device="npu")) == []


def test_hccl_ports_in_use_on_an_npu_node(fake_bin, monkeypatch):
    """HCCL listens on HCCL_IF_BASE_PORT … +31: one in use is named (a warning: another job on the node's
    other NPUs holds its own); the master port inside the range is an error; NCCL nodes are not asked."""
    base = next(  # a base whose 32 ports are all free right now
        b for b in range(61000, 65000, 32) if not any(network._in_use(p) for p in range(b, b + 32))
    )
    monkeypatch.setenv("HCCL_IF_BASE_PORT", str(base))
    assert network.check_hccl_ports(settings(device="npu")) == []
    with socket.create_server(("", base + 3)):
        (f,) = network.check_hccl_ports(settings(device="npu"))
        assert f.level == "warning"
        assert f.line().startswith(
            f"xgen: preflight: nodeX: HCCL_IF_BASE_PORT: warning: HCCL's host ports {base}-{base + 31}: "
            f"{base + 3} already in use here; if they are this job's devices'"
        )
        assert f"`ss -ltnp 'sport = :{base + 3}'` names it" in f.fix
        assert network.check_hccl_ports(settings(device="cuda")) == []  # NCCL takes ephemeral ports
    (f,) = network.check_hccl_ports(settings(device="npu", master_port=base + 1))
    assert (f.what, f.level) == ("cluster.master_port", "error") and "one of HCCL's host ports" in f.wrong
    assert network.comm_ports(settings(device="npu")) == f"HCCL's ports {base}-{base + 31}, HCCL_IF_BASE_PORT"
    assert network.comm_ports(settings(device="cuda")) == "NCCL's ports"


def test_remote_preflight_sources_cann_first():
    """Over ssh nothing sourced CANN on the other hosts: the remote command does, then runs the checks."""
    s = settings(workdir="/runs/w", python="/venv/bin/python", ssh_hosts=("a", "b"), device="npu")
    cmd = ssh.remote_command(s, 1, ["cfg.yaml", "--device", "npu"])
    assert cmd.startswith("cd /runs/w && exec bash -c ")
    assert "set_env.sh" in cmd and cmd.endswith(
        "xgen-preflight /venv/bin/python -m runtime.preflight cfg.yaml --device npu --node-rank 1 --hosts a,b"
    )
