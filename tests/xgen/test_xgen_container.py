"""Containers: the `container:` section, its refusals, its quoting, and the scripts run through
the fake runtimes in tests/fakes (a fake `apptainer` that records its argv and runs the command here).

The two-node proof (pyxis and Apptainer training through the fakes on real Slurm) is
tests/cluster/test_e2e_container.py.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xgen_helpers import REPO, run_xgen

from xgen.errors import XgenError
from xgen.load import parse_mapping
from xgen.targets import shell, slurm

FAKES = REPO / "tests" / "fakes"
SOURCE = Path("/cluster/xgen/job.yaml")
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
FAST = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def config(runtime: str = "apptainer", **container) -> dict:
    return {
        "cluster": {"nodes": 1, "device": "cpu"},
        "container": {"image": "/images/train.sif", "runtime": runtime, **container},
    }


def parse(raw: dict, source: Path = SOURCE):
    return parse_mapping(raw, source)


# --- the section and its rules ------------------------------------------------------------------------

BAD = [
    ({"container": {"runtime": "apptainer"}}, "container.runtime: needs container.image"),
    ({"container": {"mounts": ["/a"]}}, "container.mounts: needs container.image"),
    ({"container": {"image": "x.sif"}}, "container.runtime: required with container.image"),
    (
        {"container": {"image": "x.sif", "runtime": "docker"}},
        "container.runtime: must be one of pyxis|apptainer",
    ),
    ({"container": {"image": "x", "runtime": "pyxis", "mounts": ["rel:/b"]}}, "container.mounts[0]:"),
    ({"container": {"image": "x", "runtime": "pyxis", "mounts": ["/a,b:/b"]}}, "container.mounts[0]:"),
    ({"container": {"image": "x", "runtime": "pyxis", "mounts": ["/a:/b:ro:x"]}}, "container.mounts[0]:"),
    (
        {"container": {"image": "x", "runtime": "apptainer", "mounts": ["/a:/b:ro+rprivate"]}},
        "apptainer takes ro or rw",
    ),
    ({"container": {"image": "x", "runtime": "pyxis", "workdir": "work"}}, "container.workdir:"),
    ({"container": {"image": "x", "runtime": "pyxis", "env": {"A-B": "1"}}}, "container.env.A-B:"),
    (
        {"container": {"image": "x", "runtime": "pyxis", "env": {"NODE_RANK": "1"}}},
        "container.env.NODE_RANK:",
    ),
    ({"container": {"image": "x", "runtime": "pyxis", "imgae": "y"}}, "did you mean 'image'"),
    ({"container": {"image": "a\nb", "runtime": "pyxis"}}, "container.image:"),
]


@pytest.mark.parametrize("raw,message", BAD, ids=[m for _, m in BAD])
def test_bad_container_sections_name_the_key(raw, message):
    with pytest.raises(XgenError) as err:
        parse(raw)
    assert message in err.value.line() and "\n" not in err.value.line()


def test_pyxis_mounts_keep_their_flags_and_workdir_is_mounted_first():
    c = parse(config("pyxis", mounts=["/models:/m:ro+rprivate", "/data"]))
    text = slurm.build(c)
    assert "--container-mounts=/cluster/xgen:/cluster/xgen,/models:/m:ro+rprivate,/data:/data" in text
    assert "--container-workdir=/cluster/xgen" in text


@pytest.mark.parametrize(
    "runtime,command,line",
    [
        ("pyxis", ["shell"], "container.runtime: pyxis with xgen shell: pyxis is a Slurm (srun) plugin"),
        ("pyxis", ["deepspeed"], "container.runtime: pyxis with xgen deepspeed"),
        (
            "apptainer",
            ["deepspeed"],
            "container.runtime: apptainer with xgen deepspeed: DeepSpeed's launcher",
        ),
        ("apptainer", ["accelerate"], "container.runtime: apptainer with xgen accelerate"),
        ("pyxis", ["doctor", "shell"], "container.runtime: pyxis with xgen shell"),
    ],
)
def test_unsupported_generators_refuse_in_one_line(tmp_path, runtime, command, line):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config(runtime)))
    out = tmp_path / "out.sh"
    args = [*command, str(path), "-o", str(out)]
    if command[-1] == "deepspeed":
        args += ["--hostfile", str(tmp_path / "hosts")]
    proc = run_xgen(*args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and line in proc.stderr, proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("runtime", ["pyxis", "apptainer"])
def test_deepspeed_launcher_under_slurm_with_a_container_is_refused(tmp_path, runtime):
    """DeepSpeed's node step is not wrapped in the image: one line, not a job that trains outside it."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**config(runtime), "launcher": "deepspeed"}))
    out = tmp_path / "out.sh"
    proc = run_xgen("slurm", str(path), "-o", str(out))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "container: not supported with launcher: deepspeed" in proc.stderr
    assert not out.exists()


def test_container_credentials_are_hidden_and_make_the_script_private(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config(env={"HF_TOKEN": "hf_SecretValue42", "HF_HOME": "/hf"})))
    path.chmod(0o600)
    out = tmp_path / "job.sh"
    proc = run_xgen("slurm", str(path), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "hf_SecretValue42" not in proc.stderr + proc.stdout
    assert out.stat().st_mode & 0o077 == 0
    text = out.read_text()
    assert "export XGEN_SECRET_NAMES=HF_TOKEN" in text
    # the value is exported at top level, never inside a function (whose text srun puts on its command line)
    node_functions = text.split("xgen_container_argv() {", 1)[1]
    assert "hf_SecretValue42" not in node_functions


# --- quoting: every value arrives byte for byte --------------------------------------------------------

PATH_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters=",:\0\n\r"), max_size=20)


def _run(script: str) -> list[bytes]:
    proc = subprocess.run(["bash", "-c", script], capture_output=True, check=True)
    return proc.stdout.split(b"\0")


@given(image=TEXT, src=PATH_TEXT, flags=st.sampled_from(["", "ro", "rw"]), value=TEXT, workdir=PATH_TEXT)
@FAST
def test_apptainer_values_arrive_byte_for_byte(image, src, flags, value, workdir):
    mount = "/" + src + (":/in:" + flags if flags else "")
    raw = config(image=image, mounts=[mount], env={"XGEN_CT_VALUE": value}, workdir="/" + workdir)
    try:
        c = parse(raw)
    except XgenError as err:
        assert "\n" not in err.line()
        return
    text = shell.build(c, node_rank=0)
    subprocess.run(["bash", "-n"], input=text.encode(), check=True)
    body = text.rsplit("# --- preflight ---\nxgen_preflight\n", 1)[0]
    probe = body + (
        "XGEN_DEVICE=cpu\nxgen_container_argv\n"
        'printf "%s\\0" "${XGEN_IN_CONTAINER[@]}"; printf "%s\\0" "$APPTAINERENV_XGEN_CT_VALUE"\n'
    )
    words = _run(probe)
    assert words[-2] == value.encode()
    argv = words[:-2]
    assert argv[:3] == [b"apptainer", b"exec", b"--bind"]
    expected_mount = "/" + src + (":/in:" + flags if flags else ":/" + src)
    assert expected_mount.encode() in argv
    assert argv[-3:] == [b"--pwd", ("/" + workdir).encode(), image.encode()]


@given(image=TEXT, src=PATH_TEXT, value=TEXT, workdir=PATH_TEXT)
@FAST
def test_pyxis_values_arrive_byte_for_byte(image, src, value, workdir):
    raw = config("pyxis", image=image, mounts=["/" + src + ":/in:ro"], env={"XGEN_CT_VALUE": value})
    raw["container"]["workdir"] = "/" + workdir
    try:
        c = parse(raw)
    except XgenError as err:
        assert "\n" not in err.line()
        return
    text = slurm.build(c)
    subprocess.run(["bash", "-n"], input=text.encode(), check=True)
    body = text.split("# Main flow.", 1)[0]
    probe = body + (
        'printf "%s\\0" "${XGEN_PYXIS[@]}"\n'
        '(unset XGEN_CT_VALUE; xgen_container_env; printf "%s\\0" "$XGEN_CT_VALUE")\n'
    )
    words = _run(probe)
    assert words[-2] == value.encode()
    assert words[:4] == [
        f"--container-image={image}".encode(),
        f"--container-mounts=/cluster/xgen:/cluster/xgen,/{src}:/in:ro".encode(),
        f"--container-workdir=/{workdir}".encode(),
        b"--container-env=PYTHONUNBUFFERED",
    ]


# --- device flags, decided at run time with device: auto ------------------------------------------------


def _fake_tool(folder: Path, name: str, output: str) -> None:
    tool = folder / name
    tool.write_text(f"#!/usr/bin/env bash\nprintf '%s\\n' {shlex.quote(output)}\n")
    tool.chmod(0o755)


@pytest.mark.parametrize(
    "device,tool,expect_nv",
    [("cuda", None, True), ("cpu", None, False), ("auto", "nvidia-smi", True), ("auto", "npu-smi", False)],
)
def test_nv_flag_follows_the_device(tmp_path, device, tool, expect_nv):
    raw = config()
    raw["cluster"]["device"] = device
    text = shell.build(parse(raw), node_rank=0)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if tool == "nvidia-smi":
        _fake_tool(bin_dir, tool, "GPU 0: Fake (UUID: GPU-0)")
    elif tool == "npu-smi":
        _fake_tool(bin_dir, tool, "Total Count : 8")
    body = text.rsplit("# --- preflight ---\nxgen_preflight\n", 1)[0]
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(
        ["bash", "-c", body + 'xgen_container_argv\nprintf "%s\\0" "${XGEN_IN_CONTAINER[@]}"'],
        capture_output=True,
        env=env,
        check=True,
    )
    assert (b"--nv" in proc.stdout.split(b"\0")) == expect_nv
    if device == "npu" or tool == "npu-smi":
        assert "/dev/davinci_manager" in text  # the Ascend binds (only those present are used)


def test_pinned_device_carries_no_other_kinds_branch():
    raw = config()
    raw["cluster"]["device"] = "cuda"
    text = shell.build(parse(raw), node_rank=0)
    assert "--nv" in text and "davinci" not in text
    raw["cluster"]["device"] = "npu"
    text = shell.build(parse(raw), node_rank=0)
    assert "--nv" not in text and "/dev/davinci_manager" in text


# --- the whole shell script through the fake apptainer --------------------------------------------------

FAKE_PYTHON = """#!/usr/bin/env bash
[[ "${1:-} ${2:-}" == "-c import runtime" ]] && exit 0  # xgen_check_python: the runtime imports
# the runtime check and the preflight pass; the launch records where it ran and what it saw
case "${1:-} ${2:-} ${3:-}" in
  "-m runtime check" | "-m runtime.preflight "* | "-c import runtime ") exit 0 ;;
esac
printf '%s\\0' "$PWD" "${XGEN_CT_VALUE:-unset}" "${NCCL_DEBUG:-unset}" "${HF_TOKEN:-unset}" "$@" >"$DUMP"
"""


def test_shell_script_runs_the_launch_through_apptainer(tmp_path):
    """xgen shell with Apptainer on one node: the runtime check, the preflight and torch.distributed.run
    each go through `apptainer exec` (the fake records them); container.env, cluster.env and a pass_env
    credential reach the launched command; no value is on any recorded command line."""
    work = tmp_path / "work"
    inner = tmp_path / "inner"
    work.mkdir()
    inner.mkdir()
    image = tmp_path / "train.sif"
    image.write_text("fake image")
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    raw = {
        "cluster": {"nodes": 1, "device": "cpu", "env": {"NCCL_DEBUG": "INFO"}, "pass_env": ["HF_TOKEN"]},
        "container": {
            "image": str(image),
            "runtime": "apptainer",
            "mounts": [f"{inner}:{inner}:ro"],
            "env": {"XGEN_CT_VALUE": "it's a $value"},
            "workdir": str(inner),
        },
        "python": str(python),
    }
    path = work / "xgen.yaml"
    path.write_text(yaml.safe_dump(raw))
    script = work / "shell.sh"
    proc = run_xgen("shell", str(path), "--node-rank", "0", "-o", str(script))
    assert proc.returncode == 0, proc.stderr
    log = tmp_path / "calls.jsonl"
    dump = tmp_path / "dump"
    env = {
        **os.environ,
        "PATH": f"{FAKES}:{os.environ['PATH']}",
        "XGEN_FAKE_CONTAINER_LOG": str(log),
        "DUMP": str(dump),
        "HF_TOKEN": "hf_PassedByName9",
        "XGEN_RUN_DIR": str(work / "run"),
    }
    env.pop("XGEN_CT_VALUE", None)
    run = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0, run.stderr[-3000:]
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    commands = [c["argv"][c["argv"].index(str(image)) + 1 :] for c in calls]
    # Each check first asks the interpreter to import the runtime (xgen_check_python).
    imports = [cmd for cmd in commands if cmd[1:] == ["-c", "import runtime"]]
    assert len(imports) == 2, commands
    commands = [cmd for cmd in commands if cmd not in imports]
    assert len(commands) == 4, commands
    assert [cmd[:3] for cmd in commands] == [
        [str(python), "-m", "runtime.preflight"],
        [str(python), "-m", "runtime"],  # runtime check
        [str(python), "-c", commands[2][2]],  # the free port for this one-node run
        [str(python), "-m", "runtime"],  # runtime launch: torch.distributed.run
    ], commands
    assert commands[3][3] == "launch" and commands[1][3] == "check"
    for call in calls:
        argv = call["argv"]
        assert argv[0] == "exec" and "--nv" not in argv
        assert f"{work}:{work}" in argv and f"{inner}:{inner}:ro" in argv
        assert argv[argv.index("--pwd") + 1] == str(inner)
        assert not any("hf_PassedByName9" in a or "$value" in a for a in argv)
    where, value, nccl, token, *args = dump.read_bytes().decode().split("\0")[:-1]
    assert (where, value, nccl, token) == (str(inner), "it's a $value", "INFO", "hf_PassedByName9")
    assert args[:3] == ["-m", "runtime", "launch"]
