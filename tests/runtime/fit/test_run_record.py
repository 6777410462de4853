"""A checkpoint is resumed only by its own run: every recorded key, changed between two runs on the same
output_dir, is refused in one line before the model loads (checkpoint and saved model untouched), on a run
that stopped and on one that finished; the same config continues (even with overwrite_output_dir: true)
and is the only one told "training already complete"."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from trainer_harness import base_config, run_inprocess, step_losses, write_config

from runtime.config import parse_train_config
from runtime.fit import run_record

STEPS = 4


def _tree_digest(folder: Path) -> str:
    """Names, sizes and bytes of every file under folder: 'untouched' means this is unchanged."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def stopped(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """A LoRA run stopped by SIGUSR1 after step 2 (checkpoint-2 published, exit 75)."""
    import os

    root = tmp_path_factory.mktemp("stopped")
    cfg = base_config(tiny_dir, root / "out", max_steps=STEPS, finetuning_type="lora", save_steps=2)
    os.environ["XGEN_FAULT_SIGNAL_AT_STEP"] = "2"
    try:
        assert run_inprocess(write_config(root / "cfg.yaml", cfg)) == 75
    finally:
        del os.environ["XGEN_FAULT_SIGNAL_AT_STEP"]
    assert (root / "out" / "checkpoint-2" / run_record.RECORD_FILE).is_file()
    return cfg, root / "out"


# One change per recorded kind: model, a dataset's content, data keys, method keys, schedule, global batch.
CHANGES = {
    "cutoff_len": {"cutoff_len": 32},
    "template": {"template": "llama3"},
    "lora_rank": {"lora_rank": 8},
    "finetuning_type": {"finetuning_type": "freeze"},
    "learning_rate": {"learning_rate": 5.0e-4},
    "max_steps": {"max_steps": STEPS + 2},
    "lr_scheduler_type": {"lr_scheduler_type": "cosine"},
    "global batch": {"gradient_accumulation_steps": 2},
    "dataset tiny_alpaca": None,  # the dataset's file is edited (same name, other content)
    "model_name_or_path": None,  # another copy of the model
}


def _changed(key: str, cfg: dict, tmp_path: Path, tiny_dir: Path) -> dict:
    if key == "dataset tiny_alpaca":
        import shutil

        data = tmp_path / "data"
        shutil.copytree(tiny_dir / "data", data)
        info = json.loads((data / "dataset_info.json").read_text())
        path = data / info["tiny_alpaca"]["file_name"]
        rows = json.loads(path.read_text())
        path.write_text(json.dumps(rows[:-1]))  # one example fewer
        return {**cfg, "dataset_dir": str(data)}
    if key == "model_name_or_path":
        import shutil

        shutil.copytree(tiny_dir / "model", tmp_path / "model")
        return {**cfg, "model_name_or_path": str(tmp_path / "model")}
    return {**cfg, **CHANGES[key]}


@pytest.mark.parametrize("key", list(CHANGES))
def test_a_stopped_run_is_resumed_only_by_its_own_config(key, stopped, tmp_path, tiny_dir, capsys):
    from runtime.cli import main

    cfg, out = stopped
    before = _tree_digest(out)
    other = write_config(tmp_path / "other.yaml", _changed(key, cfg, tmp_path, tiny_dir))
    capsys.readouterr()
    assert run_inprocess(other) == 2
    said = capsys.readouterr()
    errors = [line for line in said.err.splitlines() if line.startswith("xgen-runtime: error: resume: ")]
    where = out / "checkpoint-2"
    assert errors[0].startswith(f"xgen-runtime: error: resume: {key}: {where} was written with"), errors
    # One line per differing key (lora_rank brings its default lora_alpha along), then the choices.
    assert len({line.split(": ")[3] for line in errors[:-1]}) == len(errors) - 1 >= 1, errors
    assert "another output_dir" in errors[-1] and "resume_from_checkpoint: false" in errors[-1]
    assert "overwrite_output_dir: true" in errors[-1]
    assert "Traceback" not in said.err
    assert "perf:" not in said.out  # stopped before the start line, so before the model
    assert _tree_digest(out) == before
    # The node check the scripts run before the launcher (torch-free) says the same.
    assert main(["check", str(other)]) == 2
    assert f"xgen-runtime: error: resume: {key}: {where}" in capsys.readouterr().err
    # `xgen check` (visible-only, at generation time) says it as a note and does not refuse.
    assert main(["check", "--visible-only", str(other)]) == 0
    assert f"note: training would refuse: resume: {key}: {where}" in capsys.readouterr().out


def test_the_same_config_continues_even_with_overwrite_output_dir(stopped, tmp_path, capsys):
    import shutil

    cfg, out = stopped
    mine = tmp_path / "out"
    shutil.copytree(out, mine)
    same = {**cfg, "output_dir": str(mine), "overwrite_output_dir": True}
    again = write_config(tmp_path / "again.yaml", same)
    capsys.readouterr()
    assert run_inprocess(again) == 0
    said = capsys.readouterr().out
    assert f"{mine / 'checkpoint-2'} is this run's own checkpoint (same record)" in said
    assert f"resuming from {mine / 'checkpoint-2'}" in said
    assert sorted(step_losses(mine)) == list(range(1, STEPS + 1))  # steps 3-4 after 1-2: nothing repeated
    assert (mine / run_record.RECORD_FILE).is_file()

    # Finished: "already complete" for this config only; another config is refused, the model untouched.
    assert run_inprocess(again) == 0
    assert "training already complete" in capsys.readouterr().out
    saved = _tree_digest(mine)
    other = write_config(tmp_path / "other.yaml", {**cfg, "output_dir": str(mine), "cutoff_len": 32})
    assert run_inprocess(other) == 2
    refused = capsys.readouterr()
    assert "training already complete" not in refused.out
    assert f"xgen-runtime: error: resume: cutoff_len: {mine} was written with 64, this config has 32" in (
        refused.err
    )
    assert _tree_digest(mine) == saved
    # resume_from_checkpoint: false is the way to start over.
    over = {**cfg, "output_dir": str(mine), "cutoff_len": 32, "resume_from_checkpoint": False}
    assert run_inprocess(write_config(tmp_path / "fresh.yaml", over)) == 0
    assert json.loads((mine / run_record.RECORD_FILE).read_text())["cutoff_len"] == 32


def _fake_checkpoint(out: Path, step: int, record: dict | None) -> Path:
    folder = out / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": 8}))
    if record is not None:
        (folder / run_record.RECORD_FILE).write_text(json.dumps(record))
    return folder


def test_decisions_without_training(tmp_path, tiny_dir):
    """Each branch of decide() on hand-made checkpoints (no model needed)."""
    base = {
        "model_name_or_path": str(tiny_dir / "model"),
        "dataset": "tiny_alpaca",
        "dataset_dir": str(tiny_dir / "data"),
        "output_dir": str(tmp_path / "out"),
        "max_steps": 8,
    }
    cfg = parse_train_config(base)
    record = run_record.run_record(cfg, world_size=2)
    assert record["global batch"] == cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * 2
    assert record["dataset tiny_alpaca"].startswith("sha256:")
    ckpt = _fake_checkpoint(tmp_path / "out", 4, record)
    assert run_record.decide(parse_train_config(base), 2).checkpoint == str(ckpt)
    # Another world size keeps the global batch through gradient accumulation, said in one note ...
    fewer = parse_train_config(base)
    decision = run_record.decide(fewer, 1)
    assert decision.checkpoint == str(ckpt) and fewer.gradient_accumulation_steps == 2 * (
        cfg.gradient_accumulation_steps
    )
    assert decision.notes[0].startswith("resume on world size 1 (checkpoint written by 2)")
    # ... and where no whole number of accumulation steps does it, both lines and the choices.
    problems = run_record.decide(parse_train_config(base), 2 * record["global batch"]).problems
    assert [p.split(": ")[1] for p in problems[:-1]] == ["global batch", "world size"], problems
    # Unknown world size (the node check before the launcher): the saved one is assumed.
    assert run_record.decide(parse_train_config(base), None).problems == []
    accumulate = parse_train_config({**base, "gradient_accumulation_steps": 4})
    assert [p.split(": ")[1] for p in run_record.decide(accumulate, None).problems[:-1]] == ["global batch"]
    # An explicit checkpoint path is checked too; resume_from_checkpoint: false never is.
    explicit = parse_train_config({**base, "learning_rate": 1.0, "resume_from_checkpoint": str(ckpt)})
    assert run_record.decide(explicit, 2).problems[0].startswith(f"resume: learning_rate: {ckpt}")
    off = parse_train_config({**base, "learning_rate": 1.0, "resume_from_checkpoint": False})
    assert (off_decision := run_record.decide(off, 2)).checkpoint is None and not off_decision.problems
    # A checkpoint from before records existed: resumed as before, with a note saying it is unchecked.
    legacy_out = tmp_path / "legacy"
    _fake_checkpoint(legacy_out, 2, None)
    legacy = run_record.decide(parse_train_config({**base, "output_dir": str(legacy_out)}), 2)
    assert not legacy.problems and "not checked" in legacy.notes[0]
    # overwrite_output_dir: true on another run's checkpoint: it gives way (removed, with a note) and the
    # run starts fresh; this run's own older checkpoint, behind it, is continued instead.
    own = _fake_checkpoint(
        tmp_path / "out", 2, run_record.run_record(parse_train_config({**base, "learning_rate": 1.0}), 2)
    )
    over = parse_train_config({**base, "learning_rate": 1.0, "overwrite_output_dir": True})
    decision = run_record.decide(over, 2)
    assert not decision.problems and decision.checkpoint == str(own), decision
    assert "removed another run's checkpoint-4" in decision.notes[0] and not ckpt.exists()
    alone = parse_train_config({**base, "learning_rate": 2.0, "overwrite_output_dir": True})
    decision = run_record.decide(alone, 2)
    assert decision.checkpoint is None and "removed another run's checkpoint-2" in decision.notes[0]
