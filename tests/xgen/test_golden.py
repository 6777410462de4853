"""Golden files: every example x every generator. A diff is reviewed like code.

Regenerate: XGEN_REGEN_GOLDEN=1 .venv/bin/python -m pytest tests/xgen/test_golden.py
A combination that is refused (e.g. the DeepSpeed launcher without a host list) stores its one error
line as <example>.<target>.err, so a change in what is refused shows up too.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from xgen_helpers import EXAMPLES, REPO, TARGETS, load_fixed, render_target

from xgen.errors import XgenError

GOLDEN = REPO / "tests" / "xgen" / "golden"
REGEN = os.environ.get("XGEN_REGEN_GOLDEN") == "1"
CASES = [(example, target) for example in EXAMPLES for target in TARGETS]


@pytest.fixture(autouse=True)
def fixed_generation_time(monkeypatch):
    """The header's generation date, fixed (SOURCE_DATE_EPOCH) so golden files do not change daily."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")


def rendered(example, target) -> tuple[str, str]:
    try:
        return "sh", render_target(load_fixed(example), target)
    except XgenError as err:
        return "err", err.line() + "\n"


@pytest.mark.parametrize("example,target", CASES, ids=[f"{e.stem}-{t}" for e, t in CASES])
def test_golden(example, target):
    kind, text = rendered(example, target)
    path = GOLDEN / f"{example.stem}.{target}.{kind}"
    other = GOLDEN / f"{example.stem}.{target}.{'err' if kind == 'sh' else 'sh'}"
    if REGEN:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
        other.unlink(missing_ok=True)
    assert path.exists(), f"no golden file {path.name}; regenerate with XGEN_REGEN_GOLDEN=1"
    assert not other.exists(), f"stale golden file {other.name}"
    assert text == path.read_text(), f"{path.name} changed; review the diff, then regenerate"


def test_most_combinations_render():
    """Refused: the hostfile launcher without a host list (Slurm examples), a command asked for a launcher
    it does not start (the launcher matrix, docs/launchers.md), and a generator a container runtime cannot
    wrap (pyxis: xgen slurm only; Apptainer: not deepspeed/accelerate; docker: xgen shell, and xgen
    deepspeed on one node); nothing else."""
    for example, target in CASES:
        kind, text = rendered(example, target)
        if kind == "err":
            container = any(runtime in example.stem for runtime in ("pyxis", "apptainer", "docker"))
            assert (
                text.startswith("xgen: error: launcher: ")
                or (container and text.startswith("xgen: error: container.runtime:"))
                or (target == "deepspeed" and text.startswith("xgen: error: cluster.hosts: "))
            ), (example.stem, target, text)


@pytest.mark.parametrize("example,target", CASES, ids=[f"{e.stem}-{t}" for e, t in CASES])
def test_script_is_clean_bash(example, target, tmp_path):
    kind, text = rendered(example, target)
    if kind == "err":
        pytest.skip("refused combination")
    script = tmp_path / "job.sh"
    script.write_text(text)
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    for section in ("# --- devices ---", "# --- communication ---", "# --- launch ---"):
        assert section in text
    assert not any(line != line.rstrip() for line in text.splitlines()), "trailing whitespace"
    subprocess.run(["bash", "-n", str(script)], check=True)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (scripts/setup.sh installs it)")
    result = subprocess.run(["shellcheck", "-s", "bash", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
