"""Credentials reach every rank of a real two-node Slurm job and land in no log or run file.

Job 1 forwards HF_TOKEN and WANDB_API_KEY by name (`cluster.pass_env`, values only in the sbatch
environment); job 2 writes them into `cluster.env`. The runtime's test hook (XGEN_TEST_ASSERT_ENV) makes
each of the 4 ranks check both are set and print their names only. Afterwards every file under the job's
directory (log, config, script, output_dir with the model) is searched for each value.
"""

from __future__ import annotations

import re
import stat
from pathlib import Path

import e2e
import harness

HOOK = {
    "XGEN_TEST_ASSERT_ENV": "HF_TOKEN,WANDB_API_KEY"
}  # runtime test scaffolding, see runtime/scaffolding/testing.py


def _files_holding(root: Path, values: list[str]) -> dict[str, int]:
    """{relative path: mode} of every file under root whose bytes contain one of the values."""
    found = {}
    for path in root.rglob("*"):
        if path.is_file() and any(v.encode() in path.read_bytes() for v in values):
            found[str(path.relative_to(root))] = stat.S_IMODE(path.stat().st_mode)
    return found


def _submit(
    cluster: harness.Cluster, tiny: Path, shared: Path, changes: dict, env: dict[str, str]
) -> tuple[dict, str]:
    """Render with `xgen slurm -o`, submit from `env`, wait; the log, config, script and output_dir
    all live under `shared`."""
    config = e2e.merge(e2e.base_config(tiny, shared, name="xgt-creds"), changes)
    path = e2e.write_config(shared, config)
    path.chmod(0o600)  # a config holding credentials is the user's to protect; xgen warns when it is not
    script = shared / "job.sh"
    e2e.xgen("slurm", path, "-o", script, cwd=shared)  # not e2e.render: that chmods the script 755
    job = cluster.sbatch(script, cwd=shared, env={**e2e.RUN_ENV, **HOOK, **env})
    info = cluster.wait_done(job, timeout=120)
    return info, Path(info["StdOut"]).read_text(errors="replace")


def _check_run(info: dict, out: str, saved: Path) -> None:
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", out[-6000:]
    start = e2e.start_line(out)  # no model reload here: test_e2e_slurm.py proves that part
    assert (start.world_size, sorted(start.hosts)) == (4, ["node0", "node1"]), start
    assert e2e.saved_dir(out) == saved
    hooks = re.findall(r"xgen-runtime: test hook: rank (\d) on (node\d): set: HF_TOKEN, WANDB_API_KEY", out)
    assert sorted(hooks) == [("0", "node0"), ("1", "node0"), ("2", "node1"), ("3", "node1")], out[-6000:]
    for node in ("node0", "node1"):
        line = re.search(rf"(?m)^xgen: \S+Z {node}: env .*$", out)
        assert line and "HF_TOKEN=<set>" in line[0] and "WANDB_API_KEY=<set>" in line[0], out[:3000]


def test_credentials_reach_every_rank_and_no_log(
    cluster: harness.Cluster, tiny: Path, shared_dir: Path
) -> None:
    # 1. By name: the values live only in the environment sbatch is called from.
    passed = {"HF_TOKEN": "hf_PassEnv1Token7f3a", "WANDB_API_KEY": "wandb0PassEnv2Key9c1d"}
    run1 = shared_dir / "pass_env"
    run1.mkdir()
    changes = {"cluster": {"pass_env": ["HF_TOKEN", "WANDB_API_KEY"]}}
    info, out = _submit(cluster, tiny, run1, changes, passed)
    _check_run(info, out, run1 / "out")
    assert _files_holding(run1, list(passed.values())) == {}

    # 2. By value in cluster.env: only owner-only files (the config, the 0700 script) hold them.
    written = {"HF_TOKEN": "hf_EnvValue3Token4b2e", "WANDB_API_KEY": "wandb5EnvValue6Key8a0f"}
    run2 = shared_dir / "env"
    run2.mkdir()
    info, out = _submit(cluster, tiny, run2, {"cluster": {"env": written}}, {})
    _check_run(info, out, run2 / "out")
    holders = _files_holding(run2, list(written.values()))
    # the config, the script (which embeds it) and the run's frozen copy of it (always 0600)
    frozen = f"xgen-runs/{info['JobId']}/config.yaml"
    assert holders == {"xgen.yaml": 0o600, "job.sh": 0o700, frozen: 0o600}, holders
