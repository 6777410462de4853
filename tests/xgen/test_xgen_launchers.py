"""`launcher:` means what it says for every command, and DeepSpeed honours exported devices.

The bash that turns CUDA_VISIBLE_DEVICES / ASCEND_RT_VISIBLE_DEVICES into DeepSpeed's hostfile slots and
`--include` runs here with fake `nvidia-smi` / `npu-smi` on PATH; the whole scripts (`xgen deepspeed`, and
`xgen slurm` with `launcher: deepspeed` under a fake `srun`/`scontrol`) run with a fake python that
records what DeepSpeed's launcher would receive. The real launch: tests/cluster/test_e2e_ds_slurm.py.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from xgen_helpers import run_xgen

from xgen.cli import main
from xgen.load import parse_mapping
from xgen.render import render
from xgen.targets.common import context
from xgen.targets.deepspeed import HOSTFILE_MARK

FAKE_NVIDIA_SMI = """#!/bin/sh
# fake NVIDIA tool: 4 GPUs (nvidia-smi lists every GPU, whatever CUDA_VISIBLE_DEVICES says)
if [ "$1" = -L ]; then
  for i in 0 1 2 3; do echo "GPU $i: NVIDIA H100 80GB HBM3 (UUID: GPU-0000000$i)"; done
fi
"""
FAKE_NPU_SMI = """#!/bin/sh
# fake Ascend tool: 8 NPUs
if [ "$1" = info ] && [ "$2" = -l ]; then
  printf '        Total Count                    : 8\\n\\n        NPU ID                         : 0\\n'
fi
"""
# A fake interpreter: the node checks pass, `-c` (the free-port helper) prints a port, and DeepSpeed's
# launcher records its arguments and the hostfile it was given (one file per call: one per node).
FAKE_PYTHON = """#!/usr/bin/env bash
[[ "${1:-} ${2:-}" == "-c import runtime" ]] && exit 0  # xgen_check_python: the runtime imports
case "${1:-} ${2:-}" in
  "-m runtime" | "-m runtime.preflight") exit 0 ;;
  "-c "*) echo 29999; exit 0 ;;
esac
if [[ "${2:-}" == deepspeed.launcher.runner ]]; then
  n=$(find "$XGEN_TEST_DUMP" -maxdepth 1 -name 'args.*' | wc -l)
  printf '%s\\n' "$@" >"$XGEN_TEST_DUMP/args.$n"
  prev=""
  for arg in "$@"; do
    if [[ "$prev" == --hostfile ]]; then cp "$arg" "$XGEN_TEST_DUMP/hostfile.$n"; fi
    prev=$arg
  done
  echo "DS_ACCELERATOR=${DS_ACCELERATOR:-}" >"$XGEN_TEST_DUMP/env.$n"
fi
"""
# A fake srun: runs `bash -c SCRIPT` once per node of FAKE_NODES, in order, as Slurm's step would.
FAKE_SRUN = """#!/usr/bin/env bash
while [[ $# -gt 0 && "$1" != bash ]]; do shift; done
shift 2
rc=0
i=0
for node in $FAKE_NODES; do
  SLURMD_NODENAME=$node SLURM_NODEID=$i bash -c "$1" || rc=$?
  i=$((i + 1))
done
exit "$rc"
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
if [[ "$1 $2" == "show hostnames" ]]; then printf '%s\\n' $FAKE_NODES; exit 0; fi
exit 1
"""


def fake_bin(tmp_path: Path, tools: dict[str, str]) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for name, body in tools.items():
        (bindir / name).write_text(body)
        (bindir / name).chmod(0o755)
    return bindir


# --- the bash logic: xgen_ds_devices ---


def ds_devices(tmp_path, cluster: dict, tools: dict[str, str], env: dict | None = None, fixed: str = ""):
    config = parse_mapping({"cluster": cluster}, Path("/tmp/xgen-test/job.yaml"))
    ctx = context(config, "deepspeed")
    script = tmp_path / "ds.sh"
    script.write_text(
        "set -euo pipefail\n"
        + render("_logs.sh.j2", ctx)  # xgen_say
        + render("_node_env.sh.j2", ctx)
        + render("_deepspeed_devices.sh.j2", ctx)
        + '\nxgen_devices\nxgen_ds_devices\necho "$XGEN_DS_SLOTS $XGEN_DS_DEVICES"\n'
    )
    run_env = {
        "PATH": f"{fake_bin(tmp_path, tools)}:/usr/bin:/bin",
        "ASCEND_TOOLKIT_HOME": str(tmp_path / "no-cann"),
        "XGEN_DS_FIXED_SLOTS": fixed,
        **(env or {}),
    }
    return subprocess.run(["bash", str(script)], capture_output=True, text=True, env=run_env)


@pytest.mark.parametrize(
    "cluster,env,expected",
    [
        ({}, {}, "4 0,1,2,3"),
        ({}, {"CUDA_VISIBLE_DEVICES": "0,2"}, "4 0,2"),
        ({"devices_per_node": 2}, {}, "4 0,1"),  # pinned below the node's count: slots stay 4
        ({"devices_per_node": 1}, {"CUDA_VISIBLE_DEVICES": "3,1"}, "4 3"),
        ({"device": "cuda"}, {"CUDA_VISIBLE_DEVICES": "2"}, "4 2"),
    ],
    ids=["all", "visible-0,2", "pinned-2", "pinned-1-of-3,1", "device-cuda"],
)
def test_fake_nvidia_smi_slots_are_the_node_and_devices_the_exported_list(tmp_path, cluster, env, expected):
    result = ds_devices(tmp_path, cluster, {"nvidia-smi": FAKE_NVIDIA_SMI}, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_fake_npu_smi_ascend_visible_devices(tmp_path):
    result = ds_devices(tmp_path, {}, {"npu-smi": FAKE_NPU_SMI}, {"ASCEND_RT_VISIBLE_DEVICES": "4,5"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "8 4,5"


def test_cpu_slots_are_the_processes(tmp_path):
    result = ds_devices(tmp_path, {"device": "cpu", "devices_per_node": 2}, {})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2 0,1"


@pytest.mark.parametrize(
    "env,fixed,says",
    [
        ({"CUDA_VISIBLE_DEVICES": "GPU-00000001"}, "", "export indices, not 'GPU-00000001'"),
        ({"CUDA_VISIBLE_DEVICES": "0,5"}, "", "device 5 is not among the 4 slots"),
        ({"CUDA_VISIBLE_DEVICES": "0,2"}, "2", "set cluster.devices_per_node: auto"),
    ],
    ids=["uuid", "beyond-the-node", "beyond-fixed-slots"],
)
def test_fake_nvidia_smi_devices_deepspeed_cannot_name_are_refused(tmp_path, env, fixed, says):
    result = ds_devices(tmp_path, {}, {"nvidia-smi": FAKE_NVIDIA_SMI}, env, fixed)
    errors = [line for line in result.stderr.splitlines() if re.match(r"xgen: \S+ \S+: error:", line)]
    assert result.returncode == 1 and len(errors) == 1 and says in errors[0], result.stderr


# --- the rendered command lines ---


def write_config(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_script(tmp_path: Path, script: Path, tools: dict[str, str], env: dict[str, str]):
    dump = tmp_path / "dump"
    dump.mkdir()
    bindir = fake_bin(tmp_path, {**tools, "python": FAKE_PYTHON})
    run_env = {
        "PATH": f"{bindir}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "ASCEND_TOOLKIT_HOME": str(tmp_path / "no-cann"),
        "XGEN_TEST_DUMP": str(dump),
        **env,
    }
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=run_env, cwd=tmp_path)
    calls = sorted(dump.glob("args.*"))
    return result, [
        (p.read_text().splitlines(), (dump / p.name.replace("args", "hostfile")).read_text()) for p in calls
    ]


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_fake_nvidia_smi_xgen_deepspeed_one_node_passes_include(tmp_path):
    cfg = write_config(tmp_path, {"cluster": {"preflight": False}, "python": "python"})
    script = tmp_path / "launch.sh"
    assert run_xgen("deepspeed", str(cfg), "-o", str(script)).returncode == 0
    tools = {"nvidia-smi": FAKE_NVIDIA_SMI}
    result, calls = run_script(tmp_path, script, tools, {"CUDA_VISIBLE_DEVICES": "0,2"})
    assert result.returncode == 0, result.stderr
    ((args, hostfile),) = calls
    assert hostfile == "localhost slots=4\n"
    assert flag(args, "--include") == "localhost:0,2"
    assert flag(args, "--node_rank") == "0" and "--no_ssh" in args and "--num_gpus" not in args


def test_fake_nvidia_smi_xgen_deepspeed_two_hosts_passes_include(tmp_path):
    hosts = ["10.255.255.1", "10.255.255.2"]  # IP literals: the master check needs no DNS
    cfg = write_config(
        tmp_path,
        {"cluster": {"nodes": 2, "hosts": hosts, "preflight": False}, "python": "python"},
    )
    script = tmp_path / "launch.sh"
    hostfile = tmp_path / "hostfile"
    assert run_xgen("deepspeed", str(cfg), "--hostfile", str(hostfile), "-o", str(script)).returncode == 0
    tools = {"nvidia-smi": FAKE_NVIDIA_SMI}
    result, calls = run_script(tmp_path, script, tools, {"CUDA_VISIBLE_DEVICES": "0,2"})
    assert result.returncode == 0, result.stderr
    ((args, written),) = calls
    assert written == f"{HOSTFILE_MARK}\n10.255.255.1 slots=4\n10.255.255.2 slots=4\n"
    assert flag(args, "--include") == "10.255.255.1:0,2@10.255.255.2:0,2"
    assert "--no_ssh" not in args  # several hosts: DeepSpeed's own pdsh runner


def slurm_job(tmp_path: Path, cluster: dict | None = None) -> Path:
    cfg = write_config(
        tmp_path,
        {
            "cluster": {"nodes": 2, "master_addr": "10.255.255.1", "preflight": False, **(cluster or {})},
            "launcher": "deepspeed",
            "python": "python",
            "slurm": {"output": str(tmp_path / "job.out")},
        },
    )
    script = tmp_path / "job.sh"
    result = run_xgen("slurm", str(cfg), "-o", str(script))
    assert result.returncode == 0, result.stderr
    return script


SLURM_ENV = {
    "FAKE_NODES": "gpu-a gpu-b",
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_JOB_NODELIST": "gpu-[a-b]",
}
SLURM_TOOLS = {"srun": FAKE_SRUN, "scontrol": FAKE_SCONTROL}


@pytest.mark.parametrize(
    "tool,env,include",
    [
        ("nvidia-smi", {"CUDA_VISIBLE_DEVICES": "0,2"}, "gpu-a:0,2@gpu-b:0,2"),
        ("npu-smi", {"ASCEND_RT_VISIBLE_DEVICES": "1,3"}, "gpu-a:1,3@gpu-b:1,3"),
        ("nvidia-smi", {}, "gpu-a:0,1,2,3@gpu-b:0,1,2,3"),
    ],
    ids=["cuda-0,2", "ascend-1,3", "cuda-all"],
)
def test_fake_smi_slurm_deepspeed_hostfile_from_allocation_and_include(tmp_path, tool, env, include):
    tools = {**SLURM_TOOLS, tool: FAKE_NVIDIA_SMI if tool == "nvidia-smi" else FAKE_NPU_SMI}
    slots = 4 if tool == "nvidia-smi" else 8
    result, calls = run_script(tmp_path, slurm_job(tmp_path), tools, {**SLURM_ENV, **env})
    assert result.returncode == 0, result.stderr
    assert len(calls) == 2, result.stderr  # DeepSpeed's launcher once per node
    for rank, (args, hostfile) in enumerate(calls):
        assert hostfile == f"gpu-a slots={slots}\ngpu-b slots={slots}\n"
        assert flag(args, "--include") == include
        assert flag(args, "--node_rank") == str(rank) and "--no_ssh" in args
        assert flag(args, "--master_addr") == "10.255.255.1" and flag(args, "--master_port") == "24242"
    dumped = sorted((tmp_path / "dump").glob("env.*"))
    assert [p.read_text() for p in dumped] == [f"DS_ACCELERATOR={'cuda' if slots == 4 else 'npu'}\n"] * 2


def test_slurm_deepspeed_node_rank_follows_the_hostfile_not_the_step(tmp_path):
    """The step numbers the nodes in its own order; DeepSpeed's ranks follow the hostfile's."""
    tools = {**SLURM_TOOLS, "srun": FAKE_SRUN.replace("for node in $FAKE_NODES", "for node in $STEP_ORDER")}
    env = {**SLURM_ENV, "STEP_ORDER": "gpu-b gpu-a", "CUDA_VISIBLE_DEVICES": "1"}
    result, calls = run_script(tmp_path, slurm_job(tmp_path), {**tools, "nvidia-smi": FAKE_NVIDIA_SMI}, env)
    assert result.returncode == 0, result.stderr
    assert [flag(args, "--node_rank") for args, _ in calls] == ["1", "0"]  # gpu-b ran first
    assert calls[0][1] == "gpu-a slots=4\ngpu-b slots=4\n"


# --- the launcher matrix ---

# (command, launcher) -> None when the command starts that launcher, else what its one line says.
MATRIX = {
    ("slurm", "torchrun"): None,
    ("slurm", "deepspeed"): None,
    ("slurm", "accelerate"): "launcher: accelerate: xgen slurm starts torch.distributed.run",
    ("shell", "torchrun"): None,
    ("shell", "deepspeed"): "launcher: deepspeed: xgen shell starts torch.distributed.run",
    ("shell", "accelerate"): "launcher: accelerate: xgen shell starts torch.distributed.run",
    ("deepspeed", "torchrun"): "launcher: torchrun: xgen deepspeed starts DeepSpeed's launcher",
    ("deepspeed", "deepspeed"): None,
    ("deepspeed", "accelerate"): "launcher: accelerate: xgen deepspeed starts DeepSpeed's launcher",
    ("accelerate", "torchrun"): "launcher: torchrun: xgen accelerate starts accelerate's launcher",
    ("accelerate", "deepspeed"): "launcher: deepspeed: xgen accelerate starts accelerate's launcher",
    ("accelerate", "accelerate"): None,
}


@pytest.mark.parametrize("command,launcher", list(MATRIX), ids=[f"{c}-{la}" for c, la in MATRIX])
def test_launcher_matrix(tmp_path, command, launcher):
    config = {"cluster": {"nodes": 2, "hosts": ["n0", "n1"]}, "launcher": launcher}
    cfg = write_config(tmp_path, config)
    extra = ["--hostfile", str(tmp_path / "hostfile")] if command == "deepspeed" else []
    extra += ["--node-rank", "0"] if command in ("shell", "accelerate") else []
    result = CliRunner().invoke(main, [command, str(cfg), *extra, "-o", str(tmp_path / "out.sh")])
    says = MATRIX[(command, launcher)]
    if says is None:
        assert result.exit_code == 0, result.stderr
        text = (tmp_path / "out.sh").read_text()
        started = {"torchrun": '"$PYTHON" -m runtime launch', "deepspeed": "deepspeed.launcher.runner"}
        assert started.get(launcher, "accelerate.commands.launch") in text
    else:
        assert result.exit_code == 2
        assert result.stderr.startswith(f"xgen: error: {says}") and result.stderr.count("\n") == 1
        assert "; " in result.stderr  # the fix follows
        assert not (tmp_path / "out.sh").exists()


def test_unset_launcher_is_each_commands_own(tmp_path):
    cfg = write_config(tmp_path, {"cluster": {"nodes": 2, "hosts": ["n0", "n1"]}})
    for command, extra, started in (
        ("slurm", [], '"$PYTHON" -m runtime launch'),
        ("shell", ["--node-rank", "0"], '"$PYTHON" -m runtime launch'),
        ("deepspeed", ["--hostfile", str(tmp_path / "h")], "deepspeed.launcher.runner"),
        ("accelerate", ["--node-rank", "0"], "accelerate.commands.launch"),
    ):
        result = CliRunner().invoke(main, [command, str(cfg), *extra])
        assert result.exit_code == 0 and started in result.stdout, (command, result.stderr)


@pytest.mark.parametrize("command", ["slurm", "shell"])
def test_c10d_rendezvous_and_restarts_render_the_seed_form(tmp_path, command):
    """cluster.rendezvous: c10d renders MDL-Toolkit's torchrun form (endpoint = the master and the job's
    port, id = the Slurm job id, else one per config) with no node rank; max_restarts reaches
    --max-restarts; the script stays shellcheck- and bash -n-clean."""
    cluster = {"nodes": 2, "hosts": ["n0", "n1"], "rendezvous": "c10d", "max_restarts": 3}
    cfg = write_config(tmp_path, {"cluster": cluster})
    extra = ["--node-rank", "1"] if command == "shell" else []
    result = CliRunner().invoke(main, [command, str(cfg), *extra])
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    launch = text[text.index('"$PYTHON" -m runtime launch') :].split("-m runtime train")[0]
    assert "--rdzv-backend c10d" in launch and '--rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT"' in launch
    assert '--rdzv-id "${SLURM_JOB_ID:-xgen-' in launch and "--max-restarts 3" in launch
    assert "--node_rank" not in launch and "--master_addr" not in launch
    script = tmp_path / "job.sh"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert subprocess.run(["shellcheck", str(script)], capture_output=True).returncode == 0


@pytest.mark.parametrize(
    ("cluster", "says"),
    [
        ({"max_restarts": -1}, "xgen: error: cluster.max_restarts: must be at least 0, got -1"),
        ({"rendezvous": "etcd"}, "xgen: error: cluster.rendezvous: must be one of static|c10d"),
    ],
)
def test_bad_restart_settings_are_one_line(tmp_path, cluster, says):
    cfg = write_config(tmp_path, {"cluster": cluster})
    result = CliRunner().invoke(main, ["slurm", str(cfg)])
    assert result.exit_code == 2 and result.stderr.startswith(says), result.stderr
    assert result.stderr.count("\n") == 1
