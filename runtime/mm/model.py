"""What LLaMA-Factory 0.9.5 freezes and adapts in a Qwen vision-language model (model/model_utils/visual.py,
misc.py find_all_linear_modules, adapter.py): each family's vision tower, projector and language model
keys, matched as substrings of parameter / module names, as LLaMA-Factory matches them.

    freeze  the last freeze_trainable_layers text layers (substring `.{i}.` of names, as LLaMA-Factory
            matches them) and, when not frozen, the projector; never a forbidden part
    full    every parameter trains except the forbidden parts: the vision tower (freeze_vision_tower,
            default true), the projector (freeze_multi_modal_projector, default true), the language model
            (freeze_language_model, default false)
    lora    `lora_target: all` = the leaf names of every linear layer outside lm_head, the projector and
            (when frozen) the vision tower; then every module whose name contains one of those targets
            and none of the forbidden parts nor `patch_embed`, by full name
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import nn

from runtime.config import ConfigError, TrainConfig


@dataclass(frozen=True)
class Composite:
    projector: tuple[str, ...]
    vision: tuple[str, ...]
    language: tuple[str, ...]
    lora_conflict: tuple[str, ...]


_QWEN2 = Composite(
    projector=("visual.merger",),
    vision=("visual.patch_embed", "visual.blocks"),
    language=("language_model", "lm_head"),
    lora_conflict=("patch_embed",),
)
_QWEN3 = Composite(
    projector=("visual.merger",),
    vision=("visual.pos_embed", "visual.patch_embed", "visual.blocks", "visual.deepstack_merger_list"),
    language=("language_model", "lm_head"),
    lora_conflict=("patch_embed",),
)
COMPOSITE = {"qwen2_vl": _QWEN2, "qwen2_5_vl": _QWEN2, "qwen3_vl": _QWEN3, "qwen3_vl_moe": _QWEN3}


def composite_of(model: nn.Module) -> Composite | None:
    return COMPOSITE.get(getattr(getattr(model, "config", None), "model_type", None) or "")


def forbidden_modules(parts: Composite, cfg: TrainConfig) -> set[str]:
    forbidden: set[str] = set()
    if cfg.freeze_vision_tower:
        forbidden.update(parts.vision)
    if cfg.freeze_multi_modal_projector:
        forbidden.update(parts.projector)
    if cfg.freeze_language_model:
        forbidden.update(parts.language)
    return forbidden


def all_linear_names(model: nn.Module, parts: Composite, cfg: TrainConfig) -> list[str]:
    """LLaMA-Factory's find_all_linear_modules for a composite model."""
    skip = {"lm_head", *parts.projector, *(parts.vision if cfg.freeze_vision_tower else ())}
    names = {
        name.split(".")[-1]
        for name, module in model.named_modules()
        if not any(s in name for s in skip)
        and "Linear" in type(module).__name__
        and "Embedding" not in type(module).__name__
    }
    return sorted(names)


def adapter_targets(model: nn.Module, parts: Composite, cfg: TrainConfig, targets: list[str]) -> list[str]:
    """LLaMA-Factory's patch_target_modules: full module names (`all` expanded first)."""
    if targets == ["all"]:
        targets = all_linear_names(model, parts, cfg)
    forbidden = forbidden_modules(parts, cfg) | set(parts.lora_conflict)
    names = [
        name
        for name, _ in model.named_modules()
        if any(t in name for t in targets) and not any(f in name for f in forbidden)
    ]
    if not names:
        raise ConfigError("lora_target", f"{targets} matches no module outside the frozen parts")
    return names


def apply_frozen_parts(model: nn.Module, parts: Composite, cfg: TrainConfig) -> nn.Module:
    """Full tuning: the forbidden parts stop training (LLaMA-Factory's _setup_full_tuning)."""
    forbidden = forbidden_modules(parts, cfg)
    for name, param in model.named_parameters():
        if any(f in name for f in forbidden):
            param.requires_grad_(False)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("freeze_language_model", "every part of the model is frozen: nothing would train")
    return model


def apply_vl_freeze(model: nn.Module, parts: Composite, cfg: TrainConfig) -> nn.Module:
    """LLaMA-Factory's _setup_freeze_tuning for a composite model: the last (first, when negative)
    freeze_trainable_layers of the text config's layers, matched as `.{index}.{module}` substrings of
    parameter names, plus freeze_extra_modules, plus the projector when it is not frozen; never a
    forbidden part."""
    layers = model.config.get_text_config().num_hidden_layers
    n = cfg.freeze_trainable_layers
    ids = range(max(0, layers - n), layers) if n > 0 else range(min(-n, layers))
    hidden, outside = set(), set()
    for name, _ in model.named_parameters():
        if ".0." in name:
            hidden.add(name.split(".0.")[-1].split(".")[0])
        elif ".1." in name:
            hidden.add(name.split(".1.")[-1].split(".")[0])
        if re.search(r"\.\d+\.", name) is None:
            outside.add(name.split(".")[-2])
    trainable = []
    for module in [m.strip() for m in cfg.freeze_trainable_modules.split(",") if m.strip()]:
        if module != "all" and module not in hidden:
            raise ConfigError(
                "freeze_trainable_modules", f"{module} not found; choose from {', '.join(sorted(hidden))}"
            )
        trainable += [f".{i}.{module if module != 'all' else ''}" for i in ids]
    for module in [m.strip() for m in (cfg.freeze_extra_modules or "").split(",") if m.strip()]:
        if module not in outside:
            raise ConfigError(
                "freeze_extra_modules", f"{module} not found; choose from {', '.join(sorted(outside))}"
            )
        trainable.append(module)
    if not cfg.freeze_multi_modal_projector:
        trainable += list(parts.projector)
    forbidden = forbidden_modules(parts, cfg)
    for name, param in model.named_parameters():
        train = any(t in name for t in trainable) and not any(f in name for f in forbidden)
        param.requires_grad_(train)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("freeze_trainable_layers", "freeze: no parameter left trainable")
    return model


def check_method(cfg: TrainConfig, kind: str) -> None:
    """The methods measured for these models: full, freeze, LoRA and OFT SFT; the rest refused."""
    if cfg.finetuning_type not in ("full", "freeze", "lora", "oft"):
        raise ConfigError("finetuning_type", f"{cfg.finetuning_type} on a {kind} model is not supported")
    for key in ("use_llama_pro", "use_galore", "use_apollo", "use_badam", "pissa_init"):
        if getattr(cfg, key, False):
            raise ConfigError(key, f"not supported for {kind} models (only plain full and LoRA tuning)")


def summary(model: nn.Module) -> str:
    """`N of M parameters train`, whole counts under ZeRO-3 too (its partitions hold ds_numel each)."""
    trainable = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)
    total = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    return f"{trainable:,} of {total:,} parameters train"


def is_vision_model(model: Any) -> bool:
    return composite_of(model) is not None
