"""`xgen doctor`'s verdict without a process group: busbw as nccl-tests defines it, the warnings, the
table (plain in a log), the JSON report; and the doctor scripts render as clean bash."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from runtime.doctor import report
from xgen.load import parse_mapping
from xgen.targets import deepspeed, shell, slurm


def node(host: str, **kw) -> dict:
    base = {
        "host": host,
        "device": "cpu",
        "devices": 2,
        "versions": {"python": "3.11.7", "torch": "2.5.0"},
        "nic": "eth0",
        "address": "10.0.0.10/24",
        "link_mbps": 10000,
        "shm": "24.0 GiB",
        "ib": None,
        "intra_busbw_gbps": 1.5,
    }
    return {**base, **kw}


def test_busbw_is_nccl_tests_definition():
    # 1 GB in 1 s over 8 ranks: algbw 1 GB/s, busbw = 1 x 2 x 7/8 = 1.75 GB/s.
    assert report.bus_bandwidth(10**9, 1.0, 8) == pytest.approx(1.75)
    assert report.bus_bandwidth(10**9, 0.5, 2) == pytest.approx(2.0)
    assert report.bus_bandwidth(10**9, 1.0, 1) == 0.0


def test_bandwidth_and_ib_warnings():
    result = {
        "nodes": [node("node0"), node("node1", ib=[{"ca": "mlx5_0", "port": "1", "state": "Initializing"}])]
    }
    result["cross_node_busbw_gbps"] = 0.05  # 0.4 Gbit/s, under a tenth of 10 Gbit/s
    warns = report.warnings(result, 100)
    assert any("under cluster.min_bandwidth_gbps=100" in w for w in warns)
    assert any(
        w.startswith(
            "node0, node1: cross-node busbw 0.050 GB/s (0.40 Gbit/s) is under a tenth of eth0's link"
        )
        for w in warns
    )
    assert any("node1: InfiniBand mlx5_0 port 1 is Initializing: no subnet manager" in w for w in warns)
    result["cross_node_busbw_gbps"] = 5.0
    result["nodes"][1]["ib"] = [{"ca": "mlx5_0", "port": "1", "state": "Active"}]
    assert report.warnings(result, 10) == []


def test_plain_table_and_json(tmp_path):
    result = {
        "nodes": [node("node0"), node("node1")],
        "cross_node_busbw_gbps": 0.25,
        "measurements": [
            {
                "scope": "all ranks",
                "bytes": 1024,
                "ranks": 4,
                "seconds": 0.001,
                "algbw_gbps": 1.0,
                "busbw_gbps": 1.5,
            }
        ],
    }
    text = report.table(result, rich=False)
    lines = text.splitlines()
    assert lines[0].split() == [
        "host",
        "devices",
        "versions",
        "nic",
        "shm",
        "checks",
        "intra",
        "busbw",
        "cross",
        "busbw",
    ]
    assert lines[1].startswith("node0") and "eth0 10.0.0.10/24" in lines[1] and "0.250 GB/s" in lines[1]
    assert lines[2].startswith("node1")
    assert "all ranks" in report.sizes_table(result)
    report.write_json(str(tmp_path / "r.json"), result)
    assert json.loads((tmp_path / "r.json").read_text())["cross_node_busbw_gbps"] == 0.25
    rich_text = report.table(result, rich=True)
    assert "node1" in rich_text and "xgen doctor" in rich_text


@pytest.mark.parametrize("target", ["slurm", "shell", "deepspeed"])
def test_doctor_scripts_are_clean_bash(tmp_path, target):
    raw = {
        "cluster": {"nodes": 2, "hosts": ["n0", "n1"], "device": "cpu", "nic": "eth0"},
        "python": "python3",
    }
    config = parse_mapping(raw, tmp_path / "job.yaml")
    if target == "slurm":
        text = slurm.build(config, module="runtime.doctor")
    elif target == "shell":
        text = shell.build(config, 1, module="runtime.doctor")
    else:
        text = deepspeed.build(config, str(tmp_path / "hostfile"), module="runtime.doctor")[0]
    assert 'runtime.doctor "$XGEN_CONFIG"' in text and "runtime train" not in text.replace(
        "`runtime train`", ""
    )
    assert f"(doctor {target}) on " in text and "xgen_preflight" in text  # the header names the target
    script = tmp_path / "doctor.sh"
    script.write_text(text)
    subprocess.run(["bash", "-n", str(script)], check=True)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed")
    result = subprocess.run(["shellcheck", "-s", "bash", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_doctor_cli_writes_the_script(tmp_path):
    cfg = tmp_path / "job.yaml"
    cfg.write_text("cluster: {nodes: 1, device: cpu}\n")
    xgen = Path(__import__("sys").executable).parent / "xgen"
    out = tmp_path / "d.sh"
    proc = subprocess.run(
        [str(xgen), "doctor", "shell", str(cfg), "-o", str(out)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "-m runtime.doctor" in out.read_text()
