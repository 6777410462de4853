"""The functions each Slurm step ships to the nodes (`bash -c "$(declare -f …)"`) are computed by xgen from
the script itself (xgen.render.shipped), never listed by hand. These tests run whole `xgen slurm` scripts
under a fake `srun` that, for every step, first checks that each `xgen_*` name the step's functions (and its
own last lines) call is defined in the step, then runs the step once per fake node with fake `scontrol`,
`nvidia-smi`/`npu-smi`, `apptainer` and python. Dropping any one name from a step's list fails the run.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from xgen.load import parse_mapping
from xgen.render import functions, shipped
from xgen.targets import slurm

FAKES = Path(__file__).resolve().parents[1] / "fakes"
# The fake srun: skips its options, saves the step's text, checks it, runs it once per node of FAKE_NODES.
FAKE_SRUN = f"""#!{sys.executable}
import os, re, subprocess, sys
argv = sys.argv[1:]
body = argv[argv.index("bash") + 2]
dump = os.environ["XGEN_TEST_DUMP"]
n = len([f for f in os.listdir(dump) if f.startswith("step.")])
with open(os.path.join(dump, f"step.{{n}}"), "w") as f:
    f.write(body)
lines = body.split("\\n")
last = max(i for i, line in enumerate(lines) if line == "}}") if "}}" in lines else 0
defs, calls = "\\n".join(lines[: last + 1]), lines[last + 1 :]
first_words = [line.split()[0] for line in calls if line.split()]
entries = sorted({{w for w in first_words if w.startswith("xgen_")}})
check = defs + '''
bad=0
for f in $(compgen -A function); do
  for w in $(declare -f "$f" | sed 1d | grep -o 'xgen_[a-z0-9_]*' | sort -u); do
    declare -F "$w" >/dev/null && continue
    echo "node step: $f calls $w, which the step does not define" >&2
    bad=1
  done
done
for w in ''' + " ".join(entries) + '''; do
  declare -F "$w" >/dev/null || {{ echo "node step: runs $w, which the step does not define" >&2; bad=1; }}
done
exit $bad
'''
if subprocess.run(["bash", "-c", check]).returncode:
    sys.exit(97)
# Check only, except the hostfile step: the batch shell needs its output to go on.
if os.environ.get("XGEN_TEST_CHECK_ONLY") and "xgen-slots" not in body:
    sys.exit(0)
rc = 0
for i, node in enumerate(os.environ["FAKE_NODES"].split()):
    env = dict(os.environ, SLURMD_NODENAME=node, SLURM_NODEID=str(i))
    rc = subprocess.run(["bash", "-c", body], env=env).returncode or rc
sys.exit(rc)
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
if [[ "$1 $2" == "show hostnames" ]]; then printf '%s\\n' $FAKE_NODES; exit 0; fi
exit 1
"""
# Every python the steps start (runtime check, preflight, launchers) succeeds and records its arguments.
FAKE_PYTHON = """#!/usr/bin/env bash
[[ "${1:-} ${2:-}" == "-c import runtime" ]] && exit 0  # xgen_check_python: the runtime imports
printf '%s ' "$@" >>"$XGEN_TEST_DUMP/python.calls"
echo >>"$XGEN_TEST_DUMP/python.calls"
"""
NVIDIA_SMI = """#!/bin/sh
[ "$1" = -L ] && for i in 0 1; do echo "GPU $i: NVIDIA H100 (UUID: GPU-$i)"; done
exit 0
"""
NPU_SMI = """#!/bin/sh
[ "$1" = info ] && printf '        Total Count                    : 2\\n'
exit 0
"""

# A NIC this machine has (the steps check it exists); "l" matches lo by prefix where there is no other.
NIC = next((n for n in sorted(Path("/sys/class/net").iterdir()) if n.name != "lo"), Path("l")).name
CASES = {
    "cuda-requeue": ({"device": "cuda", "devices_per_node": 2}, {"requeue": True}, {}, "nvidia-smi"),
    "npu": ({"device": "npu"}, {}, {}, "npu-smi"),
    "cpu": ({"device": "cpu"}, {}, {}, None),
    "auto-deepspeed": ({}, {}, {"launcher": "deepspeed"}, "nvidia-smi"),
    "pyxis-env": (
        {},
        {"requeue": True},
        {"container": {"runtime": "pyxis", "env": {"A": "b c"}}},
        "nvidia-smi",
    ),
    "apptainer-auto": ({}, {}, {"container": {"runtime": "apptainer"}}, "npu-smi"),
}


def render(tmp_path: Path, case: str) -> str:
    cluster, slurm_keys, extra, _tool = CASES[case]
    raw = {
        "job": {"name": "steps", "workdir": str(tmp_path)},
        "cluster": {"nodes": 2, "master_addr": "10.255.255.1", "nic": NIC, **cluster},
        "slurm": slurm_keys,
        "python": "python",
        **extra,
    }
    if "container" in raw:
        image = tmp_path / "image.sif"
        image.write_text("")
        raw["container"] = {"image": str(image), **raw["container"]}
    return slurm.build(parse_mapping(raw, tmp_path / "job.yaml"))


def run(tmp_path: Path, case: str, text: str, check_only: bool = False) -> subprocess.CompletedProcess:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    tool = CASES[case][3]
    tools = {"srun": FAKE_SRUN, "scontrol": FAKE_SCONTROL, "python": FAKE_PYTHON}
    if tool:
        tools[tool] = NVIDIA_SMI if tool == "nvidia-smi" else NPU_SMI
    for name, body in tools.items():
        (bindir / name).write_text(body)
        (bindir / name).chmod(0o755)
    if "apptainer" in case and not (bindir / "apptainer").exists():
        (bindir / "apptainer").symlink_to(FAKES / "apptainer")
    (tmp_path / "dump").mkdir(exist_ok=True)
    script = tmp_path / "job.sh"
    script.write_text(text)
    env = {
        "PATH": f"{bindir}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),
        "ASCEND_TOOLKIT_HOME": str(tmp_path / "no-cann"),
        "XGEN_TEST_DUMP": str(tmp_path / "dump"),
        "FAKE_NODES": "node-a node-b",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_JOB_NODELIST": "node-[a-b]",
        **({"XGEN_TEST_CHECK_ONLY": "1"} if check_only else {}),
    }
    return subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("case", list(CASES))
def test_every_node_step_defines_what_it_calls_and_runs(tmp_path, case):
    text = render(tmp_path, case)
    result = run(tmp_path, case, text)
    assert result.returncode == 0, result.stderr
    assert "command not found" not in result.stderr, result.stderr
    steps = sorted((tmp_path / "dump").glob("step.*"))
    assert len(steps) == (3 if "deepspeed" in case else 2), result.stderr  # preflight, [hostfile,] training
    launches = (tmp_path / "dump" / "python.calls").read_text()
    launcher = "deepspeed.launcher.runner" if "deepspeed" in case else "-m runtime launch"
    assert launches.count(launcher) == 2, launches  # once per node


def _declare_lists(text: str) -> list[tuple[int, list[str]]]:
    """(line number, names) of every `$(declare -f …)` in the script."""
    return [
        (i, line[len("$(declare -f ") : -1].split())
        for i, line in enumerate(text.split("\n"))
        if line.startswith("$(declare -f ")
    ]


@pytest.mark.parametrize("case", ["cuda-requeue", "apptainer-auto"])
def test_a_name_dropped_from_any_step_list_fails_the_run(tmp_path, case):
    """The check in the fake srun is what a hand-kept list would have needed: drop each name in turn from
    each step's `declare -f` list and the run fails, naming it."""
    text = render(tmp_path, case)
    lines = text.split("\n")
    dropped = 0
    for index, names in _declare_lists(text):
        for name in names:
            mutated = list(lines)
            mutated[index] = "$(declare -f " + " ".join(n for n in names if n != name) + ")"
            for leftover in (tmp_path / "dump").glob("*") if (tmp_path / "dump").exists() else []:
                leftover.unlink()
            result = run(tmp_path, case, "\n".join(mutated), check_only=True)
            assert result.returncode != 0, f"dropping {name} went unnoticed"
            assert f"{name}, which the step does not define" in result.stderr, result.stderr
            dropped += 1
    assert dropped >= 10


def test_shipped_lists_follow_the_calls():
    """The closure itself, on a tiny script: callees of callees, in definition order, no bystanders."""
    defs = [("xgen_a", "xgen_c"), ("xgen_b", ":"), ("xgen_c", "xgen_say hi"), ("xgen_say", "echo")]
    text = "".join(f"{name}() {{\n  {body}\n}}\n\n" for name, body in defs)
    assert list(functions(text)) == ["xgen_a", "xgen_b", "xgen_c", "xgen_say"]
    assert shipped(text, ["xgen_a"]) == ["xgen_a", "xgen_c", "xgen_say"]
    with pytest.raises(ValueError, match="xgen_missing"):
        shipped(text, ["xgen_missing"])


def test_no_hand_kept_lists_in_the_templates():
    templates = Path(__file__).resolve().parents[2] / "templates"
    for path in templates.glob("*.j2"):
        for line in path.read_text().splitlines():
            if "declare -f" in line and line.lstrip().startswith("$("):
                assert re.fullmatch(r"\$\(declare -f \{\{ ship\([^)]*\) \}\}\)", line.strip()), (
                    path.name,
                    line,
                )
