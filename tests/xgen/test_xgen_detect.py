"""Execute the device-detection and communication partial with fake npu-smi / nvidia-smi on PATH."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from xgen.load import parse_mapping
from xgen.render import render
from xgen.targets.common import context

NPU_SMI = """#!/bin/sh
# fake Ascend driver tool: 8 NPUs
if [ "$1" = info ] && [ "$2" = -l ]; then
  printf '        Total Count                    : 8\\n\\n        NPU ID                         : 0\\n'
fi
"""
NVIDIA_SMI = """#!/bin/sh
# fake NVIDIA tool: 4 GPUs
if [ "$1" = -L ]; then
  for i in 0 1 2 3; do echo "GPU $i: NVIDIA H100 80GB HBM3 (UUID: GPU-0000000$i)"; done
fi
"""
PRINT = (
    'printf "%s=%s\\n" XGEN_DEVICE "$XGEN_DEVICE" NPROC_PER_NODE "$NPROC_PER_NODE" '
    'ASCEND_RT_VISIBLE_DEVICES "${ASCEND_RT_VISIBLE_DEVICES:-}" TASK_QUEUE_ENABLE "${TASK_QUEUE_ENABLE:-}" '
    'HCCL_CONNECT_TIMEOUT "${HCCL_CONNECT_TIMEOUT:-}" NCCL_SOCKET_IFNAME "${NCCL_SOCKET_IFNAME:-}" '
    'OMP_NUM_THREADS "$OMP_NUM_THREADS" NCCL_IB_DISABLE "${NCCL_IB_DISABLE:-}" MY_VAR "${MY_VAR:-}" '
    'TORCH_NCCL_DUMP_ON_TIMEOUT "${TORCH_NCCL_DUMP_ON_TIMEOUT:-}" '
    'TORCH_FR_DUMP_TEMP_FILE "${TORCH_FR_DUMP_TEMP_FILE:-}" '
    'TORCH_NCCL_ASYNC_ERROR_HANDLING "${TORCH_NCCL_ASYNC_ERROR_HANDLING:-}" '
    'HCCL_ASYNC_ERROR_HANDLING "${HCCL_ASYNC_ERROR_HANDLING:-}" '
    'TORCH_HCCL_DEBUG_INFO_TEMP_FILE "${TORCH_HCCL_DEBUG_INFO_TEMP_FILE:-}"'
)


def partial(cluster: dict) -> str:
    config = parse_mapping({"cluster": cluster}, Path("/tmp/xgen-test/job.yaml"))
    # _logs.sh.j2 defines xgen_say, which every xgen line of a generated script goes through.
    return "\n".join(render(name, context(config, "shell")) for name in ("_logs.sh.j2", "_node_env.sh.j2"))


def run_partial(tmp_path, cluster: dict, tools: dict[str, str], env: dict | None = None):
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for name, body in tools.items():
        (bindir / name).write_text(body)
        (bindir / name).chmod(0o755)
    script = tmp_path / "detect.sh"
    # No npu-smi/nvidia-smi from the host: PATH holds only the fakes and the basic tools.
    script.write_text("set -euo pipefail\n" + partial(cluster) + f"\nxgen_devices\nxgen_comm_env\n{PRINT}\n")
    run_env = {
        "PATH": f"{bindir}:/usr/bin:/bin",
        "ASCEND_TOOLKIT_HOME": str(tmp_path / "no-cann"),
        "XGEN_RUN_DIR": str(tmp_path / "run"),  # every script sets it before the communication env
        **(env or {}),
    }
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=run_env)
    values = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return result, values


def test_eight_npus(tmp_path):
    result, v = run_partial(tmp_path, {}, {"npu-smi": NPU_SMI, "nvidia-smi": NVIDIA_SMI})
    assert result.returncode == 0, result.stderr
    assert v["XGEN_DEVICE"] == "npu"
    assert v["NPROC_PER_NODE"] == "8"
    assert v["ASCEND_RT_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"
    assert v["TASK_QUEUE_ENABLE"] == "2"
    assert v["HCCL_CONNECT_TIMEOUT"] == "1200"
    # The job log shows what was exported, one line per node.
    (env_line,) = [line for line in result.stderr.splitlines() if ": env " in line]
    assert "ASCEND_RT_VISIBLE_DEVICES=0,1,2,3,4,5,6,7" in env_line and "TASK_QUEUE_ENABLE=2" in env_line


def test_collective_failures_dump_into_the_run_directory(tmp_path):
    """NCCL/HCCL async error handling and the flight recorder are on, dumping under the run directory
    (fake npu-smi / nvidia-smi); what the user exported wins."""
    (tmp_path / "npu").mkdir(), (tmp_path / "gpu").mkdir()  # one bin/ of fakes each
    _, npu = run_partial(tmp_path / "npu", {}, {"npu-smi": NPU_SMI})
    trace = str(tmp_path / "npu" / "run" / "comm-trace" / "rank_")
    assert (npu["HCCL_ASYNC_ERROR_HANDLING"], npu["TORCH_HCCL_DEBUG_INFO_TEMP_FILE"]) == ("1", trace)
    assert npu["TORCH_NCCL_DUMP_ON_TIMEOUT"] == ""
    _, gpu = run_partial(tmp_path / "gpu", {}, {"nvidia-smi": NVIDIA_SMI})
    trace = str(tmp_path / "gpu" / "run" / "comm-trace" / "rank_")
    assert (gpu["TORCH_NCCL_DUMP_ON_TIMEOUT"], gpu["TORCH_FR_DUMP_TEMP_FILE"]) == ("1", trace)
    assert gpu["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "3" and gpu["HCCL_ASYNC_ERROR_HANDLING"] == ""
    assert (tmp_path / "gpu" / "run" / "comm-trace").is_dir()
    mine = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"}
    _, own = run_partial(tmp_path / "gpu", {}, {"nvidia-smi": NVIDIA_SMI}, mine)
    assert own["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"


def test_npu_respects_exported_devices(tmp_path):
    result, v = run_partial(tmp_path, {}, {"npu-smi": NPU_SMI}, {"ASCEND_RT_VISIBLE_DEVICES": "4,5"})
    assert result.returncode == 0, result.stderr
    assert (v["XGEN_DEVICE"], v["NPROC_PER_NODE"], v["ASCEND_RT_VISIBLE_DEVICES"]) == ("npu", "2", "4,5")


def test_four_gpus(tmp_path):
    result, v = run_partial(tmp_path, {}, {"nvidia-smi": NVIDIA_SMI})
    assert result.returncode == 0, result.stderr
    assert (v["XGEN_DEVICE"], v["NPROC_PER_NODE"]) == ("cuda", "4")
    assert v["TASK_QUEUE_ENABLE"] == "" and v["ASCEND_RT_VISIBLE_DEVICES"] == ""


def test_gpu_respects_cuda_visible_devices(tmp_path):
    result, v = run_partial(tmp_path, {}, {"nvidia-smi": NVIDIA_SMI}, {"CUDA_VISIBLE_DEVICES": "1,3,5"})
    assert result.returncode == 0, result.stderr
    assert (v["XGEN_DEVICE"], v["NPROC_PER_NODE"]) == ("cuda", "3")


def test_no_accelerator_is_cpu(tmp_path):
    result, v = run_partial(tmp_path, {}, {})
    assert result.returncode == 0, result.stderr
    assert (v["XGEN_DEVICE"], v["NPROC_PER_NODE"]) == ("cpu", "1")
    assert int(v["OMP_NUM_THREADS"]) >= 1


def test_pinned_cpu_count(tmp_path):
    result, v = run_partial(tmp_path, {"device": "cpu", "devices_per_node": 2}, {"nvidia-smi": NVIDIA_SMI})
    assert result.returncode == 0, result.stderr
    assert (v["XGEN_DEVICE"], v["NPROC_PER_NODE"]) == ("cpu", "2")


def test_pinned_device_ignores_other_tools(tmp_path):
    result, v = run_partial(
        tmp_path, {"device": "cuda", "devices_per_node": 2}, {"npu-smi": NPU_SMI, "nvidia-smi": NVIDIA_SMI}
    )
    assert result.returncode == 0, result.stderr
    assert (v["XGEN_DEVICE"], v["NPROC_PER_NODE"]) == ("cuda", "2")


def test_pinned_more_than_visible_fails_in_one_line(tmp_path):
    result, _ = run_partial(tmp_path, {"devices_per_node": 8}, {"nvidia-smi": NVIDIA_SMI})
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if re.match(r"xgen: \S+Z \S+: error: ", line)]
    assert len(lines) == 1 and "cluster.devices_per_node" in lines[0] and "4 visible cuda" in lines[0]


def test_pinned_npu_without_driver_fails(tmp_path):
    result, _ = run_partial(tmp_path, {"device": "npu"}, {})
    assert result.returncode == 1
    assert "no NPU found" in result.stderr and "set_env.sh" in result.stderr


def test_cann_set_env_is_sourced(tmp_path):
    cann = tmp_path / "cann"
    cann.mkdir()
    (cann / "set_env.sh").write_text("export MY_VAR=from-cann\n")
    result, v = run_partial(tmp_path, {}, {"npu-smi": NPU_SMI}, {"ASCEND_TOOLKIT_HOME": str(cann)})
    assert result.returncode == 0, result.stderr
    assert v["MY_VAR"] == "from-cann"
    assert f"sourcing {cann}/set_env.sh" in result.stderr


def test_env_overrides_and_nic(tmp_path):
    nic = sorted(os.listdir("/sys/class/net"))[0]
    cluster = {
        "nic": nic,
        "ib_disable": True,
        "omp_num_threads": 3,
        "env": {"MY_VAR": "x y", "OMP_NUM_THREADS": "5"},
    }
    result, v = run_partial(tmp_path, cluster, {})
    assert result.returncode == 0, result.stderr
    assert v["NCCL_SOCKET_IFNAME"] == nic and v["NCCL_IB_DISABLE"] == "1"
    assert v["MY_VAR"] == "x y" and v["OMP_NUM_THREADS"] == "5"  # user overrides come last


@pytest.mark.parametrize("nic", ["xgen-no-such-nic0", "=lo0"])
def test_missing_nic_fails(tmp_path, nic):
    result, _ = run_partial(tmp_path, {"nic": nic}, {})
    assert result.returncode == 1
    assert "cluster.nic: no interface" in result.stderr


def test_nic_list_passes_when_any_one_exists(tmp_path):
    """NCCL reads a comma list as "any of these" (the preflight's NIC check)."""
    nic = sorted(os.listdir("/sys/class/net"))[0]
    result, v = run_partial(tmp_path, {"nic": f"xgen-no-such-nic0,{nic}"}, {})
    assert result.returncode == 0, result.stderr
    result, _ = run_partial(tmp_path, {"nic": "xgen-no-such-nic0,xgen-no-such-nic1"}, {})
    assert result.returncode == 1 and "cluster.nic: no interface" in result.stderr
