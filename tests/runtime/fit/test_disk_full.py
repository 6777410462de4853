"""A save that fills the disk is one line naming output_dir and the free space, with a distinct exit status
and no traceback; the last complete checkpoint is untouched and resumes to the same final weights.

A real filesystem fills: a tmpfs mounted for the test, sized to hold the first checkpoint but not the
second (needs root, which CI has; skipped otherwise with the reason)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from trainer_harness import base_config, max_diff, run_inprocess, weights, write_config

from runtime.fit import checkpoints
from runtime.fit.disk_full import EXIT_DISK_FULL

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_full_disk_at_the_second_save_is_one_line_and_the_first_checkpoint_resumes(
    tiny_dir, tmp_path, capsys
):
    settings = {"finetuning_type": "full", "max_steps": 4, "save_steps": 2}
    settings["cache_dir"] = str(tmp_path / "hf")
    reference = tmp_path / "reference"
    ref_cfg = write_config(tmp_path / "ref.yaml", base_config(tiny_dir, reference, **settings))
    assert run_inprocess(ref_cfg) == 0
    one = _size(reference / "checkpoint-2")

    small = tmp_path / "small"
    small.mkdir()
    # Room for checkpoint-2 and the small files around it, not for a second checkpoint.
    size_kib = (one + one // 2) // 1024 + 64
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(small)], check=True)
    try:
        out = small / "out"
        cfg = write_config(tmp_path / "cfg.yaml", base_config(tiny_dir, out, **settings))
        capsys.readouterr()
        assert run_inprocess(cfg) == EXIT_DISK_FULL
        said = capsys.readouterr()
        errors = [line for line in said.err.splitlines() if line.startswith("xgen-runtime: error:")]
        assert len(errors) == 1, said.err[-3000:]
        (line,) = errors
        assert f"checkpoint-4: no space left in {out} (" in line and " free after writing " in line
        assert f"{out / 'checkpoint-2'} is the last complete checkpoint and resumes" in line
        assert "Traceback" not in said.err and "iostream" not in said.err
        assert [p.name for p in checkpoints.complete_checkpoints(out)] == ["checkpoint-2"]
        assert not (checkpoints.staging_root(out) / "checkpoint-4").exists()  # its space is given back
        assert (out / "checkpoint-2" / "trainer_state.json").is_file()

        # The checkpoint that was complete resumes (into roomier storage) to the uninterrupted weights.
        resumed_out = tmp_path / "resumed"
        resumed = base_config(
            tiny_dir, resumed_out, **settings, resume_from_checkpoint=str(out / "checkpoint-2")
        )
        assert run_inprocess(write_config(tmp_path / "resume.yaml", resumed)) == 0
        assert max_diff(weights(resumed_out), weights(reference)) == 0.0
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
