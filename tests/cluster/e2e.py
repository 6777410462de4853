"""End-to-end helpers: write an xgen config, render it with the real CLI, read the runtime's lines.

The tests drive the installed console script (`.venv/bin/xgen`) exactly as a user does; nothing
here imports xgen or the runtime.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

BIN = Path(sys.executable).parent
XGEN = BIN / "xgen"
START_RE = re.compile(
    r"xgen-runtime: world_size=(?P<world_size>\d+) nodes=(?P<nodes>\d+) hosts=(?P<hosts>\S+) "
    r"device=(?P<device>\w+) backend=(?P<backend>\w+) strategy=(?P<strategy>\S+)"
)
END_RE = re.compile(r"xgen-runtime: saved (?P<what>model|adapter) to (?P<dir>\S+)")
# Environment for the runs: offline, quiet tokenizers, DeepSpeed on its CPU accelerator.
RUN_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "DS_ACCELERATOR": "cpu"}


@dataclass(frozen=True)
class StartLine:
    world_size: int
    nodes: int
    hosts: tuple[str, ...]
    device: str
    backend: str
    strategy: str


def start_line(text: str) -> StartLine:
    """The runtime's one start line (rank 0); AssertionError with the output when it is missing."""
    found = START_RE.findall(text)
    assert len(found) == 1, f"expected one xgen-runtime start line, found {len(found)}:\n{text[-6000:]}"
    m = START_RE.search(text)
    assert m is not None
    return StartLine(
        int(m["world_size"]),
        int(m["nodes"]),
        tuple(m["hosts"].split(",")),
        m["device"],
        m["backend"],
        m["strategy"],
    )


def saved_dir(text: str) -> Path:
    m = END_RE.search(text)
    assert m, f"no 'xgen-runtime: saved … to DIR' line:\n{text[-6000:]}"
    return Path(m["dir"])


def train_section(tiny: Path, out_dir: Path, **overrides: Any) -> dict[str, Any]:
    """A tiny full SFT that trains in seconds on CPU (LLaMA-Factory key names)."""
    train = {
        "model_name_or_path": str(tiny / "model"),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "dataset": "tiny_alpaca",
        "dataset_dir": str(tiny / "data"),
        "cutoff_len": 64,
        "max_samples": 64,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "learning_rate": 1.0e-3,
        "max_steps": 4,
        "logging_steps": 1,
        "save_strategy": "no",
        "output_dir": str(out_dir),
        "report_to": "none",
        "seed": 42,
        "preprocessing_num_workers": 1,
    }
    train.update(overrides)
    return train


def base_config(tiny: Path, shared: Path, *, name: str = "xgt-e2e") -> dict[str, Any]:
    """2 nodes × 2 CPU processes on the harness cluster; paths all on the shared filesystem."""
    return {
        "job": {"name": name},
        "cluster": {
            "nodes": 2,
            "devices_per_node": 2,
            "device": "cpu",
            "hosts": ["node0", "node1"],
            "nic": "eth0",
            "rdzv_timeout": 60,
            "omp_num_threads": 1,
        },
        "slurm": {"partition": "xgt", "cpus_per_task": 2, "output": str(shared / "slurm-%j.out")},
        "launcher": "torchrun",
        "python": sys.executable,
        "train": train_section(tiny, shared / "out"),
    }


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `changes` into a copy of `base` (a None value deletes the key)."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def write_config(shared: Path, config: dict[str, Any], name: str = "xgen.yaml") -> Path:
    path = shared / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def xgen(*args: str | Path, cwd: Path | None = None, timeout: float = 60) -> str:
    """Run the real `xgen` CLI; return stdout. A failure shows the command and its stderr."""
    argv = [str(XGEN), *map(str, args)]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout}"
    return proc.stdout


def render(shared: Path, target: str, config_path: Path, *args: str, script: str | None = None) -> Path:
    """`xgen TARGET CFG ARGS -o SCRIPT`; returns the executable script's path."""
    out = shared / (script or f"{target}.sh")
    xgen(target, config_path, *args, "-o", out, cwd=shared)
    out.chmod(0o755)
    return out


def wait_for(path: Path, pattern: str, timeout: float) -> str:
    """Wait until `pattern` (regex) appears in the file; return its text."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if re.search(pattern, text):
            return text
        time.sleep(0.5)
    raise AssertionError(
        f"{pattern!r} did not appear in {path} within {timeout} s:\n"
        + (path.read_text(errors="replace")[-6000:] if path.exists() else "(no file)")
    )


def reload_model(model_dir: Path) -> None:
    """The saved model loads with transformers (in a subprocess: keeps torch out of pytest's memory)."""
    code = (
        "import sys; from transformers import AutoModelForCausalLM as M; "
        "m = M.from_pretrained(sys.argv[1]); print('params', sum(p.numel() for p in m.parameters()))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(model_dir)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "params" in proc.stdout, proc.stderr[-4000:]


def start_node_scripts(
    cluster, shared: Path, scripts: dict[str, Path], tag: str, procs: list, env: dict[str, str] | None = None
) -> dict[str, Path]:
    """Start each node's script in its namespace (as an operator would), output to <node>-<tag>.log;
    `env` adds to RUN_ENV (a fault hook, say)."""
    logs = {}
    for node, script in scripts.items():
        logs[node] = shared / f"{node}-{tag}.log"
        with open(logs[node], "wb") as log:
            procs.append(
                cluster.popen_in_node(
                    node,
                    ["bash", str(script)],
                    cwd=shared,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=cluster.env({**RUN_ENV, **(env or {})}),
                )
            )
    return logs


def node_logs(logs: dict[str, Path]) -> str:
    """The tail of every node's log, for an assertion message."""
    return "".join(f"--- {n}:\n{p.read_text(errors='replace')[-3000:]}\n" for n, p in logs.items())


def check_trained_on_both_nodes(out: str, saved: Path) -> StartLine:
    """World 4 over node0 and node1 on CPU/gloo, and the model saved to `saved` reloads."""
    start = start_line(out)
    assert (start.world_size, start.nodes, sorted(start.hosts)) == (4, 2, ["node0", "node1"]), start
    assert (start.device, start.backend) == ("cpu", "gloo"), start
    assert saved_dir(out) == saved
    reload_model(saved)
    return start
