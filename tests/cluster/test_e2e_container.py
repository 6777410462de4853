"""Containers: a `container:` section rendered for pyxis and for Apptainer trains a tiny model
over both nodes of the real Slurm cluster, through the fake runtimes in tests/fakes.

The fakes stand in for the runtimes (no image is run): the pyxis-aware `srun` records its argv, checks
and strips the --container-* options and runs the real srun (--container-workdir becomes --chdir); the
fake `apptainer` records its argv, checks its options and runs the command on the node with
APPTAINERENV_<NAME> applied. Both append JSON lines to $XGEN_FAKE_CONTAINER_LOG. The runtime's test hook
(XGEN_TEST_ASSERT_ENV) makes each rank check that container.env reached it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import e2e
import harness

FAKES = Path(__file__).resolve().parents[1] / "fakes"
PROBE = {"XGEN_CT_PROBE": "in the 'container' $HOME"}  # container.env: set inside only
HOOK = {"XGEN_TEST_ASSERT_ENV": "XGEN_CT_PROBE"}  # runtime test scaffolding, see runtime/contract/secrets.py


def _submit(cluster: harness.Cluster, tiny: Path, shared: Path, runtime: str) -> tuple[int, Path, Path]:
    """Render `xgen slurm` with a container section and submit it with the fakes first on PATH.
    cpus_per_task 1: the two jobs (one per runtime) fit on the 2-CPU nodes at once."""
    run = shared / runtime
    run.mkdir()
    fakes = shutil.copytree(FAKES, shared / f"fakes-{runtime}")  # on the filesystem every node sees
    container = {
        "image": str(shared / "train.sif"),
        "runtime": runtime,
        "mounts": [f"{tiny}:{tiny}:ro"],
        "env": PROBE,
        "workdir": str(run),
    }
    config = e2e.merge(
        e2e.base_config(tiny, run, name=f"xgt-{runtime}"),
        {"container": container, "slurm": {"cpus_per_task": 1}, "train": {"max_steps": 2}},
    )
    script = e2e.render(run, "slurm", e2e.write_config(run, config))
    log = run / "container-calls.jsonl"
    env = {
        **e2e.RUN_ENV,
        **HOOK,
        "PATH": f"{fakes}:{os.environ['PATH']}",
        "XGEN_FAKE_CONTAINER_LOG": str(log),
    }
    return cluster.sbatch(script, cwd=run, env=env), run, log


def _wait(cluster: harness.Cluster, job: int, run: Path, log: Path) -> list[dict]:
    """Wait for the job; check it trained over both nodes; return the recorded runtime calls."""
    try:
        info = cluster.wait_done(job, timeout=240)
    except harness.HarnessError as err:
        cluster.cancel(job)
        outs = "".join(p.read_text(errors="replace")[-5000:] for p in run.glob("slurm-*.out"))
        calls = log.read_text() if log.exists() else "(no calls recorded)"
        raise AssertionError(f"{err}\n{outs}\n--- calls:\n{calls[-3000:]}") from None
    out = Path(info["StdOut"]).read_text(errors="replace")
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", out[-6000:]
    start = e2e.start_line(out)
    assert (start.world_size, start.nodes, sorted(start.hosts)) == (4, 2, ["node0", "node1"]), start
    assert e2e.saved_dir(out) == run / "out"
    hooks = sorted(re.findall(r"xgen-runtime: test hook: rank (\d) on (node\d): set: XGEN_CT_PROBE", out))
    assert hooks == [("0", "node0"), ("1", "node0"), ("2", "node1"), ("3", "node1")], out[-6000:]
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    for call in calls:  # container.env's value travels in the environment, never on a command line
        assert not any(PROBE["XGEN_CT_PROBE"] in arg for arg in call["argv"]), call
    return calls


def test_pyxis_and_apptainer_train_through_the_fake_runtimes(
    cluster: harness.Cluster, tiny: Path, shared_dir: Path
) -> None:
    image = str(shared_dir / "train.sif")
    Path(image).write_text("not an image: the fakes only check it exists")
    # Both jobs at once (different master ports from their job ids): half the wall time of one by one.
    pyxis = _submit(cluster, tiny, shared_dir, "pyxis")
    apptainer = _submit(cluster, tiny, shared_dir, "apptainer")

    # pyxis: the preflight step and the training step each carry the container options.
    calls, run = _wait(cluster, *pyxis), pyxis[1]
    steps = [
        c["argv"]
        for c in calls
        if c["tool"] == "srun" and any(a.startswith("--container") for a in c["argv"])
    ]
    assert len(steps) == 2, calls
    for argv in steps:
        assert f"--container-image={image}" in argv
        assert f"--container-mounts={run}:{run},{tiny}:{tiny}:ro" in argv
        assert f"--container-workdir={run}" in argv
        assert argv[argv.index("bash") + 1] == "-c"  # the node's part runs inside, as one bash

    # Apptainer: every python command on each node (preflight, runtime check, runtime launch).
    calls, run = _wait(cluster, *apptainer), apptainer[1]
    execs = [c for c in calls if c["tool"] == "apptainer"]
    for node in ("node0", "node1"):
        mine = [c["argv"] for c in execs if c["host"] == node]
        commands = [argv[argv.index(image) + 1 : argv.index(image) + 4] for argv in mine]
        python = commands[0][0]
        assert [cmd[1:] for cmd in commands] == [
            ["-c", "import runtime"],  # xgen_check_python before the preflight
            ["-m", "runtime.preflight"],
            ["-c", "import runtime"],  # and before the runtime check
            ["-m", "runtime"],
            ["-m", "runtime"],  # runtime launch: torch.distributed.run
        ], commands
        assert all(cmd[0] == python for cmd in commands)
        for argv in mine:
            assert argv[:2] == ["exec", "--bind"] and "--nv" not in argv  # device: cpu
            assert f"{run}:{run}" in argv and f"{tiny}:{tiny}:ro" in argv
            assert argv[argv.index("--pwd") + 1] == str(run)
