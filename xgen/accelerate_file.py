"""`accelerate_config`: your own accelerate config file under `xgen accelerate` (docs/launchers.md).

Read once at generation, like cluster.hostfile, and written into the script. Every setting is kept, except:
- what must differ per node (PER_NODE, and the DDP `distributed_type` of the detected device) is filled
  in by the script at run time, each change said in one line;
- the FSDP settings the runtime's Trainer takes from `train:` (FSDP_FROM_TRAIN) are written as it runs
  them, each change said in one line;
- a setting that contradicts the xgen config (the strategy, the precision, FSDP offload and resharding,
  accelerate's own device and rendezvous choices) is refused in one line naming both keys.

The `train:` facts come from the runtime's parsed config (`Config.training`), never the raw mapping.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.config import TrainConfig
from xgen.config import AccelerateFile, Config
from xgen.errors import XgenError

KEY = "accelerate_config"
# Filled in by the script on each node, from what it found there (with distributed_type).
PER_NODE = ("num_machines", "num_processes", "machine_rank", "main_process_ip", "main_process_port")
# One process group per device kind, filled per node from the detection (MULTI_GPU on CPU too: accelerate
# then starts torch.distributed.run, and the runtime picks gloo from XGEN_DEVICE).
_DDP_TYPES = ("NO", "MULTI_CPU", "MULTI_GPU", "MULTI_NPU")
# The FSDP settings the runtime's Trainer passes to accelerate from train.fsdp/fsdp_config, over what
# `accelerate launch` exports from this file: (accelerate key, train.fsdp_config key, the runtime's
# default, refused when it differs even where train: leaves it unset). Offload and resharding decide memory,
# so a difference is a contradiction; the others are written as the runtime runs them.
FSDP_FROM_TRAIN = (
    ("fsdp_offload_params", "cpu_offload", False, True),
    ("fsdp_reshard_after_forward", "reshard_after_forward", True, True),
    ("fsdp_cpu_ram_efficient_loading", "cpu_ram_efficient_loading", False, False),
    ("fsdp_state_dict_type", "state_dict_type", "FULL_STATE_DICT", False),
    ("fsdp_auto_wrap_policy", "auto_wrap_policy", "TRANSFORMER_BASED_WRAP", False),
)
# FSDP1's name for resharding (or its number), as FSDP2's fsdp_reshard_after_forward; None: FSDP2 through
# the runtime has no such strategy.
_SHARDING = {
    **{"FULL_SHARD": True, "SHARD_GRAD_OP": False, "NO_SHARD": None, "HYBRID_SHARD": None},
    **{"HYBRID_SHARD_ZERO2": None, "1": True, "2": False, "3": None, "4": None, "5": None},
}
# Raises: the one-line refusal, naming the file.
Refuse = Callable[[str], XgenError]
_SHARDING_FSDP2 = "FULL_SHARD or SHARD_GRAD_OP (fsdp_reshard_after_forward true or false)"


@dataclass(frozen=True)
class Plan:
    """What the script writes: `settings` as YAML (without the per-node keys and distributed_type), then
    distributed_type (`distributed_type`, or the detected device's when None) and the per-node values.
    `changes`: the lines saying what xgen changed here; `was`: the file's per-node values as text ("" =
    unset), which the script compares with what it fills in."""

    settings: dict[str, Any]
    changes: list[str]
    was: dict[str, str]
    distributed_type: str | None


def text(value: Any) -> str:
    """A YAML scalar as the file says it (true, 2, FSDP); "" for unset."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _flag(value: Any) -> bool | None:
    """accelerate's booleans: true/false, or the strings it writes ("true", "false", 'no')."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


def attach(config: Config) -> Config:
    """Read accelerate_config (relative to the config's directory) and check it against the config; the
    result travels in `Config.accelerate_file`. Without the key: the config as it is."""
    if config.accelerate_config is None:
        return config
    if any(ord(ch) < 32 for ch in config.accelerate_config):
        raise XgenError(KEY, "the path holds a newline or control character; rename the file")
    path = config.source.parent / config.accelerate_config
    settings = load(path, config.accelerate_config)
    found = dataclasses.replace(config, accelerate_file=AccelerateFile(str(path), settings))
    plan(found)  # refuses a contradiction here, so `xgen check` says it too
    return found


def load(path: Path, named: str) -> dict[str, Any]:
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise XgenError(
            KEY, f"{named}: file not found (relative to the config's directory); check the path"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise XgenError(KEY, f"{named}: cannot read it: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise XgenError(KEY, f"{named}: {where}not YAML; write it as `accelerate config` does") from None
    if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
        raise XgenError(KEY, f"{named}: not an accelerate config (a YAML mapping of settings)")
    fsdp = raw.get("fsdp_config")
    if fsdp is not None and not isinstance(fsdp, dict):
        raise XgenError(KEY, f"{named}: fsdp_config must be a mapping of fsdp_* settings")
    return raw


def adopt_fsdp(raw: dict[str, Any], source: Path) -> tuple[dict[str, Any], str]:
    """A bare LLaMA-Factory YAML under an accelerate file that says `distributed_type: FSDP`: LLaMA-Factory
    trains FSDP from the file (accelerate launch exports it to the Trainer), so the YAML has no fsdp key.
    Returns (raw with train.fsdp set as the file says, the change line); raw unchanged and "" when the
    file does not say FSDP or train: already names fsdp or deepspeed (plan() then checks the two)."""
    train = raw.get("train")
    named = raw.get("accelerate_config")
    if (
        not isinstance(named, str)
        or not isinstance(train, dict)
        or train.get("fsdp")
        or train.get("deepspeed")
    ):
        return raw, ""
    settings = load(source.parent / named, named)
    if settings.get("distributed_type") != "FSDP":
        return raw, ""
    fsdp = dict(settings.get("fsdp_config") or {})

    def refuse(message: str) -> XgenError:
        return XgenError(KEY, f"{named}: {message}")

    reshard, _ = _file_reshard(fsdp, refuse)
    words = "shard_grad_op auto_wrap" if reshard is False else "full_shard auto_wrap"
    if _flag(fsdp.get("fsdp_offload_params")):
        words += " offload"
    line = (
        f"fsdp in {source.name} (unset) -> {words} (this file's distributed_type: FSDP, which LLaMA-Factory "
        "trains with)"
    )
    return {**raw, "train": {**train, "fsdp": words}}, line


def plan(config: Config) -> Plan:
    """The file's settings for this config: per-node keys out, the runtime's FSDP settings in; a
    contradiction raises XgenError (key accelerate_config, the message naming both keys)."""
    found = config.accelerate_file
    assert found is not None
    named = config.accelerate_config or found.path
    settings = dict(found.settings)
    train = config.training
    changes: list[str] = list(config.adopted)

    def refuse(message: str) -> XgenError:
        if config.bare:  # a bare LLaMA-Factory YAML: its keys as the user wrote them, at the top level
            message = message.replace("train.", "").replace("train:", config.source.name)
        return XgenError(KEY, f"{named}: {message}")

    _check_launch(config, settings, refuse, changes)
    fixed = _check_strategy(train, settings, refuse)
    _check_precision(train, settings, refuse, changes)
    if fixed == "FSDP" and train is not None:
        settings["fsdp_config"] = _fsdp(train, dict(settings.get("fsdp_config") or {}), refuse, changes)
    was = {key: text(settings.pop(key, None)) for key in ("distributed_type", *PER_NODE)}
    return Plan(settings, changes, was, fixed)


def _check_launch(config: Config, settings: dict[str, Any], refuse: Refuse, changes: list[str]) -> None:
    """accelerate's own choices of machine, devices and rendezvous against xgen's."""
    where = settings.get("compute_environment", "LOCAL_MACHINE")
    if where != "LOCAL_MACHINE":
        raise refuse(
            f"compute_environment: {text(where)}: xgen launches on your own nodes; set LOCAL_MACHINE"
        )
    gpu_ids = settings.get("gpu_ids")
    if gpu_ids is not None and text(gpu_ids) != "all":
        raise refuse(
            f"gpu_ids: {text(gpu_ids)} contradicts cluster.devices_per_node: "
            f"{config.cluster.devices_per_node} (accelerate would narrow the devices after xgen counted "
            "them); remove gpu_ids and export CUDA_VISIBLE_DEVICES or ASCEND_RT_VISIBLE_DEVICES (or set "
            "it in cluster.env)"
        )
    rdzv = settings.get("rdzv_backend", "static")
    if rdzv != "static":
        raise refuse(
            f"rdzv_backend: {text(rdzv)}: xgen accelerate gives every node its machine_rank, which "
            "accelerate uses with the static rendezvous; set rdzv_backend: static"
        )
    if _flag(settings.get("use_cpu")):
        if config.cluster.device != "cpu":
            raise refuse(
                f"use_cpu: true contradicts cluster.device: {config.cluster.device} (accelerate would start "
                "one process on the CPU); set use_cpu: false"
            )
        settings["use_cpu"] = False
        changes.append(
            "use_cpu true -> false (accelerate's use_cpu starts one process without torch.distributed; the "
            "runtime runs on the CPU with gloo from cluster.device: cpu)"
        )


def _strategy(train: TrainConfig | None) -> tuple[str, str]:
    """(the strategy train: runs: ddp|fsdp|deepspeed, the key that says so) for messages."""
    if train is not None and train.deepspeed is not None:
        named = train.deepspeed if isinstance(train.deepspeed, str) else "(inline JSON)"
        return "deepspeed", f"train.deepspeed: {named}"
    if train is not None and train.fsdp:
        return "fsdp", "train.fsdp"
    return "ddp", "train: (no fsdp or deepspeed: DDP)"


def _check_strategy(train: TrainConfig | None, settings: dict[str, Any], refuse: Refuse) -> str | None:
    """distributed_type against the strategy train: runs: FSDP, or None when the script fills it in per
    node from the detected device (DDP; DeepSpeed too, which the runtime starts under that launch)."""
    runs, says = _strategy(train)
    value = settings.get("distributed_type")
    if value is None or (value in _DDP_TYPES and runs != "fsdp") or (value == "FSDP" and runs == "fsdp"):
        return "FSDP" if runs == "fsdp" else None
    if value not in (*_DDP_TYPES, "FSDP", "DEEPSPEED"):
        wants = "FSDP" if runs == "fsdp" else "MULTI_GPU (MULTI_NPU on NPUs)"
        raise refuse(f"distributed_type: {text(value)}: xgen runs on cuda, npu or cpu devices; set {wants}")
    fixes = {
        ("FSDP", "ddp"): "add fsdp: full_shard auto_wrap to train: (LLaMA-Factory takes FSDP from this "
        "file, xgen's runtime from train:), or set distributed_type: MULTI_GPU",
        ("FSDP", "deepspeed"): "keep one: remove train.deepspeed, or set distributed_type: MULTI_GPU",
        ("DEEPSPEED", "fsdp"): "set distributed_type: FSDP, or use train.deepspeed instead of train.fsdp",
        ("DEEPSPEED", "ddp"): "set distributed_type: MULTI_GPU, or set train.deepspeed (z2, z3, …) and "
        "remove distributed_type and deepspeed_config from the file",
        ("DEEPSPEED", "deepspeed"): "the runtime starts DeepSpeed itself from train.deepspeed under "
        "accelerate's plain launch: remove distributed_type and deepspeed_config from the file",
    }
    fix = fixes.get((value, runs), "set distributed_type: FSDP, or remove fsdp from train:")
    if value == "DEEPSPEED" and runs == "deepspeed":
        raise refuse(f"distributed_type: DEEPSPEED with {says}: {fix}")
    raise refuse(f"distributed_type: {value} contradicts {says}; {fix}")


def _precision(train: TrainConfig | None) -> tuple[str, str]:
    """(accelerate's mixed_precision for train:, the key that says so)."""
    if train is not None and train.fp8:
        return "fp8", "train.fp8: true"
    if train is not None and train.bf16:
        return "bf16", "train.bf16: true"
    if train is not None and train.fp16:
        return "fp16", "train.fp16: true"
    return "no", "train.bf16 and train.fp16 (unset: fp32)"


def _check_precision(
    train: TrainConfig | None, settings: dict[str, Any], refuse: Refuse, changes: list[str]
) -> None:
    wants, says = _precision(train)
    value = settings.get("mixed_precision")
    if value is None:
        settings["mixed_precision"] = wants
        changes.append(f"mixed_precision (unset) -> {wants} ({says})")
        return
    said = "no" if value is False else text(value)  # YAML 1.1 reads a bare `no` as false
    if said != wants:
        raise refuse(
            f"mixed_precision: {said} contradicts {says}; set mixed_precision: {wants} in the file, or "
            "change train:"
        )


def runtime_fsdp(train: TrainConfig) -> dict[str, Any]:
    """The FSDP settings the runtime's Trainer runs with, by accelerate key (FSDP2)."""
    fsdp_config = train.fsdp_config if isinstance(train.fsdp_config, dict) else {}
    values: dict[str, Any] = {"fsdp_version": 2}
    for key, train_key, default, _ in FSDP_FROM_TRAIN:
        value = fsdp_config.get(train_key, default)
        values[key] = _flag(value) if isinstance(default, bool) and _flag(value) is not None else value
    return values


def _file_reshard(fsdp: dict[str, Any], refuse: Refuse) -> tuple[bool | None, str]:
    """Whether the file reshards after forward (FSDP2's fsdp_reshard_after_forward, or FSDP1's
    fsdp_sharding_strategy), and the setting as written; (None, "") when it says neither."""
    if "fsdp_reshard_after_forward" in fsdp:
        value = fsdp["fsdp_reshard_after_forward"]
        return _flag(value), f"fsdp_config.fsdp_reshard_after_forward: {text(value)}"
    strategy = fsdp.get("fsdp_sharding_strategy")
    if strategy is None:
        return None, ""
    reshard = _SHARDING.get(text(strategy).upper())
    if reshard is None:
        raise refuse(
            f"fsdp_config.fsdp_sharding_strategy: {text(strategy)}: FSDP2 here takes {_SHARDING_FSDP2}"
        )
    return reshard, f"fsdp_config.fsdp_sharding_strategy: {text(strategy)}"


def _fsdp(train: TrainConfig, fsdp: dict[str, Any], refuse: Refuse, changes: list[str]) -> dict[str, Any]:
    """fsdp_config as the runtime runs it: FSDP2, train:'s offload and resharding (else refused), and the
    other settings the Trainer takes from train: written as it takes them."""
    runs = runtime_fsdp(train)
    stated = train.fsdp_config if isinstance(train.fsdp_config, dict) else {}
    version = fsdp.get("fsdp_version")
    if text(version) != "2":
        fsdp["fsdp_version"] = 2
        changes.append(
            f"fsdp_config.fsdp_version {text(version) or '(unset: 1)'} -> 2 (the runtime trains with FSDP2, "
            "from train.fsdp)"
        )
    if "fsdp_backward_prefetch" in fsdp:
        was = text(fsdp.pop("fsdp_backward_prefetch"))
        changes.append(
            f"fsdp_config.fsdp_backward_prefetch {was} -> (removed) (FSDP2 has no backward prefetch; "
            "accelerate would warn on every rank)"
        )
    for key, train_key, default, strict in FSDP_FROM_TRAIN:
        want = runs[key]
        if key == "fsdp_reshard_after_forward":
            value, written = _file_reshard(fsdp, refuse)
        elif key in fsdp:
            value = fsdp[key]
            written = f"fsdp_config.{key}: {text(value)}"
        else:
            continue
        if value is None or (
            _flag(value) == want if isinstance(default, bool) else text(value) == text(want)
        ):
            continue
        if strict or train_key in stated:
            said = (
                f"train.fsdp_config.{train_key}: {text(stated[train_key])}"
                if train_key in stated
                else f"train.fsdp ({train_key}: {text(want)})"
            )
            raise refuse(
                f"{written} contradicts {said}; set {key}: {text(want)} in the file, or "
                f"train.fsdp_config.{train_key}: {text(value)}"
            )
        fsdp[key] = want
        changes.append(
            f"fsdp_config.{key} {text(value)} -> {text(want)} (the runtime takes it from "
            f"train.fsdp_config.{train_key}, unset: {text(default)})"
        )
    return fsdp


__all__ = ["FSDP_FROM_TRAIN", "PER_NODE", "Plan", "adopt_fsdp", "attach", "plan", "runtime_fsdp", "text"]
