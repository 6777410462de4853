"""Property: any string in any string field either is refused with XgenError, or the script parses and
the value arrives byte for byte (bash for shell assignments, sbatch's own rules for #SBATCH lines)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xgen.errors import XgenError
from xgen.load import parse_mapping
from xgen.render import sbatch_quote, shell_quote
from xgen.targets import shell, slurm

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
SOURCE = Path("/cluster/xgen/job.yaml")
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def sbatch_words(line: str) -> list[str]:
    """sbatch's _get_argument (src/sbatch/opt.c): quotes group, backslash escapes, # starts a comment."""
    words, i = [], 0
    while i < len(line):
        while i < len(line) and line[i].isspace():
            i += 1
        if i >= len(line):
            break
        word, quote, escape = [], "", False
        while i < len(line) and (quote or not line[i].isspace()):
            ch = line[i]
            i += 1
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
                continue
            elif quote:
                if ch == quote:
                    quote = ""
                    continue
            elif ch in "\"'":
                quote = ch
                continue
            elif ch == "#":
                return words + ["".join(word)] if word else words
            word.append(ch)
        words.append("".join(word))
    return words


def run_bash(script: str) -> bytes:
    return subprocess.run(["bash", "-c", script], capture_output=True, check=True).stdout


@given(job_name=TEXT, python=TEXT, env_value=TEXT, workdir=TEXT)
@FAST
def test_shell_values_arrive_byte_for_byte(job_name, python, env_value, workdir):
    raw = {
        "job": {"name": job_name, "workdir": workdir},
        "python": python,
        "cluster": {"device": "cpu", "env": {"XGEN_TEST_VALUE": env_value}},
    }
    try:
        config = parse_mapping(raw, SOURCE)
    except XgenError as err:
        assert "\n" not in err.line()
        return
    text = shell.build(config, node_rank=0)
    subprocess.run(["bash", "-n"], input=text.encode(), check=True)
    # Run everything but the launch, then print the values NUL-separated.
    body = text.rsplit("# --- preflight ---\nxgen_preflight\n", 1)[0]
    probe = (
        body + "XGEN_DEVICE=cpu NPROC_PER_NODE=1\nxgen_comm_env\n"
        'printf "%s\\0" "$PYTHON" "$XGEN_TEST_VALUE" "$XGEN_WORKDIR"\n'
    )
    values = run_bash(probe).split(b"\0")[:3]
    assert values == [v.encode() for v in (config.python, env_value, config.workdir)]


@given(value=TEXT)
@FAST
def test_quote_filter_round_trips(value):
    if "\0" in value:
        return
    assert run_bash(f"printf %s {shell_quote(value)}") == value.encode()


@given(name=TEXT, partition=TEXT, account=TEXT, extra=TEXT)
@FAST
def test_sbatch_lines_keep_values(name, partition, account, extra):
    raw = {
        "job": {"name": name},
        "slurm": {"partition": partition, "account": account, "extra": [f"--comment={extra}"]},
    }
    try:
        config = parse_mapping(raw, SOURCE)
    except XgenError as err:
        assert "\n" not in err.line()
        return
    text = slurm.build(config)
    subprocess.run(["bash", "-n"], input=text.encode(), check=True)
    directives = [line[len("#SBATCH ") :] for line in text.split("\n") if line.startswith("#SBATCH ")]
    parsed = dict(word.split("=", 1) for line in directives for word in sbatch_words(line) if "=" in word)
    assert parsed["--job-name"] == name
    assert parsed["--partition"] == partition
    assert parsed["--account"] == account
    assert parsed["--comment"] == extra


def test_sbatch_quote_examples():
    assert sbatch_quote("gpu") == "gpu"
    assert sbatch_words(f"--job-name={sbatch_quote('a b # c')}") == ["--job-name=a b # c"]
    assert sbatch_words(f"--x={sbatch_quote(chr(92) + chr(34))}") == ['--x=\\"']
