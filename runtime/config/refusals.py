"""What happens to a key that is not a TrainConfig field: passed to transformers, noted, or refused.

In this order (`classify`):
1. a refused key (REFUSED: multimodal, Ray, hubs, GPTQ export, …) with a non-default value:
   an error with the reason; with LLaMA-Factory's default value (`export_quantization_bit: null`) a note;
2. a transformers.TrainingArguments field (hf_keys.py): passed through, transformers validates it;
   the few the runtime sets itself (RUNTIME_OWNED) are noted instead;
3. any other LLaMA-Factory key (lf_keys.py): its default value is noted, another value refused;
4. anything else: unknown, with a did-you-mean only when one key is really close.
"""

from __future__ import annotations

from typing import Any

from runtime.config.hf_keys import TRAINING_ARGUMENTS
from runtime.config.lf_keys import LF_KEYS
from runtime.config.suggest import suggest

_MULTIMODAL = "audio is not supported; images only, for Qwen2-VL/Qwen2.5-VL/Qwen3-VL (docs/runtime.md)"
_PAN_SCAN = "Gemma3's pan-and-scan / crop_to_patches: only the Qwen-VL image families are supported"
_RAY = "Ray is not supported; xgen launches with Slurm, torchrun, DeepSpeed or accelerate (see README)"
_HUB = "nothing is pushed to a hub (no network on the nodes); push the saved output_dir yourself"
_HUB_TOKEN = (
    "hub datasets read their token from the environment, not the config (which is copied into the run "
    "directory): give the job HF_TOKEN (cluster.pass_env or cluster.env), or log in with the "
    "ModelScope/OpenMind client"
)
_INFER = "inference engines are out of scope: xgen-runtime trains and exports (serve the export with vLLM)"
_METHOD = "a training method xgen-runtime does not implement"

REFUSED: dict[str, str] = {
    **dict.fromkeys(
        ("use_audio_in_video", "audio_sampling_rate"),
        _MULTIMODAL,
    ),
    **dict.fromkeys(("image_do_pan_and_scan", "crop_to_patches"), _PAN_SCAN),
    "quantization_device_map": "LLaMA-Factory's device map for quantised inference (it refuses it in "
    "training too); xgen-runtime trains and exports: drop it",
    "ref_model_quantization_bit": "a separately quantised reference model is not supported; drop it "
    "(with LoRA the reference is the policy's own base, quantised when quantization_bit is set)",
    "reward_model_quantization_bit": "PPO's reward model: PPO is not supported",
    **dict.fromkeys(
        (
            "export_quantization_bit",
            "export_quantization_dataset",
            "export_quantization_nsamples",
            "export_quantization_maxlen",
        ),
        "quantised (GPTQ) export is not supported; export in bf16/fp16 and quantise with a dedicated tool",
    ),
    **dict.fromkeys(("ray_num_workers", "ray_init_kwargs"), _RAY),
    **dict.fromkeys(
        ("master_addr", "master_port"),
        "set by the launcher; in an xgen config use cluster.master_addr / cluster.master_port",
    ),
    **dict.fromkeys(
        (
            "export_hub_model_id",
            "push_to_hub",
            "hub_token",
            "hub_private_repo",
            "hub_model_id",
            "hub_strategy",
            "hub_always_push",
            "hub_revision",
            "trackio_space_id",
            "trackio_bucket_id",
            "trackio_static_space_id",
        ),
        _HUB,
    ),
    **dict.fromkeys(("hf_hub_token", "ms_hub_token", "om_hub_token"), _HUB_TOKEN),
    **dict.fromkeys(
        ("infer_backend", "infer_dtype", "use_kv_cache", "vllm_maxlen", "vllm_gpu_util", "vllm_enforce_eager")
        + ("vllm_max_lora_rank", "vllm_config", "sglang_maxlen", "sglang_mem_fraction", "sglang_tp_size")
        + ("sglang_config", "sglang_lora_backend"),
        _INFER,
    ),
    **dict.fromkeys(
        ("use_kt", "kt_weight_path", "kt_expert_checkpoint_path", "kt_use_lora_experts", "kt_lora_expert_num")
        + ("kt_lora_expert_intermediate_size",),
        "KTransformers (CPU-offloaded MoE experts) is not supported",
    ),
    **dict.fromkeys(
        ("use_unsloth", "use_unsloth_gc"),
        "unsloth is not supported; enable_liger_kernel and gradient_checkpointing cover the same ground",
    ),
    "use_mca": "Megatron-Core (mcore_adapter) is not supported; use deepspeed or fsdp",
    "use_hyper_parallel": "hyper-parallel training is not supported; use deepspeed or fsdp",
    "hyper_parallel_args": "hyper-parallel training is not supported; use deepspeed or fsdp",
    "train_from_scratch": "xgen-runtime fine-tunes a pretrained model; random init is not supported",
    "mixture_of_depths": f"{_METHOD} (mixture-of-depths)",
    "shift_attn": f"{_METHOD} (LongLoRA shift short attention)",
    **{k: f"{_METHOD} (torch profiler)" for k in LF_KEYS if k.startswith(("profiler_", "profile_"))},
    "enable_torch_profiler": f"{_METHOD} (torch profiler)",
    **{k: "SwanLab is not supported; report_to: tensorboard or wandb" for k in LF_KEYS if "swanlab" in k},
    "adapter_folder": "give the adapter directory as adapter_name_or_path",
    "eval_on_each_dataset": "eval_dataset is evaluated as one set",
}

# TrainingArguments fields the runtime sets itself (its collators, progress bar and logging need them).
RUNTIME_OWNED: dict[str, str] = {
    "remove_unused_columns": "xgen-runtime's collators need every column; always false",
    "label_names": "always ['labels']",
    "log_level_replica": "ranks other than 0 log errors only",
    "local_rank": "read from the launcher's environment",
}

PASSTHROUGH = frozenset(TRAINING_ARGUMENTS) - set(REFUSED) - set(RUNTIME_OWNED)


def _is_default(key: str, value: Any) -> bool:
    """The value LLaMA-Factory defaults to (or null/false): the config asks for nothing."""
    if value is None or value is False:
        return True
    if key in LF_KEYS:
        default = LF_KEYS[key][1]
        return default != "<other>" and value == default and type(value) is type(default)
    return False


def classify(key: str, value: Any, known: list[str]) -> tuple[str, str]:
    """("pass", "") | ("note", why) | ("error", why) for a key that is not a TrainConfig field."""
    if key in REFUSED:
        if _is_default(key, value):
            return "note", f"accepted with no effect ({value!r} asks for nothing): {REFUSED[key]}"
        return "error", REFUSED[key]
    if key in RUNTIME_OWNED:
        return "note", f"accepted and ignored: {RUNTIME_OWNED[key]}"
    if key in PASSTHROUGH:
        return "pass", ""
    if key in LF_KEYS:
        owner = LF_KEYS[key][0]
        if _is_default(key, value):
            return "note", f"accepted with no effect: LLaMA-Factory's default ({owner}), not implemented here"
        return "error", f"a LLaMA-Factory key ({owner}) that xgen-runtime does not implement"
    return "error", "unknown key" + suggest(key, known)
