"""Load model and tokenizer, then transform the model with small named `apply_*` functions.

Like torchtitan's parallelisms, each function does one transformation (LoRA, freeze,
activation checkpointing) so a stage reads as a list of what was done to the model.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import torch
from torch import nn

from runtime.config import TrainConfig
from runtime.data.packing import check_packing_support

log = logging.getLogger("xgen-runtime")

# Names of the output heads: never LoRA targets, always trainable in a reward model.
HEAD_NAMES = ("lm_head", "score", "v_head", "classifier")


def load_tokenizer(cfg: TrainConfig) -> Any:
    """The model's tokenizer, right-padded, with a pad token (eos when it has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cfg.model_name_or_path, trust_remote_code=cfg.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def resolve_attention(flash_attn: str, device: str) -> tuple[str, str | None]:
    """Map `flash_attn` to an attn_implementation for this device, plus a warning if it fell back."""
    if flash_attn == "eager":
        return "eager", None
    if flash_attn in ("auto", "sdpa"):
        return "sdpa", None
    if flash_attn == "flex":  # block-mask attention for packed rows; torch has no flex backward off CUDA
        if device == "cuda":
            return "flex_attention", None
        return "sdpa", f"flash_attn: flex needs CUDA (device is {device}); using sdpa"
    # fa2: CUDA needs the flash_attn package; on Ascend transformers routes flash_attention_2 to
    # torch_npu's fused attention (npu_fusion_attention).
    if device == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2", None
    if device == "npu" and importlib.util.find_spec("transformers.integrations.npu_flash_attention"):
        return "flash_attention_2", None
    why = "the flash_attn package is not installed" if device == "cuda" else f"device is {device}"
    return "sdpa", f"flash_attn: fa2 unavailable ({why}); using sdpa"


def model_dtype(cfg: TrainConfig, device: str) -> torch.dtype:
    """fp32 master weights for full tuning; half-precision frozen base for lora/freeze (as LLaMA-Factory)."""
    if cfg.finetuning_type == "full" or device == "cpu":
        return torch.float32
    if cfg.bf16:
        return torch.bfloat16
    return torch.float16 if cfg.fp16 else torch.float32


def load_model(cfg: TrainConfig, *, stage: str, device: str, path: str | None = None) -> nn.Module:
    """Causal LM, or a one-label sequence classifier for rm (head seeded identically on every rank)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, set_seed

    path = path or cfg.model_name_or_path
    attn, warning = resolve_attention(cfg.flash_attn, device)
    if warning:
        log.warning(warning)
    kwargs = dict(dtype=model_dtype(cfg, device), trust_remote_code=cfg.trust_remote_code)
    if stage == "rm":
        set_seed(cfg.seed)  # the score head is new: every rank must initialise it the same way
        auto, kwargs = AutoModelForSequenceClassification, {**kwargs, "num_labels": 1}
    else:
        auto = AutoModelForCausalLM
    try:
        model = auto.from_pretrained(path, attn_implementation=attn, **kwargs)
    except (ImportError, ValueError) as exc:
        if attn == "sdpa" or attn == "eager":
            raise
        log.warning("flash_attn: %s failed (%s); using sdpa", attn, str(exc).splitlines()[0])
        model = auto.from_pretrained(path, attn_implementation="sdpa", **kwargs)
    model.config.use_cache = False
    if stage == "rm" and model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
    return model


def set_pad_token(model: nn.Module, tokenizer: Any) -> None:
    """A reward model finds each sequence's last token through pad_token_id."""
    if tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id


def linear_module_names(model: nn.Module) -> list[str]:
    """Leaf names of every nn.Linear except the heads: `lora_target: all`."""
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] not in HEAD_NAMES
    }
    return sorted(names)


def apply_lora(model: nn.Module, cfg: TrainConfig, *, stage: str) -> nn.Module:
    """Wrap in a PEFT LoRA model (new adapter, or continue `adapter_name_or_path`)."""
    from peft import LoraConfig, PeftModel, TaskType, get_peft_model

    if cfg.adapter_name_or_path:
        return PeftModel.from_pretrained(model, cfg.adapter_name_or_path, is_trainable=True)
    targets = cfg.lora_target.split(",")
    targets = linear_module_names(model) if targets == ["all"] else [t.strip() for t in targets]
    extra = [m.strip() for m in (cfg.additional_target or "").split(",") if m.strip()]
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS if stage == "rm" else TaskType.CAUSAL_LM,
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        modules_to_save=extra or None,  # SEQ_CLS adds the score head itself
        use_rslora=cfg.use_rslora,
        use_dora=cfg.use_dora,
    )
    from transformers import set_seed

    set_seed(cfg.seed)  # LoRA A init must not depend on how much RNG the (ZeRO-3/FSDP) load consumed
    model = get_peft_model(model, lora)
    for param in model.parameters():  # trainable LoRA weights in fp32 even over a bf16 base
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    return model


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks (model.model.layers for Llama/Qwen/Mistral)."""
    count = model.config.num_hidden_layers
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"cannot find the {count} decoder layers of {type(model).__name__}")


def apply_freeze(model: nn.Module, cfg: TrainConfig, *, stage: str) -> nn.Module:
    """Train only the last N (or first -N) layers' chosen modules, plus named extra modules."""
    layers = decoder_layers(model)
    n = cfg.freeze_trainable_layers
    chosen = range(len(layers) - n, len(layers)) if n > 0 else range(-n)
    layer_ids = {id(layers[i]) for i in chosen if 0 <= i < len(layers)}
    inner = None if cfg.freeze_trainable_modules == "all" else cfg.freeze_trainable_modules.split(",")
    extra = [m.strip() for m in (cfg.freeze_extra_modules or "").split(",") if m.strip()]
    if stage == "rm":
        extra += ["score", "v_head"]  # a new head must learn
    model.requires_grad_(False)
    for layer in (m for m in layers if id(m) in layer_ids):
        for name, param in layer.named_parameters():
            if inner is None or any(part in inner for part in name.split(".")):
                param.requires_grad_(True)
    for name, param in model.named_parameters():
        if any(part in extra for part in name.split(".")):
            param.requires_grad_(True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("freeze: no parameter left trainable; check freeze_trainable_modules/extra_modules")
    for param in trainable:
        if param.dtype != torch.float32:
            param.data = param.data.float()
    return model


def enable_gradient_checkpointing(model: nn.Module) -> nn.Module:
    """Non-reentrant checkpointing: works with frozen inputs (LoRA/freeze) without hooks."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def build_model(cfg: TrainConfig, *, stage: str, device: str, tokenizer: Any) -> nn.Module:
    """load → (packing check) → freeze | lora → gradient checkpointing; the steps every stage shares."""
    model = load_model(cfg, stage=stage, device=device)
    if (cfg.padding_free or cfg.neat_packing) and stage in ("pt", "sft"):
        check_packing_support(model)  # packed examples must never attend to each other
    if stage == "rm":
        set_pad_token(model, tokenizer)
    if cfg.finetuning_type == "freeze":
        model = apply_freeze(model, cfg, stage=stage)
    elif cfg.finetuning_type == "lora":
        model = apply_lora(model, cfg, stage=stage)
    if cfg.gradient_checkpointing:
        model = enable_gradient_checkpointing(model)
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; ZeRO-3 partitions report their full size via ds_numel."""
    trainable = total = 0
    for param in model.parameters():
        n = getattr(param, "ds_numel", param.numel())
        total += n
        trainable += n if param.requires_grad else 0
    return trainable, total
