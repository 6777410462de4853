"""Session fixture: one real two-node cluster for every test in tests/cluster/.

Brought up once, torn down at the end of the session (also when tests fail or are
interrupted). Skipped with the reason when not root or the tools are missing; set
XGEN_CLUSTER_REQUIRED=1 (CI) to turn that skip into a failure.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import harness
import pytest

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/cluster/ is slow and needs the cluster."""
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.cluster)
            item.add_marker(pytest.mark.slow)


TIMES: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter) -> None:
    """Bring-up/tear-down times in every run's output."""
    if TIMES:
        terminalreporter.section("xgt cluster harness")
        for what, seconds in TIMES.items():
            terminalreporter.write_line(f"{what}: {seconds:.2f} s")


@pytest.fixture(scope="session")
def cluster() -> Iterator[harness.Cluster]:
    reason = harness.missing_prerequisites()
    if reason:
        if os.environ.get("XGEN_CLUSTER_REQUIRED") == "1":
            pytest.fail(f"cluster tests are required here but cannot run: {reason}")
        pytest.skip(reason)
    with harness.exclusive(timeout=900):
        try:
            running = harness.up()
            TIMES["bring-up"] = running.up_seconds
            yield running
        finally:
            TIMES["tear-down"] = harness.down(quiet=True)


@pytest.fixture
def shared_dir(cluster: harness.Cluster, request: pytest.FixtureRequest) -> Path:
    """A per-test directory on the cluster's shared filesystem (pytest's tmp_path is in the
    machine's /tmp, which the nodes do not see: each node has its own /tmp)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)[:60]
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=cluster.paths.shared))


@pytest.fixture(scope="session")
def tiny(request: pytest.FixtureRequest, cluster: harness.Cluster) -> Path:
    """The tiny model + data on the shared filesystem: a copy of the suite's `tiny_dir` when that
    fixture exists, else built with `xgen-runtime make-tiny`."""
    dest = cluster.paths.shared / "tiny"
    try:
        source = Path(request.getfixturevalue("tiny_dir"))
    except pytest.FixtureLookupError:
        tool = Path(sys.executable).parent / "xgen-runtime"
        proc = subprocess.run(
            [str(tool), "make-tiny", str(dest)], capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, f"xgen-runtime make-tiny failed:\n{proc.stderr}"
        return dest
    shutil.copytree(source, dest)
    return dest


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen]]:
    """Processes a test starts in the nodes; whatever is still running at the end is killed (whole group)."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
