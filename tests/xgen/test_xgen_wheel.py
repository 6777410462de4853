"""The wheel ships the templates as xgen.templates (package-dir mapping), so non-editable installs render."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest
from xgen_helpers import REPO


@pytest.mark.slow
def test_wheel_contains_templates(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO),
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            "-q",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("xgen-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    templates = {p.name for p in (REPO / "templates").glob("*.j2")}
    assert templates and {f"xgen/templates/{t}" for t in templates} <= names
    assert "xgen/templates/__init__.py" in names
