"""The first command a LLaMA-Factory user types: their own training YAML, bare, with the cluster from
flags (`xgen slurm lf.yaml --nodes 2 …`), trains across the two nodes of the real Slurm cluster."""

from __future__ import annotations

import sys
from pathlib import Path

import e2e
import harness
import yaml


def test_a_bare_llamafactory_yaml_trains_on_two_nodes(
    cluster: harness.Cluster, tiny: Path, shared_dir: Path
) -> None:
    lf = shared_dir / "llama3_lora_sft.yaml"  # LLaMA-Factory's keys at the top level, as users have them
    train = e2e.train_section(tiny, shared_dir / "out", finetuning_type="lora", lora_target="all")
    lf.write_text(yaml.safe_dump(train, sort_keys=False))
    flags = ["--nodes", "2", "--partition", "xgt", "--device", "cpu", "--devices-per-node", "2"]
    flags += ["--python", sys.executable, "--workdir", str(shared_dir)]
    script = e2e.render(shared_dir, "slurm", lf, *flags, script="bare.sh")
    info = cluster.wait_done(cluster.sbatch(script, cwd=shared_dir, env=e2e.RUN_ENV), timeout=400)
    out = Path(info["StdOut"]).read_text(errors="replace")
    assert info["JobState"] == "COMPLETED", out[-6000:]
    e2e.check_trained_on_both_nodes(out, e2e.saved_dir(out))
