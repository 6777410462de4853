"""The CLI end to end: outputs, atomic -o, hostfile writing, help examples, speed, no heavy imports."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import pytest
from xgen_helpers import EXAMPLES, REPO, run_xgen

from xgen.targets.deepspeed import HOSTFILE_MARK

TINY = REPO / "examples" / "cpu-tiny.yaml"
COMMANDS = ("slurm", "deepspeed", "shell", "accelerate", "check")


def test_slurm_to_stdout_embeds_absolute_config():
    result = run_xgen("slurm", str(TINY))
    assert result.returncode == 0, result.stderr
    # The YAML's absolute path is named as what the frozen copy was made from; XGEN_CONFIG is only ever the
    # frozen copy in the run directory.
    assert f"from {TINY}\n" in result.stdout
    assert f"XGEN_CONFIG={TINY}" not in result.stdout
    assert "  XGEN_CONFIG=$frozen\n" in result.stdout
    assert '-m runtime train "$XGEN_CONFIG"' in result.stdout


def test_output_file_is_atomic_and_kept_on_error(tmp_path):
    out = tmp_path / "job.sh"
    assert run_xgen("slurm", str(TINY), "-o", str(out)).returncode == 0
    first = out.read_text()
    assert out.stat().st_mode & 0o111, "scripts are written executable"
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster: {nodes: 0}\n")
    assert run_xgen("slurm", str(bad), "-o", str(out)).returncode == 2
    assert out.read_text() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "job.sh"]


def test_output_into_a_missing_directory_is_one_line_and_writes_nothing(tmp_path):
    missing = tmp_path / "no-such-dir"
    hostfile = tmp_path / "hosts"
    cases = [
        ("slurm", str(TINY), "-o", str(missing / "job.sh")),
        ("zero", "z3", "-o", str(missing / "ds.json")),
        # the script's directory is missing: the hostfile (whose directory exists) is not written either
        (
            "deepspeed",
            str(REPO / "examples" / "deepspeed-hostfile.yaml"),
            "--hostfile",
            str(hostfile),
            "-o",
            str(missing / "l.sh"),
        ),
    ]
    for args in cases:
        result = run_xgen(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and f"directory {missing} does not exist" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_deepspeed_writes_hostfile(tmp_path):
    hostfile = tmp_path / "hosts"
    result = run_xgen(
        "deepspeed", str(REPO / "examples" / "deepspeed-hostfile.yaml"), "--hostfile", str(hostfile)
    )
    assert result.returncode == 0, result.stderr
    # First line: xgen's mark (DeepSpeed skips `#` lines); a file without it is the user's, never replaced.
    assert hostfile.read_text() == f"{HOSTFILE_MARK}\nnode0 slots=8\nnode1 slots=8\n"
    assert f"XGEN_HOSTFILE={hostfile}" in result.stdout
    assert '--master_addr "$MASTER_ADDR"' in result.stdout and "--ssh_port 2222" in result.stdout


def test_shell_node_rank_is_baked_in(tmp_path):
    # fsdp-accelerate.yaml says `launcher: accelerate`, which xgen shell refuses (docs/launchers.md).
    example = (REPO / "examples" / "fsdp-accelerate.yaml").read_text()
    config = tmp_path / "job.yaml"
    config.write_text(example.replace("launcher: accelerate\n", ""))
    result = run_xgen("shell", str(config), "--node-rank", "1")
    assert result.returncode == 0, result.stderr
    assert "NODE_RANK=1\n" in result.stdout and "MASTER_ADDR=gpu-a\n" in result.stdout


def test_check_summary():
    result = run_xgen("check", str(REPO / "examples" / "gpu-2node-full-zero3.yaml"))
    assert result.returncode == 0, result.stderr
    assert "2 x 8 devices per node" in result.stdout and "deepspeed z3" in result.stdout
    assert result.stdout.rstrip().endswith("ok")


def test_zero_writes_the_named_stage_json_a_config_can_point_at(tmp_path):
    """`xgen zero z3_offload -o F` writes the JSON the name stands for; `train.deepspeed: F` is accepted."""
    written = tmp_path / "ds.json"
    result = run_xgen("zero", "z3_offload", "-o", str(written))
    assert result.returncode == 0, result.stderr
    zero = json.loads(written.read_text())["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_param"]["device"] == "cpu"
    assert zero["offload_optimizer"]["device"] == "cpu"
    config = tmp_path / "job.yaml"
    config.write_text(TINY.read_text().replace("\ntrain:\n", f"\ntrain:\n  deepspeed: {written}\n", 1))
    result = run_xgen("check", str(config))
    assert result.returncode == 0 and "deepspeed" in result.stdout, result.stderr + result.stdout
    bad = run_xgen("zero", "z4")
    assert bad.returncode == 2 and "'z4' is not one of" in bad.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_an_example(command):
    result = run_xgen(command, "--help")
    assert result.returncode == 0
    assert "Example:" in result.stdout and f"xgen {command} examples/" in result.stdout


def test_slurm_is_fast():
    """`xgen slurm CFG` end to end in under 0.4 s of CPU (best of 5 runs, through the console entry point).

    CPU time (user + system of the child), not wall time: the suite runs two pytest workers on two cores,
    and a neighbour's training would otherwise decide this test. Measured: 0.19 s on a quiet 2-core
    machine, up to 0.32 s best-of-5 inside a full suite run; importing torch alone is 1.5 s."""
    command = [sys.executable, "-c", "from xgen.cli import main; main()", "slurm", str(TINY)]
    best = float("inf")
    for _ in range(5):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(command, check=True, capture_output=True, cwd=REPO)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        best = min(best, cpu)
    assert best < 0.4, f"xgen slurm took {best:.3f} s of CPU"


HEAVY = ("torch", "transformers", "deepspeed", "accelerate", "peft", "datasets", "numpy")
PROBE = """
import json, sys
from xgen.cli import main
for argv in ARGVS:
    try:
        main(argv, standalone_mode=False)
    except SystemExit:
        pass
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in HEAVY)))
"""


def test_no_heavy_imports(tmp_path):
    argvs = [
        [c, str(e)] + (["--hostfile", str(tmp_path / "h")] if c == "deepspeed" else [])
        for c in COMMANDS
        for e in EXAMPLES
    ]
    code = f"ARGVS = {argvs!r}\nHEAVY = {HEAVY!r}\n" + PROBE
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == []


def test_readme_documents_every_key():
    from xgen.config import field_docs

    readme = (REPO / "README.md").read_text()
    missing = [key for key, *_ in field_docs() if f"`{key}`" not in readme]
    assert not missing, f"README config reference lacks {missing}"
