"""The `train:` schema: every key with its type, default and one-line doc (docs/runtime.md is built
from it), the choice lists, and the one error type the parser raises. Torch-free."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """One bad key: rendered as `<key>: <message>` (the CLI prefixes `xgen-runtime: error: `)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message

    @property
    def errors(self) -> list[ConfigError]:
        """The one-key problems this error stands for (one here; several in ConfigErrors)."""
        return [self]

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Raised inside datasets.map worker processes too: it must survive pickling back to the parent.
        return (ConfigError, (self.key, self.message))


class ConfigErrors(ConfigError):
    """Several bad keys at once: str() is one `<key>: <message>` line per key; `.errors` the list.

    Every rule raises a plain ConfigError; parse_train_config collects the per-key ones (unknown,
    refused and mistyped keys) into this so a config with five problems needs one round of fixes."""

    def __init__(self, errors: list[ConfigError]) -> None:
        flat = [e for err in errors for e in err.errors]
        super().__init__(flat[0].key, flat[0].message)
        self.args = ("\n".join(f"{e.key}: {e.message}" for e in flat),)
        self._errors = flat

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (ConfigErrors, (self._errors,))

    @property
    def errors(self) -> list[ConfigError]:
        return list(self._errors)


STAGES = ("pt", "sft", "rm", "dpo", "kto")
FINETUNING_TYPES = ("full", "freeze", "lora", "oft")
GALORE_PROJ_TYPES = ("std", "reverse_std", "right", "left", "full")
APOLLO_PROJ = ("svd", "random")
APOLLO_PROJ_TYPES = ("std", "right", "left")
APOLLO_SCALE_TYPES = ("channel", "tensor")
BADAM_MODES = ("layer", "ratio")
BADAM_SWITCH_MODES = ("ascending", "descending", "random", "fixed")
BADAM_MASK_MODES = ("adjacent", "scatter")
FLASH_ATTN = ("auto", "sdpa", "fa2", "eager", "flex", "sdpa_varlen")
PERF_MODES = ("auto", "off")
PREF_LOSSES = ("sigmoid", "hinge", "ipo", "kto_pair", "orpo", "simpo")
# Preference losses with no reference model (LLaMA-Factory: use_ref_model is false for these).
REFERENCE_FREE_LOSSES = ("orpo", "simpo")
STRATEGIES = ("no", "steps", "epoch")
LR_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
)
# Optimizers transformers 5.x knows; bitsandbytes/galore ones also need their packages.
OPTIMIZERS = (
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_torch_npu_fused",
    "adafactor",
    "adamw_anyprecision",
    "adamw_torch_4bit",
    "adamw_torch_8bit",
    "ademamix",
    "sgd",
    "adagrad",
    "adamw_bnb_8bit",
    "adamw_8bit",
    "paged_adamw_32bit",
    "paged_adamw_8bit",
    "lion_8bit",
    "lion_32bit",
    "rmsprop",
    "galore_adamw",
    "galore_adamw_8bit",
    "galore_adafactor",
    "lomo",
    "adalomo",
    "grokadamw",
    "schedule_free_adamw",
    "schedule_free_sgd",
    "apollo_adamw",
    "stable_adamw",
)
# LLaMA-Factory's tool formats that runtime/data/tools.py writes; its others are refused.
TOOL_FORMATS = ("default", "qwen", "glm4", "llama3")
MIX = ("concat", "interleave_under", "interleave_over")
UNSUPPORTED_STAGES = {"ppo": "PPO"}
ROPE_SCALINGS = ("linear", "dynamic", "yarn", "llama3")
QUANTIZATION_TYPES = ("nf4", "fp4")


def _f(default: Any, doc: str, *, choices: tuple[str, ...] | None = None) -> Any:
    """A config field: default, one-line doc (shown by docs/runtime.md), optional choices."""
    meta = {"doc": doc, "choices": choices}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Every `train:` key. Names, meanings and defaults follow LLaMA-Factory / HF TrainingArguments."""

    # --- model ---
    model_name_or_path: str = _f("", "Hugging Face model directory (or hub id, offline cache only).")
    adapter_name_or_path: str | None = _f(
        None, "LoRA adapter to continue training from, or to merge on export."
    )
    cache_dir: str | None = _f(None, "Cache folder for datasets (and hub files); default: the HF cache.")
    trust_remote_code: bool = _f(False, "Allow model/tokenizer code shipped with the checkpoint.")
    flash_attn: str = _f(
        "auto",
        "Attention: auto|sdpa|fa2|eager|flex|sdpa_varlen (sdpa per packed example; disabled = eager); "
        "missing ones fall back.",
        choices=FLASH_ATTN,
    )
    perf: str = _f(
        "auto",
        "auto: keys you did not set get the device's throughput defaults (runtime/perf/plan.py); off: none.",
        choices=PERF_MODES,
    )
    # --- method ---
    stage: str = _f(
        "sft", "pt (raw text) | sft | rm (reward model) | dpo | kto (unpaired preference).", choices=STAGES
    )
    finetuning_type: str = _f(
        "lora",
        "full | freeze (last layers/named modules) | lora | oft (orthogonal fine-tuning, peft).",
        choices=FINETUNING_TYPES,
    )
    do_train: bool = _f(True, "Train (false with do_eval: evaluate only).")
    do_eval: bool | None = _f(None, "Evaluate at the end; default: when there is eval data.")
    # --- prediction: rules in runtime/config/prediction.py, generation in runtime/fit/predict.py ---
    do_predict: bool = _f(
        False,
        "sft: generate a reply to every row of the predict set (eval_dataset; else val_size's held-out rows; "
        "else, not training, dataset) into generated_predictions.jsonl, scored in predict_results.json.",
    )
    predict_with_generate: bool = _f(
        False, "Needed with do_predict (LLaMA-Factory's switch): predictions are generated text."
    )
    max_new_tokens: int = _f(1024, "Generation: most new tokens per reply (<= 0: max_length caps instead).")
    max_length: int = _f(1024, "Generation: most tokens of prompt + reply, read when max_new_tokens <= 0.")
    do_sample: bool = _f(True, "Generation: sample (LLaMA-Factory's default); false: greedy or beam search.")
    temperature: float = _f(0.95, "Generation: sampling temperature.")
    top_p: float = _f(0.7, "Generation: nucleus sampling, keep the most likely tokens up to this mass.")
    top_k: int = _f(50, "Generation: sample among the k most likely tokens.")
    num_beams: int = _f(1, "Generation: beams of beam search (1: none).")
    repetition_penalty: float = _f(1.0, "Generation: penalty on tokens already present (1.0: none).")
    length_penalty: float = _f(1.0, "Generation: beam search length exponent.")
    skip_special_tokens: bool = _f(
        True, "Predictions and labels decoded without special tokens (jsonl; scores always skip them)."
    )
    lora_rank: int = _f(8, "LoRA rank r.")
    lora_alpha: int | None = _f(None, "LoRA alpha; default 2 * lora_rank.")
    lora_dropout: float = _f(0.0, "LoRA dropout.")
    lora_target: str = _f("all", "Comma list of module names, or `all` = every linear layer but the head.")
    additional_target: str | None = _f(
        None, "Comma list of extra modules trained in full and saved (LoRA, OFT)."
    )
    use_rslora: bool = _f(False, "Rank-stabilised LoRA scaling.")
    use_dora: bool = _f(False, "Weight-decomposed LoRA (DoRA).")
    # --- quantised LoRA (QLoRA): rules in runtime/config/quantization.py, loading in runtime/model.py ---
    quantization_bit: int | None = _f(
        None,
        "QLoRA: load the base quantised on the fly to 4 or 8 bits (bitsandbytes) and train LoRA/OFT over it; "
        "null: no quantisation.",
    )
    quantization_method: str = _f(
        "bnb",
        "On-the-fly quantisation: bnb (bitsandbytes; `bitsandbytes` is read as bnb), hqq or eetq "
        "(their packages needed).",
    )
    quantization_type: str = _f("nf4", "bnb 4-bit data type: nf4 | fp4.", choices=QUANTIZATION_TYPES)
    double_quantization: bool = _f(True, "bnb 4-bit: quantise the quantisation constants too.")
    # --- adapters (LoRA variants, OFT, LLaMA-Pro; runtime/model.py) ---
    loraplus_lr_ratio: float | None = _f(
        None, "LoRA+: learning rate of the B matrices = ratio * learning_rate."
    )
    loraplus_lr_embedding: float = _f(1e-6, "LoRA+: learning rate of LoRA embedding B matrices.")
    pissa_init: bool = _f(False, "LoRA: PiSSA init (principal singular vectors; base keeps the residual).")
    pissa_iter: int = _f(16, "PiSSA: fast-SVD iterations; -1 = exact SVD.")
    pissa_convert: bool = _f(
        False, "PiSSA: also save output_dir/pissa_converted, a plain LoRA adapter for the original base."
    )
    use_llama_pro: bool = _f(
        False,
        "LLaMA-Pro: a block-expanded model trains only its expanded blocks "
        "(freeze_trainable_layers = number of expanded blocks; freeze or lora).",
    )
    oft_rank: int = _f(0, "OFT: number of blocks per layer (0: derived from oft_block_size).")
    oft_block_size: int = _f(32, "OFT: block size (0: derived from oft_rank); one of the two must be 0.")
    oft_target: str = _f(
        "all", "OFT: comma list of module names, or `all` = every linear layer but the head."
    )
    module_dropout: float = _f(0.0, "OFT: multiplicative dropout on the OFT blocks.")
    freeze_vision_tower: bool = _f(True, "Vision-language models: the vision tower stays frozen.")
    freeze_multi_modal_projector: bool = _f(
        True, "Vision-language models: the projector (Qwen's visual.merger) stays frozen."
    )
    freeze_language_model: bool = _f(False, "Vision-language models: the language model stays frozen.")
    freeze_trainable_layers: int = _f(2, "Freeze: train the last N layers (negative: the first N).")
    freeze_trainable_modules: str = _f(
        "all", "Freeze: modules inside those layers to train (`all`, or names)."
    )
    freeze_extra_modules: str | None = _f(
        None, "Freeze: extra modules outside the layers to train (embed_tokens…)."
    )
    pref_beta: float = _f(0.1, "DPO/KTO beta (strength of the KL anchor to the reference).")
    pref_loss: str = _f(
        "sigmoid",
        "DPO loss: sigmoid | hinge | ipo | kto_pair | orpo | simpo (orpo, simpo: no reference model).",
        choices=PREF_LOSSES,
    )
    pref_ftx: float = _f(0.0, "DPO/KTO: weight of an added SFT loss on the chosen response.")
    ref_model: str | None = _f(
        None, "DPO/KTO/ASFT: separate reference model dir (default: the initial policy)."
    )
    # --- losses: KTO, preference-loss and SFT-loss variants (LLaMA-Factory names and defaults) ---
    kto_chosen_weight: float = _f(1.0, "KTO: weight of the desirable (label true) examples' losses.")
    kto_rejected_weight: float = _f(1.0, "KTO: weight of the undesirable (label false) examples' losses.")
    simpo_gamma: float = _f(0.5, "SimPO: target reward margin gamma.")
    dpo_label_smoothing: float = _f(
        0.0, "DPO sigmoid: label smoothing in [0, 0.5) (conservative DPO); sigmoid loss only."
    )
    use_dft_loss: bool = _f(
        False, "SFT: DFT loss, token cross-entropy weighted by its own (detached) probability."
    )
    use_asft_loss: bool = _f(False, "SFT: ASFT loss, DFT plus asft_alpha * KL to the reference model.")
    asft_alpha: float = _f(0.1, "ASFT: weight of the KL(reference || policy) term.")
    use_eaft_loss: bool = _f(
        False, "SFT: EAFT loss, cross-entropy weighted by (top-20 entropy / 3) ** eaft_alpha."
    )
    eaft_alpha: float = _f(1.0, "EAFT: exponent of the entropy weight.")
    # --- data (read by runtime.data) ---
    dataset: str | None = _f(None, "Comma list of dataset names (dataset_info.json) or file paths.")
    eval_dataset: str | None = _f(None, "Comma list of eval datasets (instead of val_size).")
    dataset_dir: str = _f("data", "Folder holding dataset_info.json and the data files.")
    template: str | None = _f(
        None,
        "Chat template: any LLaMA-Factory 0.9.5 name (qwen3, llama3, ...); default: the tokenizer's own.",
    )
    # --- images (vision-language models: Qwen2-VL, Qwen2.5-VL, Qwen3-VL; read by runtime.mm) ---
    media_dir: str | None = _f(None, "Folder the `images` paths are relative to (default: dataset_dir).")
    image_max_pixels: int = _f(768 * 768, "Images larger than this area are shrunk to it (aspect kept).")
    image_min_pixels: int = _f(32 * 32, "Images smaller than this area are grown to it (aspect kept).")
    video_max_pixels: int = _f(256 * 256, "Accepted for LLaMA-Factory's configs; video rows are refused.")
    video_min_pixels: int = _f(16 * 16, "Accepted for LLaMA-Factory's configs; video rows are refused.")
    video_fps: float = _f(2.0, "Accepted for LLaMA-Factory's configs; video rows are refused.")
    video_maxlen: int = _f(128, "Accepted for LLaMA-Factory's configs; video rows are refused.")
    # --- chat template options (LLaMA-Factory's names; read by runtime.data.templates) ---
    default_system: str | None = _f(
        None, "System prompt for conversations without one (replaces the template's)."
    )
    enable_thinking: bool | None = _f(
        True, "Reasoning templates: train replies' thoughts (false: drop them, empty thought in the prompt)."
    )
    preserve_thinking: bool = _f(False, "Reasoning templates, rm/dpo: keep thoughts of earlier replies.")
    cutoff_len: int = _f(2048, "Max tokens per example (pt: block size).")
    max_samples: int | None = _f(None, "Use at most this many examples per dataset.")
    val_size: float = _f(0.0, "Held-out fraction (<1) or count (>=1) of the train data for eval.")
    preprocessing_num_workers: int | None = _f(
        None, "Processes for tokenisation; capped at the CPUs available."
    )
    packing: bool | None = _f(
        None,
        "LLaMA-Factory packing: whole examples packed offline into rows of cutoff_len (the batch size then "
        "counts rows); null: on for pt, off otherwise.",
    )
    overwrite_cache: bool = _f(False, "Re-tokenise instead of reading the datasets cache.")
    # --- data keys of LLaMA-Factory (read by runtime.data) ---
    neat_packing: bool = _f(
        False, "sft: packing with the examples kept apart (positions restart, no cross-attention)."
    )
    train_on_prompt: bool = _f(False, "sft: labels on the prompt tokens too.")
    mask_history: bool = _f(False, "sft: only the last turn's response is a label.")
    tool_format: str | None = _f(
        None,
        "How tools and function calls are written (default|qwen|glm4|llama3); default: the template's.",
    )
    mix_strategy: str = _f(
        "concat", "How several datasets are mixed: concat|interleave_under|interleave_over.", choices=MIX
    )
    interleave_probs: str | list | None = _f(
        None, "Interleave: sampling probability per dataset (comma list), default equal."
    )
    streaming: bool = _f(False, "Read the datasets as a stream instead of tokenising them first (max_steps).")
    buffer_size: int = _f(16384, "Streaming: size of the shuffle buffer.")
    tokenized_path: str | None = _f(
        None,
        "Tokenised datasets saved here once (global rank 0) and loaded by every later run and rank.",
    )
    # --- training ---
    output_dir: str = _f(
        "saves/run", "Where checkpoints and the final model go; must be shared across nodes."
    )
    overwrite_output_dir: bool = _f(
        False, "Start fresh when output_dir holds another run's checkpoints (this run's own are continued)."
    )
    per_device_train_batch_size: int = _f(8, "Micro-batch per device.")
    per_device_eval_batch_size: int = _f(8, "Eval batch per device.")
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimizer step.")
    learning_rate: float = _f(5e-5, "Peak learning rate.")
    num_train_epochs: float = _f(3.0, "Epochs (ignored when max_steps > 0).")
    max_steps: int = _f(-1, "Optimizer steps; > 0 overrides num_train_epochs.")
    lr_scheduler_type: str = _f("linear", "LR schedule.", choices=LR_SCHEDULERS)
    warmup_steps: float = _f(0.0, "Warmup steps; a value below 1 is a ratio of the total (warmup_ratio).")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0 disables).")
    optim: str = _f(
        "adamw_torch",
        "Optimizer (transformers OptimizerNames); perf auto on CUDA/NPU: fused AdamW unless set.",
        choices=OPTIMIZERS,
    )
    adam_beta1: float = _f(0.9, "Adam beta1.")
    adam_beta2: float = _f(0.999, "Adam beta2.")
    adam_epsilon: float = _f(1e-8, "Adam epsilon.")
    # --- optimizers (LLaMA-Factory's custom ones; runtime/fit/optimizers.py) ---
    use_galore: bool = _f(
        False, "GaLore: low-rank projected Adam states (full/freeze; pip install 'xgen[galore]')."
    )
    galore_target: str = _f(
        "all", "GaLore: comma list of module name parts, or `all` linear layers but the head."
    )
    galore_rank: int = _f(16, "GaLore: projection rank.")
    galore_update_interval: int = _f(200, "GaLore: steps between projection updates.")
    galore_scale: float = _f(2.0, "GaLore: update scale.")
    galore_proj_type: str = _f("std", "GaLore: projection side.", choices=GALORE_PROJ_TYPES)
    galore_layerwise: bool = _f(
        False, "GaLore: step each parameter in backward (one process, no accumulation)."
    )
    use_apollo: bool = _f(False, "APOLLO: low-rank scaled AdamW (full/freeze; pip install 'xgen[apollo]').")
    apollo_target: str = _f(
        "all", "APOLLO: comma list of module name parts, or `all` linear layers but the head."
    )
    apollo_rank: int = _f(16, "APOLLO: projection rank.")
    apollo_update_interval: int = _f(200, "APOLLO: steps between projection updates.")
    apollo_scale: float = _f(32.0, "APOLLO: scaling coefficient.")
    apollo_proj: str = _f("random", "APOLLO: projection (svd | random).", choices=APOLLO_PROJ)
    apollo_proj_type: str = _f("std", "APOLLO: projection side.", choices=APOLLO_PROJ_TYPES)
    apollo_scale_type: str = _f(
        "channel", "APOLLO: scaling per channel or tensor.", choices=APOLLO_SCALE_TYPES
    )
    apollo_layerwise: bool = _f(
        False, "APOLLO: step each parameter in backward (one process, no accumulation)."
    )
    apollo_scale_front: bool = _f(False, "APOLLO: norm-growth limiter before gradient scaling.")
    use_badam: bool = _f(False, "BAdam: block-coordinate Adam (full/freeze; pip install 'xgen[badam]').")
    badam_mode: str = _f(
        "layer", "BAdam: update one layer block at a time, or a ratio of each weight.", choices=BADAM_MODES
    )
    badam_start_block: int | None = _f(None, "BAdam layer mode: first block to train.")
    badam_switch_mode: str = _f("ascending", "BAdam layer mode: order of blocks.", choices=BADAM_SWITCH_MODES)
    badam_switch_interval: int = _f(50, "BAdam layer mode: steps per block (-1: never switch).")
    badam_update_ratio: float = _f(0.05, "BAdam ratio mode: fraction of each weight updated.")
    badam_mask_mode: str = _f("adjacent", "BAdam ratio mode: mask layout.", choices=BADAM_MASK_MODES)
    badam_verbose: int = _f(0, "BAdam: 0 quiet, 1 block names, 2 trainable parameters.")
    use_adam_mini: bool = _f(False, "Adam-mini: one second moment per block (pip install 'xgen[adam-mini]').")
    use_muon: bool = _f(False, "Muon (torch.optim.Muon) for hidden 2-D weights, AdamW for the rest.")
    bf16: bool = _f(False, "bfloat16 mixed precision.")
    fp16: bool = _f(False, "float16 mixed precision (falls back to fp32 on CPU, with a warning).")
    gradient_checkpointing: bool = _f(False, "Recompute activations in backward to save memory.")
    enable_liger_kernel: bool = _f(
        False,
        "Liger kernels: fused linear+CE, RMSNorm, SwiGLU, RoPE (perf auto, CUDA: on if installed+unset).",
    )
    torch_compile: bool = _f(False, "torch.compile the model (off: compile time and recompiles unmeasured).")
    # --- model and training keys of LLaMA-Factory (runtime/model.py applies them) ---
    disable_gradient_checkpointing: bool | None = _f(
        None,
        "LLaMA-Factory's switch: true = checkpointing off, false = on; unset: gradient_checkpointing rules.",
    )
    use_reentrant_gc: bool = _f(
        True, "Reentrant activation checkpointing (LLaMA-Factory's default); FSDP: off."
    )
    pure_bf16: bool = _f(False, "Load and train the weights in bf16 (no fp32 copy of trainable weights).")
    upcast_layernorm: bool = _f(
        False, "Norm weights in fp32 over a half-precision model (outputs stay in the input dtype)."
    )
    upcast_lmhead_output: bool = _f(False, "Cast the lm_head output (logits) to fp32.")
    resize_vocab: bool = _f(
        False, "Resize the embeddings to the tokenizer (after add_tokens; LoRA trains them)."
    )
    add_tokens: str | None = _f(
        None, "Comma list of ordinary tokens to add to the tokenizer (resizes the vocab)."
    )
    add_special_tokens: str | None = _f(
        None, "Comma list of special tokens to add (new_special_tokens is read as this); resizes the vocab."
    )
    rope_scaling: str | None = _f(
        None, "linear|dynamic|yarn|llama3: stretch RoPE when cutoff_len exceeds the model's length."
    )
    moe_aux_loss_coef: float | None = _f(
        None, "MoE models: router auxiliary loss coefficient (adds the loss)."
    )
    fp8: bool = _f(False, "FP8 mixed precision through accelerate (CUDA with torchao/transformer_engine).")
    use_v1_kernels: bool | None = _f(
        False,
        "Ascend: torch_npu fused RMSNorm, SwiGLU, rotary kernels (perf auto, pt/sft: on); a note elsewhere.",
    )
    seed: int = _f(42, "Seed for init, data order and dropout; all ranks share it.")
    logging_steps: int = _f(10, "Log every N optimizer steps.")
    save_strategy: str = _f("steps", "When to checkpoint: no|steps|epoch.", choices=STRATEGIES)
    save_steps: int = _f(500, "Checkpoint every N steps.")
    save_total_limit: int | None = _f(None, "Keep only the newest N complete checkpoints.")
    save_only_model: bool = _f(False, "Checkpoints without optimizer state (cannot resume exactly).")
    eval_strategy: str = _f("no", "When to evaluate: no|steps|epoch.", choices=STRATEGIES)
    eval_steps: int | None = _f(None, "Evaluate every N steps (default: logging_steps).")
    resume_from_checkpoint: bool | str | None = _f(
        "auto", "auto|null: newest complete checkpoint if any; true: it must exist; false; or a path."
    )
    report_to: str | list = _f("none", "none | tensorboard | wandb | … (comma list or YAML list).")
    run_name: str | None = _f(None, "Run name for loggers.")
    plot_loss: bool = _f(True, "Write training_loss.png (and eval loss) in output_dir.")
    dataloader_num_workers: int = _f(0, "DataLoader worker processes per rank.")
    ddp_timeout: int = _f(
        7200, "Seconds a collective may wait (generous: rank 0 tokenises while others wait)."
    )
    use_cpu: bool = _f(False, "Force CPU even when an accelerator is present.")
    # --- distributed ---
    deepspeed: str | dict | None = _f(
        None, "Named ZeRO stage (z0…z3_offload), a DeepSpeed JSON path, or a dict."
    )
    fsdp: bool | str = _f(
        False, "FSDP2 full shard: true, or LLaMA-Factory strings like `full_shard auto_wrap`."
    )
    fsdp_config: dict | str | None = _f(None, "FSDP plugin options (dict or JSON path), e.g. cpu_offload.")
    # --- export ---
    export_dir: str | None = _f(None, "export: where the merged (or re-saved) standalone model goes.")
    export_size: int = _f(5, "export: max shard size in GB.")
    export_legacy_format: bool = _f(False, "export: true writes pytorch_model*.bin instead of safetensors.")
    # --- export keys (runtime/commands/export.py) ---
    export_device: str = _f(
        "cpu", "export: cpu, or auto (the accelerator, when there is one).", choices=("cpu", "auto")
    )
    # --- padding-free keys (runtime/perf/plan.py) ---
    micro_batch_tokens: int | None = _f(
        None,
        "pt/sft padding-free: each micro-batch takes whole examples up to this many tokens per device "
        "(replaces per_device_train_batch_size); null: off.",
    )
    label_logits_only: bool = _f(
        False,
        "sft: compute the lm_head only where a label is trained (same loss; perf auto: on unless set).",
    )
    fused_rms_norm: bool = _f(
        False,
        "torch's fused rms_norm kernel in place of the model's fp32 RMSNorm modules that it reproduces "
        "(opt-in: no effect measured above the CPU bench's noise).",
    )
    fused_lora: bool = _f(
        False,
        "LoRA: each LoRA layer as one autograd node (frozen base product and adapter update; same sums). "
        "Unset: on for plain LoRA pt/sft on CPU under perf auto (+16 % measured, bench/lever_ab.py).",
    )
    cpu_allocator_cache: bool = _f(
        False,
        "CPU: glibc malloc keeps freed blocks for the next step instead of unmapping them (no page faults "
        "on every step's large tensors; the process keeps its peak heap). Unset: on on CPU under perf auto.",
    )

    # Not keys: filled by parse_train_config.
    notes: list[str] = field(default_factory=list, metadata={"internal": True})
    # Keys the config wrote (after renames): runtime.perf.plan never overrides these.
    explicit: frozenset[str] = field(default_factory=frozenset, metadata={"internal": True})
    deepspeed_config: dict | None = field(default=None, metadata={"internal": True})
    # transformers.TrainingArguments keys that are not fields here (lr_scheduler_kwargs, neftune_noise_alpha,
    # …): passed to TrainingArguments as written; transformers validates them (runtime/config/refusals.py).
    training_args: dict[str, Any] = field(default_factory=dict, metadata={"internal": True})
    # The padding-free lever (PerfPlan.padding_free, written by runtime.perf.plan.apply_perf; the start line's
    # `padding_free=`): each micro-batch's examples flattened into rows without padding, kept apart. Not a
    # key, and not LLaMA-Factory's packing, which the `packing`/`neat_packing` keys mean.
    padding_free: bool = field(default=False, metadata={"internal": True})
    # --- npu kernels (runtime/perf/npu.py) ---
    # Which torch_npu fused kernels build_model patches in (rms_norm, swiglu, rotary); perf decides them.
    npu_kernels: tuple[str, ...] = field(default=(), metadata={"internal": True})

    @property
    def strategy(self) -> str:
        """ddp | fsdp | deepspeed-zN (single is decided at run time from the world size)."""
        if self.deepspeed_config is not None:
            stage = self.deepspeed_config.get("zero_optimization", {}).get("stage", 0)
            return f"deepspeed-z{stage}"
        return "fsdp" if self.fsdp else "ddp"


def train_fields() -> dict[str, dataclasses.Field]:
    """The user-facing keys of TrainConfig (internal fields excluded), by name."""
    return {f.name: f for f in dataclasses.fields(TrainConfig) if not f.metadata.get("internal")}
