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

from runtime.config import ConfigError, TrainConfig
from runtime.contract.say import say
from runtime.data.packing import check_packing_support
from runtime.distributed import launch_ranks
from runtime.levers import sdpa_varlen
from runtime.mm.families import VISION_STAGES, refuse_stage, vision_model_type

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
    add_tokens(tokenizer, cfg)
    return tokenizer


def add_tokens(tokenizer: Any, cfg: TrainConfig) -> None:
    """`add_tokens` / `add_special_tokens` (comma lists) into the tokenizer, as LLaMA-Factory does;
    the parser has already turned resize_vocab on so the model grows embedding rows for them."""
    for value, special in ((cfg.add_tokens, False), (cfg.add_special_tokens, True)):
        tokens = [t.strip() for t in (value or "").split(",") if t.strip()]
        if tokens:
            tokenizer.add_tokens(tokens, special_tokens=special)


def attn_implementation(flash_attn: str, device: str) -> tuple[str, str | None]:
    """Map `flash_attn` to an attn_implementation for this device, plus a warning if it fell back."""
    if flash_attn == "eager":
        return "eager", None
    if flash_attn in ("auto", "sdpa"):
        return "sdpa", None
    if flash_attn == "sdpa_varlen":  # any device; perf auto picks it on CPU (runtime/levers/sdpa_varlen.py)
        return sdpa_varlen.NAME, None
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
    """fp32 master weights for full tuning; half-precision frozen base for lora/freeze (as LLaMA-Factory);
    everything in bf16 with pure_bf16 (on CPU too: the user asked for it and torch runs it)."""
    if cfg.pure_bf16:
        return torch.bfloat16
    if cfg.finetuning_type == "full" or device == "cpu":
        return torch.float32
    if cfg.bf16:
        return torch.bfloat16
    return torch.float16 if cfg.fp16 else torch.float32


def load_model(cfg: TrainConfig, *, stage: str, device: str, path: str | None = None) -> nn.Module:
    """Causal LM, or a one-label sequence classifier for rm (head seeded identically on every rank)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, set_seed

    attn, warning = attn_implementation(cfg.flash_attn, device)
    if warning:
        log.warning(warning)
    kwargs: dict[str, Any] = dict(dtype=model_dtype(cfg, device), trust_remote_code=cfg.trust_remote_code)
    if path is None and cfg.quantization_bit is not None:  # the model being trained; not a ref_model
        kwargs.update(quantization_kwargs(cfg, device))
    path = path or cfg.model_name_or_path
    config = model_config(cfg, path)
    if config is not None:
        kwargs["config"] = config
    if attn == sdpa_varlen.NAME:
        attn = varlen_or_sdpa(cfg, path, config)
    if stage == "rm":
        set_seed(cfg.seed)  # the score head is new: every rank must initialise it the same way
        auto, kwargs = AutoModelForSequenceClassification, {**kwargs, "num_labels": 1}
    elif vision_model_type(path):  # Qwen-VL: the vision tower's attention stays transformers' sdpa
        from transformers import AutoModelForImageTextToText

        if stage not in VISION_STAGES:
            refuse_stage(str(vision_model_type(path)), stage)
        if attn not in ("eager", "sdpa"):
            log.warning(
                "flash_attn: %s left off for the vision-language model (sdpa; not checked on it)", attn
            )
            attn = "sdpa"
        auto = AutoModelForImageTextToText
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
    keep_used_conversions(model)
    if stage == "rm" and model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
    return model


def keep_used_conversions(model: nn.Module) -> None:
    """Keep only the key renamings the load really applied, as transformers' own loader does
    (core_model_loading: `was_used()`). Its ZeRO-3 loader (modeling_utils, `_weight_conversions =
    weight_mapping`) keeps every renaming of the model type, used or not, and save_pretrained reverts them
    all: a Qwen3-VL trained under ZeRO-3 was saved as `model.language_model.model.layers.*` (measured on
    transformers 5.23). Dropping an unused one only means the save keeps the current names."""
    conversions = getattr(model, "_weight_conversions", None)
    if conversions:
        model._weight_conversions = [c for c in conversions if getattr(c, "was_used", lambda: True)()]


def vision_parts(model: nn.Module) -> Any:
    """runtime.mm.model's Composite (vision tower / projector / language model keys), or None."""
    from runtime.mm.model import composite_of

    return composite_of(model)


def compute_dtype(cfg: TrainConfig) -> torch.dtype:
    """The dtype quantised layers compute in (LLaMA-Factory's compute_dtype): bf16, fp16, else fp32.
    train.adjust_for_device has already turned fp16 off on CPU."""
    if cfg.bf16 or cfg.pure_bf16:
        return torch.bfloat16
    return torch.float16 if cfg.fp16 else torch.float32


def quantization_kwargs(cfg: TrainConfig, device: str) -> dict[str, Any]:
    """from_pretrained keywords that quantise the base on the fly, as LLaMA-Factory 0.9.5 builds them
    (model_utils/quantization.py); the config rules (runtime/config/quantization.py) have checked the
    bits, the method and the strategy."""
    import transformers
    from transformers.integrations import is_deepspeed_zero3_enabled

    dtype = compute_dtype(cfg)
    if device == "npu" and cfg.quantization_method in ("bnb", "bitsandbytes"):
        check_bnb_on_npu(cfg.quantization_bit)
    if cfg.quantization_method == "hqq":
        # LLaMA-Factory's choice: axis 0 (hqq's ATen kernel). Not run here: hqq is not installed.
        config: Any = transformers.HqqConfig(nbits=cfg.quantization_bit, axis=0)
    elif cfg.quantization_method == "eetq":
        config = transformers.EetqConfig()  # 8-bit weights; not run here (eetq is CUDA-only)
    elif cfg.quantization_bit == 8:
        config = transformers.BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = transformers.BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=cfg.double_quantization,
            bnb_4bit_quant_type=cfg.quantization_type,
            # The packed 4-bit weights stored in the compute dtype, as LLaMA-Factory does for every run: the
            # mixed-precision casts of FSDP and DeepSpeed to that dtype then leave them as they are (fp32
            # storage under bf16 FSDP2 is cast numerically and the first step fails, measured).
            bnb_4bit_quant_storage=dtype,
        )
    kwargs: dict[str, Any] = {"quantization_config": config}
    if not (cfg.fsdp or is_deepspeed_zero3_enabled()):
        # Each rank quantises its whole copy on its own device; FSDP and ZeRO-3 place the weights themselves.
        _, local_rank, _ = launch_ranks()
        kwargs["device_map"] = {"": "cpu" if device == "cpu" else f"{device}:{local_rank}"}
    return kwargs


def bnb_npu_backends() -> list[str]:
    """The bitsandbytes backends other packages register (entry points `bitsandbytes.backends`, which
    bitsandbytes loads at import), and whether torch_npu's dispatch key has bitsandbytes' 4-bit kernel."""
    from importlib.metadata import entry_points

    names = [ep.name for ep in entry_points(group="bitsandbytes.backends")]
    try:
        import bitsandbytes  # noqa: F401  (registers its ops and loads those backends)
        import torch

        if torch._C._dispatch_has_kernel_for_dispatch_key("bitsandbytes::dequantize_4bit", "PrivateUse1"):
            names.append("PrivateUse1 kernel")
    except (ImportError, RuntimeError):
        pass
    return names


def check_bnb_on_npu(bits: int | None, backends: list[str] | None = None) -> None:
    """bitsandbytes' own wheel has no Ascend kernels: LLaMA-Factory's NPU QLoRA examples
    (train_qlora/qwen3_lora_sft_bnb_npu.yaml, extras/qoft/llama3_oft_sft_bnb_npu.yaml) need a build that
    registers an NPU backend. Without one the run stops here, before the model loads, in one line.
    Not run on an NPU here: this checks what is registered, not that the kernels are right."""
    found = bnb_npu_backends() if backends is None else backends
    if any("npu" in name.lower() or "ascend" in name.lower() or "PrivateUse1" in name for name in found):
        return
    raise ConfigError(
        "quantization_bit",
        f"{bits}-bit bitsandbytes on NPU needs bitsandbytes built for Ascend (an NPU backend registered "
        f"under the 'bitsandbytes.backends' entry points; found: {', '.join(found) or 'none'}); install it "
        "as LLaMA-Factory's *_bnb_npu examples require, or train without quantization_bit",
    )


def prepare_quantised(model: nn.Module) -> nn.Module:
    """peft's prepare_model_for_kbit_training: every base weight frozen, the half-precision ones that are not
    quantised (norms, embeddings, head) in fp32. Activation checkpointing is left to
    enable_gradient_checkpointing, which every method shares (use_reentrant_gc, FSDP's non-reentrant)."""
    from peft import prepare_model_for_kbit_training

    for module in model.modules():
        # bitsandbytes on an AVX512-BF16 CPU repacks a 4-bit weight in place for its inference kernel at the
        # first forward in eval mode, and training goes on with the repacked weight. Measured (2 gloo ranks,
        # an evaluation at step 2): under DDP the next step's grad norm halved (0.26 instead of 0.52), under
        # FSDP the evaluation loss itself moved (6.329 instead of 6.312). One layout for both, always.
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def describe_quantization(model: nn.Module, cfg: TrainConfig) -> str:
    """One line: what the base was quantised to and how many of its layers."""
    config = getattr(model.config, "quantization_config", None)
    method = str(getattr(config, "quant_method", "?")).rsplit(".", 1)[-1].lower()
    packages = ("bitsandbytes", "hqq", "eetq", "gptqmodel", "awq", "aqlm")
    quantised = [m for m in model.modules() if type(m).__module__.split(".")[0] in packages]
    linear = len(quantised) + sum(type(m) is nn.Linear for m in model.modules())
    if cfg.quantization_bit is None:
        return f"the model is {method}-quantised: {len(quantised)} of {linear} linear layers"
    what = f"{cfg.quantization_bit}-bit {cfg.quantization_method}"
    if cfg.quantization_method == "bnb" and cfg.quantization_bit == 4:
        double = ", double quantisation" if cfg.double_quantization else ""
        what += f" {cfg.quantization_type}{double}, compute {str(compute_dtype(cfg)).removeprefix('torch.')}"
    return f"{what}: {len(quantised)} of {linear} linear layers quantised"


def varlen_or_sdpa(cfg: TrainConfig, path: str, config: Any) -> str:
    """sdpa_varlen.NAME, registered, when the model's attention is plain causal; else sdpa and one
    warning naming why (a sliding window, soft-capping, sinks: runtime/sdpa_varlen.why_not)."""
    if config is None:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    why = sdpa_varlen.why_not(config)
    if why:
        log.warning("flash_attn: sdpa_varlen: %s; using sdpa (packed rows of at most cutoff_len)", why)
        return "sdpa"
    sdpa_varlen.register()
    return sdpa_varlen.NAME


def model_config(cfg: TrainConfig, path: str) -> Any:
    """The model's config changed for rope_scaling / moe_aux_loss_coef, or None when neither is set."""
    if cfg.rope_scaling is None and cfg.moe_aux_loss_coef is None:
        return None
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    if cfg.rope_scaling is not None:
        apply_rope_scaling(config, cfg.rope_scaling, cfg.cutoff_len)
    if cfg.moe_aux_loss_coef is not None:
        apply_moe_aux_loss(config, cfg.moe_aux_loss_coef)
    return config


def apply_rope_scaling(config: Any, kind: str, cutoff_len: int) -> None:
    """LLaMA-Factory's rope_scaling: factor ceil(cutoff_len / max_position_embeddings), only when the
    training length exceeds the model's (runtime/model_utils/rope.py there)."""
    import math

    params = dict(getattr(config, "rope_parameters", None) or {})
    old = params.get("original_max_position_embeddings") or getattr(config, "max_position_embeddings", None)
    if not old:
        log.warning("rope_scaling: the model config has no max_position_embeddings; not scaled")
        return
    if cutoff_len <= old:
        log.warning("rope_scaling: cutoff_len %d fits the model's %d positions; not scaled", cutoff_len, old)
        return
    factor = float(math.ceil(cutoff_len / old))
    params.update(rope_type=kind, factor=factor)
    if kind in ("dynamic", "yarn", "llama3"):
        params["original_max_position_embeddings"] = old
    if kind == "llama3":
        params.update(low_freq_factor=1.0, high_freq_factor=4.0)
    config.rope_parameters = params  # transformers 5.x: rope_scaling is read from rope_parameters
    config.max_position_embeddings = int(old * factor)
    log.warning("rope_scaling: %s, factor %.0f: %d -> %d positions", kind, factor, old, int(old * factor))


# config attribute for the router loss coefficient, by family (as LLaMA-Factory's model_utils/moe.py).
_MOE_COEF_ATTRS = ("router_aux_loss_coef", "aux_loss_alpha", "aux_loss_coef")


def apply_moe_aux_loss(config: Any, coef: float) -> None:
    """Turn the router auxiliary loss on with this coefficient; a dense model gets a warning only."""
    text = getattr(config, "text_config", None)
    for target in (config, text):
        if target is None:
            continue
        attr = next((a for a in _MOE_COEF_ATTRS if hasattr(target, a)), None)
        if attr:
            setattr(target, attr, coef)
            if hasattr(target, "output_router_logits"):
                target.output_router_logits = bool(coef)
            return
    log.warning("moe_aux_loss_coef: %s has no router loss (not a MoE model); ignored", config.model_type)


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


def _adapter_targets(model: nn.Module, cfg: TrainConfig, names: str) -> list[str]:
    """`all` = every linear layer but the heads; with use_llama_pro only modules of the expanded blocks.
    A vision-language model: LLaMA-Factory's choice, outside the frozen vision tower (runtime.mm.model)."""
    targets = [t.strip() for t in names.split(",") if t.strip()]
    parts = vision_parts(model)
    if parts is not None:
        from runtime.mm.model import adapter_targets

        return adapter_targets(model, parts, cfg, targets)
    targets = linear_module_names(model) if targets == ["all"] else targets
    if not cfg.use_llama_pro:
        return targets
    layers = decoder_layers(model)
    chosen = {id(layers[i]) for i in expanded_layer_ids(len(layers), cfg.freeze_trainable_layers)}
    full_names = []
    for layer in (m for m in layers if id(m) in chosen):
        prefix = next(n for n, m in model.named_modules() if m is layer)
        full_names += [
            f"{prefix}.{n}" for n, m in layer.named_modules() if n and n.rsplit(".", 1)[-1] in targets
        ]
    return full_names


def apply_lora(model: nn.Module, cfg: TrainConfig, *, stage: str) -> nn.Module:
    """Wrap in a PEFT LoRA (DoRA, rsLoRA, PiSSA init) or OFT model, or continue `adapter_name_or_path`."""
    from peft import LoraConfig, OFTConfig, PeftModel, TaskType, get_peft_model

    if cfg.adapter_name_or_path:
        return PeftModel.from_pretrained(model, cfg.adapter_name_or_path, is_trainable=True)
    extra = [m.strip() for m in (cfg.additional_target or "").split(",") if m.strip()]
    if cfg.resize_vocab and not extra:
        extra = embedding_module_names(model)  # new token rows must learn (LLaMA-Factory does the same)
    common = dict(
        task_type=TaskType.SEQ_CLS if stage == "rm" else TaskType.CAUSAL_LM,
        modules_to_save=extra or None,  # SEQ_CLS adds the score head itself
    )
    if cfg.finetuning_type == "oft":
        config: Any = OFTConfig(
            r=cfg.oft_rank,
            oft_block_size=cfg.oft_block_size,
            module_dropout=cfg.module_dropout,
            target_modules=_adapter_targets(model, cfg, cfg.oft_target),
            **common,
        )
    else:
        pissa = f"pissa_niter_{cfg.pissa_iter}" if cfg.pissa_iter != -1 else "pissa"
        config = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=_adapter_targets(model, cfg, cfg.lora_target),
            use_rslora=cfg.use_rslora,
            use_dora=cfg.use_dora,
            init_lora_weights=pissa if cfg.pissa_init else True,
            **common,
        )
    from transformers import set_seed

    set_seed(cfg.seed)  # adapter init must not depend on how much RNG the (ZeRO-3/FSDP) load consumed
    try:
        model = get_peft_model(model, config)
    except ValueError as exc:  # e.g. an OFT block size that divides no layer's width
        key = "oft_block_size" if cfg.finetuning_type == "oft" else "lora_target"
        raise ConfigError(key, str(exc).splitlines()[0]) from exc
    if not cfg.pure_bf16:
        upcast_trainable(model)  # trainable adapter weights in fp32 even over a bf16 base
    return model


def upcast_trainable(model: nn.Module) -> None:
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()


def embedding_module_names(model: nn.Module) -> list[str]:
    """Leaf names of the input and output embeddings (embed_tokens, lm_head for Llama)."""
    wanted = {id(model.get_input_embeddings()), id(model.get_output_embeddings())}
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if id(m) in wanted})


def expanded_layer_ids(num_layers: int, num_expanded: int) -> range:
    """LLaMA-Pro: block i*stride + stride-1 of each group is the added one (stride = layers / expanded)."""
    if num_layers % num_expanded:
        raise ConfigError(
            "freeze_trainable_layers",
            f"use_llama_pro: the model's {num_layers} layers are not {num_expanded} equal groups; "
            "give the number of expanded blocks",
        )
    stride = num_layers // num_expanded
    return range(stride - 1, num_layers, stride)


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
    if cfg.use_llama_pro:
        chosen = expanded_layer_ids(len(layers), n)
    else:
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
    if not cfg.pure_bf16:
        upcast_trainable(model)
    return model


def enable_gradient_checkpointing(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """Reentrant unless use_reentrant_gc is false (LLaMA-Factory's default); the TrainingArguments key
    gradient_checkpointing_kwargs, when given, is passed as is. Reentrant checkpointing only produces
    gradients when its input requires them, so with a frozen embedding (LoRA/freeze) the inputs do."""
    kwargs = dict(cfg.training_args.get("gradient_checkpointing_kwargs") or {})
    kwargs.setdefault("use_reentrant", cfg.use_reentrant_gc)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if kwargs["use_reentrant"]:
        model.enable_input_require_grads()
    return model


def fit_embeddings(model: nn.Module, tokenizer: Any) -> nn.Module:
    """Fit the model to a tokenizer its chat template fixed: grow the embeddings for added tokens (stop
    words; LLaMA-Factory would need resize_vocab; new rows start at the mean of the old ones), and let
    generation stop at the template's EOS as well as the model's own."""
    weight = model.get_input_embeddings().weight
    rows = getattr(weight, "ds_shape", weight.shape)[0]  # ZeRO-3 leaves each rank an empty partition
    if len(tokenizer) > rows:
        log.warning("tokenizer has %d tokens, the model's embeddings %d rows: resizing", len(tokenizer), rows)
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    generation = getattr(model, "generation_config", None)
    if generation is not None and tokenizer.eos_token_id is not None:
        eos = generation.eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        if tokenizer.eos_token_id not in eos:
            generation.eos_token_id = [tokenizer.eos_token_id, *eos] if eos else tokenizer.eos_token_id
    return model


def apply_upcasts(model: nn.Module, cfg: TrainConfig) -> None:
    """upcast_layernorm: norm weights in fp32; upcast_lmhead_output: logits in fp32 (LLaMA-Factory's
    model_utils/checkpointing.py prepare_model_for_training)."""
    if cfg.upcast_layernorm:
        for name, param in model.named_parameters():
            if param.ndim == 1 and any(part in name for part in ("norm", "ln")):
                param.data = param.data.float()
        for name, module in model.named_modules():
            if any(p.dtype == torch.float32 and p.ndim == 1 for p in module.parameters(recurse=False)) and (
                "norm" in name.rsplit(".", 1)[-1] or "ln" in name.rsplit(".", 1)[-1]
            ):
                # fp32 weight, output back in the input's dtype: the next (half) linear needs it when no
                # autocast runs (LLaMA-Factory relies on autocast here)
                module.register_forward_hook(lambda _m, args, output: output.to(args[0].dtype))
    if cfg.upcast_lmhead_output:
        head = model.get_output_embeddings()
        if isinstance(head, nn.Linear) and head.weight.dtype != torch.float32:
            head.register_forward_hook(lambda _module, _args, output: output.float())


def resize_embeddings(model: nn.Module, tokenizer: Any) -> None:
    """Grow the embeddings to the tokenizer (padded to a multiple of 64 as LLaMA-Factory does); new rows
    start at the mean of the old ones (transformers' mean_resizing)."""
    current = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > current:
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)


def build_model(cfg: TrainConfig, *, stage: str, device: str, tokenizer: Any) -> nn.Module:
    """load → fit/resize embeddings → (packing check) → upcasts/kernels → freeze | lora | oft → gradient
    checkpointing; the steps every stage shares."""
    model = load_model(cfg, stage=stage, device=device)
    if getattr(model, "is_quantized", False):  # quantization_bit, or a checkpoint quantised beforehand
        model = prepare_quantised(model)
        say(f"quantization: {describe_quantization(model, cfg)}")
    if cfg.resize_vocab:
        resize_embeddings(model, tokenizer)  # LLaMA-Factory's padded resize first; fit_embeddings then only
    model = fit_embeddings(model, tokenizer)  # grows rows a template's added tokens still lack
    if (cfg.padding_free or cfg.neat_packing) and stage in ("pt", "sft"):
        check_packing_support(model)  # packed examples must never attend to each other
    if stage == "rm":
        set_pad_token(model, tokenizer)
    apply_upcasts(model, cfg)
    if cfg.fused_rms_norm:
        from runtime.levers.fused_rms_norm import apply_fused_rms_norm

        log.info("fused_rms_norm: %d RMSNorm modules on torch's fused kernel", apply_fused_rms_norm(model))
    if cfg.use_v1_kernels and device == "npu":
        from runtime.levers.use_v1_kernels import apply_npu_kernels

        apply_npu_kernels(model, cfg.npu_kernels or None)  # perf's choice; None (set in code): all three
    parts = vision_parts(model)
    if parts is not None and cfg.finetuning_type == "full":
        from runtime.mm.model import apply_frozen_parts

        model = apply_frozen_parts(model, parts, cfg)
    if cfg.finetuning_type == "freeze" and parts is not None:
        from runtime.mm.model import apply_vl_freeze

        model = apply_vl_freeze(model, parts, cfg)
        if not cfg.pure_bf16:
            upcast_trainable(model)
    elif cfg.finetuning_type == "freeze":
        model = apply_freeze(model, cfg, stage=stage)
    elif cfg.finetuning_type in ("lora", "oft"):
        model = apply_lora(model, cfg, stage=stage)
        if cfg.fused_lora and cfg.finetuning_type == "lora":
            from runtime.levers.fused_lora import apply_lora_addmm

            log.info("fused_lora: %d LoRA layers fused with their base layer", apply_lora_addmm(model))
    if cfg.gradient_checkpointing:
        model = enable_gradient_checkpointing(model, cfg)
    return model
