"""What defines a run, written into every checkpoint, and the resume decision made from it before any
model loads.

Every `checkpoint-N` (and `output_dir` after the final save) holds `xgen_run.json`: the model, each dataset
with a fingerprint of its content, the data keys that decide which tokens a step sees (template,
cutoff_len, …), the stage and method keys, the schedule, and the global batch with the world size. A run
resumes a checkpoint only when its own record is the same; otherwise it prints one line per differing key
and stops (`decide`), before the model loads, leaving output_dir untouched. "Training already complete" is
said only to the config whose record matches the finished run's.

`overwrite_output_dir: true` (in most LLaMA-Factory configs, meant for the first start) starts over only
when output_dir holds another run: a rerun of the same config after a stop continues from its newest
checkpoint and says so. `resume_from_checkpoint: false` always starts over.

Standard library only, and no dataset is read beyond hashing its files, so the decision costs a few
hashes at start (runtime/train.py calls it before the device and the model).
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.config import TrainConfig
from runtime.fit import checkpoints

RECORD_FILE = "xgen_run.json"
EXIT_REFUSED = 2  # a config that cannot run here, as for any config error
RECORD_VERSION = 1

# Config keys that decide what a step computes; a change between two runs makes them two runs.
MODEL_KEYS = ("model_name_or_path", "adapter_name_or_path")
DATA_KEYS = (
    "template",
    "cutoff_len",
    "max_samples",
    "val_size",
    "packing",
    "neat_packing",
    "train_on_prompt",
    "mask_history",
    "mix_strategy",
    "interleave_probs",
    "tokenized_path",
)
METHOD_KEYS = (
    "stage",
    "finetuning_type",
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "lora_target",
    "additional_target",
    "use_rslora",
    "use_dora",
    "pissa_init",
    "use_llama_pro",
    "oft_rank",
    "oft_block_size",
    "oft_target",
    "freeze_trainable_layers",
    "freeze_trainable_modules",
    "freeze_extra_modules",
    "pref_beta",
    "pref_loss",
    "pref_ftx",
    "ref_model",
    "optim",
    "use_galore",
    "use_apollo",
    "use_badam",
    "use_adam_mini",
    "use_muon",
)
SCHEDULE_KEYS = (
    "max_steps",
    "num_train_epochs",
    "lr_scheduler_type",
    "learning_rate",
    "warmup_steps",
    "seed",
)
# Recorded only when quantization_bit is set, so that the records of unquantised runs stay as they were.
QUANT_KEYS = ("quantization_bit", "quantization_method", "quantization_type", "double_quantization")
STRATEGY = "strategy"  # ddp | fsdp | deepspeed-zN: how the checkpoint's weights and optimizer are laid out
GLOBAL_BATCH = "global batch"  # per_device_train_batch_size x gradient_accumulation_steps x world size
WORLD_SIZE = "world size"
# Above this many bytes a dataset file is fingerprinted by its size and 16 evenly spaced 1 MiB blocks
# instead of every byte: a start must not spend minutes hashing a corpus.
FULL_HASH_BYTES = 256 * 2**20
BLOCK = 2**20
SAMPLED_BLOCKS = 16

CHOICES = (
    "to continue anyway with this config, choose one: another output_dir; resume_from_checkpoint: false "
    "(start over here; the old checkpoints are replaced as training saves); or overwrite_output_dir: true"
)


@functools.lru_cache(maxsize=256)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file (sampled above FULL_HASH_BYTES); cached per (path, size, mtime) for repeated saves."""
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        if size <= FULL_HASH_BYTES:
            for block in iter(lambda: handle.read(BLOCK), b""):
                digest.update(block)
        else:
            for i in range(SAMPLED_BLOCKS):
                handle.seek((size - BLOCK) * i // (SAMPLED_BLOCKS - 1))
                digest.update(handle.read(BLOCK))
    return digest.hexdigest()


def fingerprint(path: Path) -> str:
    """A content fingerprint of a dataset file or folder (a saved HF dataset, a folder of shards):
    `sha256:<first 16 hex>` over the files' relative names and digests."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(str(file.relative_to(path) if file != path else file.name).encode())
        digest.update(_file_digest(str(file), stat.st_size, stat.st_mtime_ns).encode())
    return "sha256:" + digest.hexdigest()[:16]


def _datasets(cfg: TrainConfig) -> dict[str, str]:
    """`dataset <name>` / `eval_dataset <name>` -> fingerprint (or what the name resolved to)."""
    from runtime.config import ConfigError
    from runtime.data.registry import resolve_datasets, split_names

    found: dict[str, str] = {}
    for key in ("dataset", "eval_dataset"):
        names = split_names(getattr(cfg, key))
        if not names:
            continue
        try:
            attrs = resolve_datasets(getattr(cfg, key), cfg.dataset_dir, key=key)
        except ConfigError:
            # The config check names the problem at its own time; the record then holds the names only.
            found.update({f"{key} {name}": "unresolved" for name in names})
            continue
        for attr in attrs:
            path = Path(attr.path)
            if attr.hub is not None:  # its revision is the hub's business: the record names the source
                found[f"{key} {attr.name}"] = attr.hub.describe()
            else:
                found[f"{key} {attr.name}"] = fingerprint(path) if path.exists() else f"missing: {path}"
    return found


def _plain(value: Any) -> Any:
    """The value as JSON reads it back (tuples -> lists), so a record compares equal to its saved copy."""
    return json.loads(json.dumps(value, default=str))


def run_record(cfg: TrainConfig, world_size: int) -> dict[str, Any]:
    """The record of this config's run: {key: value}, keys named as the config names them."""
    record: dict[str, Any] = {"xgen_run_record": RECORD_VERSION}
    for key in MODEL_KEYS:
        record[key] = _plain(getattr(cfg, key))
    record.update(_datasets(cfg))
    for key in DATA_KEYS + METHOD_KEYS + SCHEDULE_KEYS:
        record[key] = _plain(getattr(cfg, key))
    if cfg.quantization_bit is not None:  # the adapter trained over these quantised weights
        record.update({key: _plain(getattr(cfg, key)) for key in QUANT_KEYS})
    record[STRATEGY] = cfg.strategy
    return run_record_for_size(record, cfg, world_size)


def run_record_for_size(record: dict[str, Any], cfg: TrainConfig, world_size: int) -> dict[str, Any]:
    """The same record on another world size (the global batch follows it)."""
    per_rank = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    return {**record, GLOBAL_BATCH: per_rank * world_size, WORLD_SIZE: world_size}


def read_record(folder: Path) -> dict[str, Any] | None:
    path = folder / RECORD_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_record(folder: Path, record: dict[str, Any]) -> None:
    """Into a checkpoint being staged (before it is published) or output_dir after the final save."""
    from runtime.contract.files import write_atomic

    write_atomic(folder / RECORD_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")


def differences(saved: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, saved value, this config's value) for every key whose value differs, in record order."""
    keys = list(current) + [k for k in saved if k not in current]
    missing = "(not set)"
    return [
        (key, saved.get(key, missing), current.get(key, missing))
        for key in keys
        if key != "xgen_run_record" and saved.get(key, missing) != current.get(key, missing)
    ]


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


@dataclass
class Decision:
    """What a start does with output_dir: resume `checkpoint`, say `finished` and stop, start fresh, or
    refuse with `problems` (one line per differing key, then the choices)."""

    record: dict[str, Any] = field(default_factory=dict)  # this run's: written into its checkpoints
    checkpoint: str | None = None
    finished: str | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _mismatch(where: Path, diffs: list[tuple[str, Any, Any]]) -> list[str]:
    lines = [
        f"resume: {key}: {where} was written with {_show(old)}, this config has {_show(new)}"
        for key, old, new in diffs
    ]
    return [*lines, f"resume: {where} belongs to another run; {CHOICES}"]


def decide(cfg: TrainConfig, world_size: int | None) -> Decision:
    """The resume decision for this start, before any model loads; every rank decides the same (they read
    the same output_dir); the decision carries this run's record. A checkpoint of this very run is resumed
    even under overwrite_output_dir: true (cfg.overwrite_output_dir is then cleared, with a note);
    resolve_resume (runtime/fit/checkpoints.py) then picks it as before. world_size None: not known
    (`xgen-runtime check`, before the launcher): the saved run's world size is assumed, so a change of
    per-device batch or gradient accumulation still shows as a change of the global batch."""
    mine = run_record(cfg, world_size or 1)

    notes: list[str] = []

    def differences_from(saved: dict[str, Any]) -> list[tuple[str, Any, Any]]:
        if world_size is None:
            size = saved.get(WORLD_SIZE) if isinstance(saved.get(WORLD_SIZE), int) else 1
            return differences(saved, run_record_for_size(mine, cfg, size))
        diffs = differences(saved, mine)
        moved = {key for key, _, _ in diffs}
        if WORLD_SIZE in moved and moved <= {WORLD_SIZE, GLOBAL_BATCH}:
            line = keep_global_batch(cfg, saved, world_size)
            if line is not None:
                notes.append(line)
                mine.update(run_record_for_size(mine, cfg, world_size))  # only the batch moved
                return [d for d in differences(saved, mine) if d[0] != WORLD_SIZE]
        return diffs

    decision = _decide(cfg, differences_from)
    decision.record = mine
    if decision.checkpoint or not decision.problems:
        decision.notes[:0] = notes
    return decision


def keep_global_batch(cfg: TrainConfig, saved: dict[str, Any], world_size: int) -> str | None:
    """A checkpoint written on another world size resumes with the same global batch: set
    gradient_accumulation_steps so per_device_train_batch_size x it x world_size equals the saved global
    batch, and return the one line that says so (None when no whole number of steps does it: the global
    batch then stays a difference and is refused).

    The data position carries over: accelerate deals the batches of one seeded sampler round-robin to the
    ranks, and Trainer skips global_step x gradient_accumulation_steps of them on each rank, so with the
    same global batch the same prefix of the epoch is skipped on any world size."""
    was = saved.get(GLOBAL_BATCH)
    per_rank = cfg.per_device_train_batch_size * world_size
    if not isinstance(was, int) or was % per_rank:
        return None
    steps = was // per_rank
    old = cfg.gradient_accumulation_steps
    cfg.gradient_accumulation_steps = steps
    line = (
        f"resume on world size {world_size} (checkpoint written by {saved.get(WORLD_SIZE)}): "
        f"gradient_accumulation_steps {old} -> {steps} keeps the global batch at {was}"
    )
    if cfg.strategy in ("deepspeed-z1", "deepspeed-z2", "deepspeed-z3") and cfg.deepspeed_config is not None:
        # ZeRO shards are per rank: DeepSpeed's universal checkpoint loads them on any world size.
        cfg.deepspeed_config.setdefault("checkpoint", {})["load_universal"] = True
        line += "; ZeRO shards loaded through DeepSpeed's universal checkpoint (converted once)"
    return line


def _decide(cfg: TrainConfig, differences_from: Any) -> Decision:
    value = cfg.resume_from_checkpoint
    out = Path(cfg.output_dir)
    if value is False:
        return Decision()
    if isinstance(value, str) and value != "auto":
        saved = read_record(Path(value))
        diffs = differences_from(saved) if saved else []
        return Decision(problems=_mismatch(Path(value), diffs)) if diffs else Decision(checkpoint=value)
    if (out / "train_results.json").is_file() and (out / checkpoints.STATE_FILE).is_file():
        saved = read_record(out)
        if saved is None:  # finished before runs carried a record: the old rule
            legacy = checkpoints.finished_run(cfg)
            return Decision(finished=legacy) if legacy else Decision()
        diffs = differences_from(saved)
        if not diffs:
            state = json.loads((out / checkpoints.STATE_FILE).read_text())
            step, planned = int(state.get("global_step", 0)), checkpoints.planned_steps(cfg, state)
            return Decision(
                finished=f"training already complete in {out} (step {step} of {planned}); nothing to do "
                "(resume_from_checkpoint: false trains it again)"
            )
        if not cfg.overwrite_output_dir:
            return Decision(problems=_mismatch(out, diffs))
        # overwrite_output_dir: the other run's finished state gives way, so that a stop of this run is not
        # taken for the other run's end at the next start.
        _remove([out / "train_results.json", out / RECORD_FILE, out / checkpoints.STATE_FILE])
    complete = checkpoints.complete_checkpoints(out)
    if not complete:
        return Decision()
    # The newest checkpoint says whose output_dir this is, even one past this config's planned end.
    newest = complete[-1]
    saved = read_record(newest)
    if saved is None:  # written before checkpoints carried a record: the old rule, said plainly
        if cfg.overwrite_output_dir and not checkpoints.requeued():
            return Decision()  # resolve_resume starts fresh (overwrite_output_dir: true)
        return Decision(notes=[f"{newest} has no {RECORD_FILE}: not checked to be this run's"])
    notes = []
    diffs = differences_from(saved)
    if diffs:
        if not cfg.overwrite_output_dir:
            return Decision(problems=_mismatch(newest, diffs))
        # overwrite_output_dir: another run's checkpoints give way (they would shadow this run's own at
        # every later start); this run's own checkpoints, if any, are continued.
        others = [c for c in complete if (r := read_record(c)) is None or differences_from(r)]
        _remove(others)
        notes.append(
            f"overwrite_output_dir: true: removed another run's {', '.join(c.name for c in others)} "
            f"from {out}"
        )
        complete = [c for c in complete if c not in others]
    found = [c for c in complete if checkpoints.before_end(cfg, c)]
    if not found:  # none of this run's, or only a final-step one whose final save did not finish
        return Decision(notes=notes)
    newest = found[-1]
    if cfg.overwrite_output_dir and not checkpoints.requeued():
        cfg.overwrite_output_dir = False
        notes.append(
            f"{newest} is this run's own checkpoint (same record), so this start continues it: "
            "overwrite_output_dir applies to another run's output; resume_from_checkpoint: false starts over"
        )
    return Decision(checkpoint=str(newest), notes=notes)


def _remove(paths: list[Path]) -> None:
    """Rank 0 removes; the other ranks, deciding from the same files, come to the same decision."""
    from runtime.distributed import is_rank0

    if not is_rank0():
        return
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
