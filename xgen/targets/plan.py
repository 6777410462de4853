"""`xgen plan`: the memory the configured run needs per device, the alternatives, and the one to pick.

The numbers come from runtime.contract.plan (torch-free; the preflight on each node reads the same);
this module only finds the model's config.json, the world size and the device memory in the config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runtime.contract.plan import misfit, plan_text, read_shape, run_from_config, stated_memory
from runtime.contract.plan.shape import Shape
from runtime.contract.plan.terms import Run
from xgen.config import Config
from xgen.errors import XgenError

# model_types whose parameter counts are checked exact against transformers (tests/runtime/contract/
# test_plan_shape.py); another family is planned with the same decoder layer, and said so.
VERIFIED_FAMILIES = ("llama", "qwen2", "qwen3", "qwen3_moe", "mixtral")
ASSUMED_DEVICES = 8  # devices_per_node: auto, and no slurm.gpus_per_node: plan as for an 8-device node


@dataclass(frozen=True)
class Planned:
    shape: Shape
    run: Run
    memory: int | None
    memory_label: str
    accumulation: int
    note: str


def model_dir(config: Config) -> Path:
    train = config.training
    if train is None or not train.model_name_or_path:
        raise XgenError("train.model_name_or_path", "xgen plan needs the model; set train.model_name_or_path")
    name = train.model_name_or_path
    path = Path(name).expanduser()
    local = path if path.is_absolute() else Path(config.workdir) / path
    if local.exists() or path.is_absolute() or name.startswith(".") or name.count("/") != 1:
        return local
    # A hub id (org/name): its config.json from the Hugging Face cache, as the nodes would load it.
    from runtime.contract.hf_cache import cached_file

    found = cached_file(name, "config.json")
    if found is None:  # no huggingface_hub here
        return local
    cached, cache = found
    if cached is not None:
        return Path(cached).parent
    raise XgenError(
        "train.model_name_or_path",
        f"{name} is neither a folder here nor a hub id in the Hugging Face cache here "
        f"({cache}); xgen plan reads only its config.json: `hf download {name} "
        "config.json` (a few KB), or point model_name_or_path at a local folder",
    )


def devices_per_node(config: Config) -> tuple[int, str]:
    if config.pinned_devices:
        return config.pinned_devices, ""
    if config.slurm.gpus_per_node:
        return config.slurm.gpus_per_node, ""
    return ASSUMED_DEVICES, (
        f"devices_per_node is auto: planned for {ASSUMED_DEVICES} per node (--devices-per-node N to change)"
    )


def planned(config: Config) -> Planned:
    """The configured run and the device memory to judge it against; XgenError when the model's
    config.json cannot be read from here."""
    where = model_dir(config)
    try:
        shape = read_shape(where)
    except (OSError, KeyError, ValueError) as err:
        raise XgenError(
            "train.model_name_or_path",
            f"cannot read {where / 'config.json'} ({type(err).__name__}: {err}); xgen plan reads only the "
            "model's config.json: make it visible here",
        ) from None
    train = config.training
    assert train is not None
    per_node, note = devices_per_node(config)
    world = config.cluster.nodes * per_node
    device = "cpu" if config.cluster.device == "cpu" else "cuda"
    run = run_from_config(shape, train, world, device)
    value = config.cluster.device_memory_gb
    memory = stated_memory(value)
    label = "device memory auto (read on each node by the preflight)" if value == "auto" else str(value)
    if value is not None and value != "auto" and str(value).replace(".", "", 1).isdigit():
        label = f"{value} GiB"
    if value is None:
        label = "memory not stated"
    notes = [note] if note else []
    if (
        isinstance(train.deepspeed, str)
        and train.deepspeed_config is None
        and train.deepspeed.endswith(".json")
    ):
        from runtime.config.files import lf_named_stage

        named = lf_named_stage(train.deepspeed)
        notes.append(
            f"train.deepspeed: {train.deepspeed} is not readable from here; planned as "
            + (
                f"LLaMA-Factory's file of that name, the named stage {named}"
                if named
                else "DDP (no ZeRO stage)"
            )
        )
    if (shape.model_type or "") not in VERIFIED_FAMILIES:
        notes.append(
            f"model_type {shape.model_type}: planned with the Llama-style decoder layer (attention, SwiGLU "
            f"MLP, RMSNorm) from its config.json; the counts are verified for {', '.join(VERIFIED_FAMILIES)}"
        )
    return Planned(shape, run, memory, label, train.gradient_accumulation_steps, "\n".join(notes))


def plan(config: Config) -> str:
    p = planned(config)
    text = plan_text(p.shape, p.run, p.memory, p.memory_label, p.accumulation)
    text += "".join(f"note: {line}\n" for line in p.note.splitlines())
    # a bare LLaMA-Factory YAML holds the training keys at its top level: name them as the user wrote them
    return text.replace("train.", "") if config.bare else text


def fit_warning(config: Config) -> str | None:
    """`xgen check`'s warning when the configured run does not fit the stated device memory; None when it
    fits, no memory is stated (unset or auto), or the model's config.json is not visible from here."""
    if config.training is None or stated_memory(config.cluster.device_memory_gb) is None:
        return None
    try:
        p = planned(config)
    except XgenError:
        return None
    assert p.memory is not None
    line = misfit(p.run, p.memory, p.accumulation)
    if line and config.bare:  # the keys as the bare LLaMA-Factory YAML writes them
        line = line.replace("train.", "")
    return f"cluster.device_memory_gb: {line}" if line else None
