"""Containers: the `container:` section, its refusals, its quoting, and the scripts run through
the fake runtimes in tests/fakes (a fake `apptainer` and a fake `docker` that record their argv and run the
command here).

The two-node proof (pyxis and Apptainer training through the fakes on real Slurm) is
tests/cluster/test_e2e_container.py.
"""

from __future__ import annotations

import json
import os
import re
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
        {"container": {"image": "x.sif", "runtime": "podman"}},
        "container.runtime: must be one of pyxis|apptainer|docker",
    ),
    (
        {"container": {"image": "x", "runtime": "docker", "mounts": ["/a:/b:ro+rprivate"]}},
        "docker takes -v options joined by , (ro,rslave)",
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
        ("docker", ["slurm"], "container.runtime: docker with xgen slurm: Slurm neither starts nor stops"),
        ("docker", ["accelerate"], "container.runtime: docker with xgen accelerate"),
        ("docker", ["doctor", "slurm"], "container.runtime: docker with xgen slurm"),
    ],
)
def test_unsupported_generators_refuse_in_one_line(tmp_path, runtime, command, line):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config(runtime)))
    out = tmp_path / "out.sh"
    args = [*command, str(path), "-o", str(out)]
    if command[-1] == "deepspeed":
        args += ["--hostfile", str(tmp_path / "hosts")]
    if command[-1] == "accelerate":
        args += ["--node-rank", "0"]
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


# --- docker: xgen shell, and xgen deepspeed on one node, through the fake docker ------------------------


@pytest.mark.parametrize("job", ["sft 7b", "-lead", "a;rm -rf /", "日本語", "x" * 3])
def test_docker_container_name_is_one_docker_accepts(job):
    """job.name in docker's name alphabet ([a-zA-Z0-9][a-zA-Z0-9_.-]+), per config file and target."""
    from xgen.targets.common import docker_name

    c = parse({**config("docker"), "job": {"name": job}})
    name = docker_name(c, "shell") + "-node0"
    assert re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+", name), name
    assert docker_name(c, "doctor shell").startswith("xgen-doctor-")
    other = parse({**config("docker"), "job": {"name": job}}, SOURCE.with_name("other.yaml"))
    assert docker_name(other, "shell") != docker_name(c, "shell")


def test_docker_deepspeed_on_several_nodes_is_refused_in_one_line(tmp_path):
    """DeepSpeed's launcher ssh'es to the other hosts and starts their ranks outside any container."""
    raw = config("docker")
    raw["cluster"].update(nodes=2, hosts=["n0", "n1"])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = run_xgen("deepspeed", str(path), "--hostfile", str(tmp_path / "hosts"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(
        "xgen: error: container.runtime: docker with xgen deepspeed on 2 nodes: DeepSpeed's launcher starts "
        "the other hosts' ranks over ssh, outside any container; use xgen shell on every node"
    )
    assert not (tmp_path / "hosts").exists()


def _docker_argv(
    text: str, env: dict[str, str], before: str = "XGEN_DEVICE=cpu\n", after: str = ""
) -> list[bytes]:
    """The words xgen_container_argv builds in this script (the fake docker answers `container inspect`),
    then what `after` prints."""
    body = text.rsplit("# --- preflight ---\nxgen_preflight\n", 1)[0]
    probe = body + before + 'xgen_container_argv\nprintf "%s\\0" "${XGEN_IN_CONTAINER[@]}"\n' + after
    proc = subprocess.run(["bash", "-c", probe], capture_output=True, env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.split(b"\0")[:-1]


def _fake_path(tmp_path: Path) -> dict[str, str]:
    return {"PATH": f"{FAKES}:/usr/bin:/bin", "HOME": str(tmp_path), "NODE_RANK": "0"}


@given(
    image=TEXT, src=PATH_TEXT, flags=st.sampled_from(["", "ro", "ro,rslave"]), value=TEXT, workdir=PATH_TEXT
)
@FAST
def test_docker_values_arrive_byte_for_byte(tmp_path, image, src, flags, value, workdir):
    mount = "/" + src + (":/in:" + flags if flags else "")
    raw = config("docker", image=image, mounts=[mount], env={"XGEN_CT_VALUE": value}, workdir="/" + workdir)
    try:
        c = parse(raw)
    except XgenError as err:
        assert "\n" not in err.line()
        return
    text = shell.build(c, node_rank=0)
    subprocess.run(["bash", "-n"], input=text.encode(), check=True)
    # A docker that prints the value it was started with (by the child bash, under its own name).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "docker").write_text(
        '#!/usr/bin/env bash\n[[ "$1" == container ]] && exit 1\nprintf "%s\\0" "${XGEN_CT_VALUE-unset}"\n'
    )
    (bin_dir / "docker").chmod(0o755)
    env = {**_fake_path(tmp_path), "PATH": f"{bin_dir}:/usr/bin:/bin"}
    # The mount sources do not exist here: xgen_die only says so, and the probe goes on.
    words = _docker_argv(
        text, env, "XGEN_DEVICE=cpu\nxgen_die() { :; }\n", after='"${XGEN_IN_CONTAINER[@]}" python\n'
    )
    assert words[-1] == value.encode()  # what docker was given for -e XGEN_CT_VALUE
    argv = words[:-1]
    # container.env: the child bash names it for docker alone; the value is on no command line.
    assert argv[:2] == [b"bash", b"-c"] and argv[3:6] == [b"xgen-docker", b"docker", b"run"]
    assert b"XGEN_CT_VALUE" in argv[2] and argv[argv.index(b"-w") :].count(b"XGEN_CT_VALUE") == 1
    assert not any(b"XGEN_CT_VALUE=" in word for word in argv)
    expected_mount = "/" + src + (":/in:" + flags if flags else ":/" + src)
    assert argv[argv.index(expected_mount.encode()) - 1] == b"-v"
    assert argv[argv.index(b"-w") + 1] == ("/" + workdir).encode()
    assert argv[-1] == image.encode()


def _fake_npu_tree(root: Path) -> dict[str, str]:
    """A stand-in for an Ascend node's device files and driver paths; the script's paths are moved there."""
    for name in ("davinci0", "davinci1", "davinci_manager", "devmm_svm", "hisi_hdc"):
        (root / "dev").mkdir(parents=True, exist_ok=True)
        (root / "dev" / name).write_text("")
    for path in ("usr/local/Ascend/driver", "usr/local/dcmi"):
        (root / path).mkdir(parents=True)
    (root / "usr/local/sbin").mkdir(parents=True)
    (root / "usr/local/sbin/npu-smi").write_text("")
    (root / "etc").mkdir()
    (root / "etc/ascend_install.info").write_text("")
    return {
        "/dev/davinci": f"{root}/dev/davinci",
        "/dev/devmm_svm": f"{root}/dev/devmm_svm",
        "/dev/hisi_hdc": f"{root}/dev/hisi_hdc",
        "/usr/local/": f"{root}/usr/local/",
        "/etc/ascend_install.info": f"{root}/etc/ascend_install.info",
    }


@pytest.mark.parametrize(
    "device,tool,expect",
    [
        ("cuda", None, "gpus"),
        ("cpu", None, None),
        ("auto", "nvidia-smi", "gpus"),
        ("npu", None, "npu"),
        ("auto", "npu-smi", "npu"),
    ],
)
def test_docker_devices_follow_the_device_fake_npu_tree(tmp_path, device, tool, expect):
    """--gpus all on NVIDIA; on NPU every /dev/davinciN, the driver's three devices and the driver, npu-smi,
    dcmi and install-info mounts read-only (the node's paths moved under tmp_path); nothing on CPU."""
    raw = config("docker")
    raw["cluster"]["device"] = device
    text = shell.build(parse(raw), node_rank=0)
    moved = _fake_npu_tree(tmp_path / "node")
    function = text[text.index("xgen_container_argv() {") :]
    function = function[: function.index("\n}\n") + 3]
    for path, there in moved.items():
        text = text.replace(function, function.replace(path, there))
        function = function.replace(path, there)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if tool == "nvidia-smi":
        _fake_tool(bin_dir, tool, "GPU 0: Fake (UUID: GPU-0)")
    elif tool == "npu-smi":
        _fake_tool(bin_dir, tool, "Total Count : 2")
    env = {**_fake_path(tmp_path), "PATH": f"{bin_dir}:{FAKES}:/usr/bin:/bin"}
    argv = [
        w.decode()
        for w in _docker_argv(text, env, "" if device == "auto" else "XGEN_DEVICE=" + device + "\n")
    ]
    assert argv[:8] == ["docker", "run", "--rm", "--init", "--name", argv[5], "--net=host", "--ipc=host"]
    assert re.fullmatch(r"xgen-xgen-train-[0-9a-f]{8}-node0", argv[5])
    assert ("--gpus" in argv) == (expect == "gpus") and argv[
        argv.index("--gpus") + 1 if "--gpus" in argv else 0
    ]
    devices = [argv[i + 1] for i, w in enumerate(argv) if w == "--device"]
    mounts = [argv[i + 1] for i, w in enumerate(argv) if w == "-v"]
    node = tmp_path / "node"
    if expect == "npu":
        assert devices == [
            f"{node}/dev/{n}" for n in ("davinci0", "davinci1", "davinci_manager", "devmm_svm", "hisi_hdc")
        ]
        assert mounts[:4] == [
            f"{node}/{p}:{node}/{p}:ro"
            for p in (
                "usr/local/Ascend/driver",
                "usr/local/sbin/npu-smi",
                "usr/local/dcmi",
                "etc/ascend_install.info",
            )
        ]
    else:
        assert devices == [] and not any("Ascend" in m for m in mounts)


def test_docker_on_an_npu_node_without_davinci_devices_stops_in_one_line(tmp_path):
    raw = config("docker")
    raw["cluster"]["device"] = "npu"
    text = shell.build(parse(raw), node_rank=0).replace("(/dev/davinci[0-9]*)", f"({tmp_path}/davinci[0-9]*)")
    body = text.rsplit("# --- preflight ---\nxgen_preflight\n", 1)[0]
    proc = subprocess.run(
        ["bash", "-c", body + "xgen_container_argv\n"],
        capture_output=True,
        text=True,
        env=_fake_path(tmp_path),
    )
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "error: container.runtime docker: no /dev/davinciN on " in proc.stderr


FAKE_PYTHON_DOCKER = """#!/usr/bin/env bash
[[ "${1:-} ${2:-}" == "-c import runtime" ]] && exit 0  # xgen_check_python: the runtime imports
case "${1:-} ${2:-} ${3:-}" in
  "-m runtime check" | "-m runtime.preflight "*) exit 0 ;;
esac
printf '%s\\0' "$PWD" "${XGEN_CT_VALUE:-unset}" "${NCCL_DEBUG:-unset}" "${HF_TOKEN:-unset}" \\
  "${XGEN_NOT_NAMED:-unset}" "${XGEN_RUN_DIR:-unset}" "$@" >"$DUMP"
"""


def _docker_job(tmp_path: Path, **cluster) -> tuple[Path, Path, Path]:
    """A one-node CPU job through docker: (config, the dir mounted as container.mounts, the fake python)."""
    work, inner = tmp_path / "work", tmp_path / "inner"
    work.mkdir()
    inner.mkdir()
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON_DOCKER)
    python.chmod(0o755)
    raw = {
        "job": {"name": "sft 7b"},
        "cluster": {
            "nodes": 1,
            "device": "cpu",
            # DUMP: where the fake python writes; docker passes in only what it is told
            "env": {"NCCL_DEBUG": "INFO", "DUMP": str(tmp_path / "dump")},
            "pass_env": ["HF_TOKEN"],
            **cluster,
        },
        "container": {
            "image": "ascendai/llamafactory:latest",
            "runtime": "docker",
            "mounts": [f"{inner}:{inner}:ro"],
            "env": {"XGEN_CT_VALUE": "it's a $value"},
            "workdir": str(inner),
        },
        "python": str(python),
    }
    path = work / "xgen.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, inner, python


def _run_fake_docker(
    script: Path, tmp_path: Path, **extra: str
) -> tuple[subprocess.CompletedProcess, list[dict]]:
    log = tmp_path / "calls.jsonl"
    env = {
        **os.environ,
        "PATH": f"{FAKES}:{os.environ['PATH']}",
        "XGEN_FAKE_CONTAINER_LOG": str(log),
        "HF_TOKEN": "hf_PassedByName9",
        "XGEN_NOT_NAMED": "host only",
        "XGEN_RUN_DIR": str(tmp_path / "work" / "run"),
        **extra,
    }
    for name in ("XGEN_CT_VALUE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    run = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0, run.stderr[-3000:]
    return run, [json.loads(line) for line in log.read_text().splitlines()]


def test_shell_script_runs_the_launch_through_fake_docker(tmp_path):
    """xgen shell with docker on one node: each python command runs in `docker run --rm --init --name …
    --net=host --ipc=host -v … -w … -e NAME … IMAGE` (the fake docker records it); container.env, cluster.env
    and a pass_env credential reach the launched command, a host variable not named does not, and no value
    is on any recorded command line."""
    path, inner, python = _docker_job(tmp_path)
    script = tmp_path / "work" / "shell.sh"
    proc = run_xgen("shell", str(path), "--node-rank", "0", "-o", str(script))
    assert proc.returncode == 0, proc.stderr
    # SC2016: the `$value` of container.env, quoted so that it does not expand, which is the point.
    assert subprocess.run(["shellcheck", "-e", "SC2016", str(script)], capture_output=True).returncode == 0
    run, calls = _run_fake_docker(script, tmp_path)
    inspects = [c["argv"] for c in calls if c["argv"][:2] == ["container", "inspect"]]
    runs = [c["argv"] for c in calls if c["argv"][:1] == ["run"]]
    assert len(inspects) == len(runs) == 6 and not [c for c in calls if c["argv"][:1] == ["rm"]]
    commands = [argv[argv.index("ascendai/llamafactory:latest") + 1 :] for argv in runs]
    assert [cmd[1:4] for cmd in commands] == [
        ["-c", "import runtime"],  # the preflight's xgen_check_python
        ["-m", "runtime.preflight", str(tmp_path / "work" / "run" / "config.yaml")],
        ["-c", "import runtime"],  # the runtime check's
        ["-m", "runtime", "check"],
        ["-c", commands[4][2]],  # the free port for this one-node run
        ["-m", "runtime", "launch"],
    ], commands
    name = inspects[0][2]
    assert re.fullmatch(r"xgen-sft-7b-[0-9a-f]{8}-node0", name) and {i[2] for i in inspects} == {name}
    assert not any("hf_PassedByName9" in a or "$value" in a for call in calls for a in call["argv"])
    for argv in (r[: r.index("ascendai/llamafactory:latest")] for r in runs):  # docker's own options
        assert argv[:8] == ["run", "--rm", "--init", "--name", name, "--net=host", "--ipc=host", "-v"]
        assert f"{tmp_path / 'work'}:{tmp_path / 'work'}" in argv and f"{inner}:{inner}:ro" in argv
        assert argv[argv.index("-w") + 1] == str(inner) and "--gpus" not in argv and "--device" not in argv
        named = [argv[i + 1] for i, w in enumerate(argv) if w == "-e"]
        assert {"HF_TOKEN", "XGEN_CT_VALUE", "PYTHON"} <= set(named)  # NCCL_DEBUG: set before the launch
        assert not any("=" in n for n in named) and "XGEN_NOT_NAMED" not in named
    where, value, nccl, token, leak, run_dir, *args = (
        (tmp_path / "dump").read_bytes().decode().split("\0")[:-1]
    )
    assert (where, value, nccl, token, leak) == (
        str(inner),
        "it's a $value",
        "INFO",
        "hf_PassedByName9",
        "unset",
    )
    assert run_dir == str(tmp_path / "work" / "run")
    assert args[:3] == ["-m", "runtime", "launch"] and args[-1] == str(
        tmp_path / "work" / "run" / "config.yaml"
    )


def test_rerun_removes_the_container_a_killed_run_left_fake_docker(tmp_path):
    """A container of this job and node still exists (its run was killed): the rerun says so, removes it
    (docker rm -f) and goes on."""
    path, _, _ = _docker_job(tmp_path)
    script = tmp_path / "work" / "shell.sh"
    assert run_xgen("shell", str(path), "--node-rank", "0", "-o", str(script)).returncode == 0
    name = re.search(r"local container=(xgen-sft-7b-[0-9a-f]{8})-node", script.read_text())[1] + "-node0"
    existing = tmp_path / "containers"
    existing.write_text(name + "\n")
    run, calls = _run_fake_docker(script, tmp_path, XGEN_FAKE_DOCKER_CONTAINERS=str(existing))
    assert [c["argv"] for c in calls if c["argv"][0] == "rm"] == [["rm", "-f", name]]
    said = [line for line in run.stderr.splitlines() if "docker: removing container" in line]
    assert len(said) == 1 and said[0].endswith(
        f"docker: removing container {name}, left by an earlier run of this job on this node"
    )
    assert existing.read_text() == ""


def test_deepspeed_one_node_runs_through_fake_docker(tmp_path):
    """xgen deepspeed on one node: the checks, the free port and DeepSpeed's launcher (--no_ssh, hostfile in
    the run directory) run in the container, with DS_ACCELERATOR named for it."""
    path, inner, _ = _docker_job(tmp_path)
    script = tmp_path / "work" / "ds.sh"
    proc = run_xgen("deepspeed", str(path), "-o", str(script))
    assert proc.returncode == 0, proc.stderr
    # SC2016: the `$value` of container.env, quoted so that it does not expand, which is the point.
    assert subprocess.run(["shellcheck", "-e", "SC2016", str(script)], capture_output=True).returncode == 0
    run, calls = _run_fake_docker(script, tmp_path)
    runs = [c["argv"] for c in calls if c["argv"][:1] == ["run"]]
    launch = runs[-1]
    command = launch[launch.index("ascendai/llamafactory:latest") + 1 :]
    assert command[1:3] == ["-m", "deepspeed.launcher.runner"] and "--no_ssh" in command
    assert command[command.index("--hostfile") + 1] == str(tmp_path / "work" / "run" / "hostfile")
    assert "DS_ACCELERATOR" in launch and "--rm" in launch
    *_, args = (tmp_path / "dump").read_bytes().decode().split("\0", 6)
    assert args.split("\0")[:2] == ["-m", "deepspeed.launcher.runner"]
