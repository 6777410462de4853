"""Check 11 (the memory plan against the node's devices) through `python -m runtime.preflight`, as the
scripts run it, with a fake nvidia-smi on PATH reporting each GPU's memory.total."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from runtime.contract.plan.devices import parse_npu_memory, parse_nvidia_memory
from runtime.preflight import EXIT_PREFLIGHT

REPO = Path(__file__).resolve().parents[3]
LLAMA3_8B = dict(
    model_type="llama",
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    tie_word_embeddings=False,
)
FAKE_NVIDIA_SMI = """#!/bin/sh
# fake: 8 GPUs of {mib} MiB
case "$1" in
  -L) i=0; while [ $i -lt 8 ]; do echo "GPU $i: NVIDIA A100 (UUID: GPU-uuid-$i)"; i=$((i+1)); done ;;
  --query-gpu=memory.total) i=0; while [ $i -lt 8 ]; do echo "{mib}"; i=$((i+1)); done ;;
  --query-compute-apps=*) exit 0 ;;
esac
"""


def make_job(root: Path, **train) -> Path:
    (root / "model").mkdir()
    (root / "model" / "config.json").write_text(json.dumps(LLAMA3_8B))
    (root / "model" / "model.safetensors").write_bytes(b"\0" * 4096)
    (root / "data").mkdir()
    (root / "data" / "dataset_info.json").write_text(json.dumps({"tiny": {"file_name": "tiny.json"}}))
    (root / "data" / "tiny.json").write_text('[{"instruction": "a", "output": "b"}]')
    base = {
        "model_name_or_path": "model",
        "dataset": "tiny",
        "dataset_dir": "data",
        "stage": "sft",
        "finetuning_type": "full",
        "output_dir": "out",
        "save_strategy": "no",
        "bf16": True,
        "cutoff_len": 4096,
        "per_device_train_batch_size": 2,
    }
    config = root / "xgen.yaml"
    config.write_text(yaml.safe_dump({"cluster": {"nodes": 1}, "train": {**base, **train}}))
    return config


def preflight(root: Path, config: Path, mib: int, memory: str) -> subprocess.CompletedProcess:
    bindir = root / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "nvidia-smi").write_text(FAKE_NVIDIA_SMI.format(mib=mib))
    (bindir / "nvidia-smi").chmod(0o755)
    env = {
        k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "ASCEND_RT_VISIBLE_DEVICES")
    }
    env.update(PATH=f"{bindir}:{os.path.dirname(sys.executable)}:/usr/bin:/bin", PYTHONPATH=str(REPO))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime.preflight",
            str(config),
            "--workdir",
            str(root),
            "--host",
            "gpu-node-7",
            "--device",
            "cuda",
            "--devices-per-node",
            "8",
            "--device-memory",
            memory,
        ],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=60,
        env=env,
    )


def test_fake_nvidia_smi_with_too_little_memory_stops_the_node_in_one_line(tmp_path: Path) -> None:
    proc = preflight(tmp_path, make_job(tmp_path), mib=40960, memory="auto")
    assert proc.returncode == EXIT_PREFLIGHT, proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if "device_memory_gb" in x]
    assert line.startswith(
        "xgen: preflight: gpu-node-7: cluster.device_memory_gb: nvidia-smi reports 40.0 GiB; DDP, no "
        "checkpointing, micro-batch 2 needs "
    ), line
    assert "over the 36.0 GiB usable of 40.0 GiB (10% headroom) by " in line and "; change: train." in line


def test_fake_nvidia_smi_reporting_less_than_stated_is_what_is_planned_against(tmp_path: Path) -> None:
    config = make_job(
        tmp_path, finetuning_type="lora", gradient_checkpointing=True, per_device_train_batch_size=1
    )
    fits = preflight(tmp_path, config, mib=81559, memory="80")
    assert fits.returncode == 0 and "device_memory_gb" not in fits.stderr, fits.stderr
    small = preflight(tmp_path, config, mib=16384, memory="80")
    assert small.returncode == EXIT_PREFLIGHT, small.stderr
    assert "nvidia-smi reports 16.0 GiB (less than the stated 80); " in small.stderr


def test_fake_nvidia_smi_without_the_key_is_not_checked(tmp_path: Path) -> None:
    from runtime.preflight.memory import check_memory
    from runtime.preflight.settings import Settings

    assert check_memory(Settings(config="x.yaml"), object()) == []


@pytest.mark.parametrize(
    ("text", "sizes"),
    [("81559\n81559\n", [81559, 81559]), ("40960 MiB\n", [40960]), ("", [])],
)
def test_parse_nvidia_memory(text: str, sizes: list[int]) -> None:
    assert parse_nvidia_memory(text) == [s * 2**20 for s in sizes]


def test_parse_npu_memory() -> None:
    text = """\
| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
| Chip                      | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |
+===========================+===============+====================================================+
| 0     910B1               | OK            | 93.4        40                0    / 0             |
| 0                         | 0000:C1:00.0  | 0           0    / 0          3380 / 65536         |
+===========================+===============+====================================================+
| 1     910B1               | OK            | 91.9        39                0    / 0             |
| 0                         | 0000:C2:00.0  | 0           0    / 0          3378 / 65536         |
"""
    assert parse_npu_memory(text) == [65536 * 2**20, 65536 * 2**20]
