"""`xgen-runtime export CFG`: a standalone model in export_dir.

With adapter_name_or_path: the LoRA adapter merged into its base (a QLoRA adapter into the unquantised
base, as LLaMA-Factory merges it). Without: the model re-saved (as
LLaMA-Factory does, to change shard size or format). Keys as LLaMA-Factory: model_name_or_path,
adapter_name_or_path, export_dir, export_size (GB per shard), export_device (cpu|auto),
export_legacy_format (pytorch_model*.bin instead of safetensors). The weights keep the base
model's dtype (a bf16 base gives a bf16 export). The result loads with AutoModelForCausalLM and vLLM;
a Qwen-VL model with AutoModelForImageTextToText, its image processor and chat template beside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runtime.config import ConfigError, TrainConfig
from runtime.contract.say import note, say


def export(cfg: TrainConfig) -> Path:
    if not cfg.export_dir:
        raise ConfigError("export_dir", "required for export (where the model goes)")
    adapter = cfg.adapter_name_or_path
    if adapter and not (Path(adapter) / "adapter_config.json").is_file():
        raise ConfigError("adapter_name_or_path", f"{adapter} has no adapter_config.json")
    if not adapter and not (Path(cfg.model_name_or_path) / "config.json").is_file():
        raise ConfigError(
            "model_name_or_path", f"{cfg.model_name_or_path} has no config.json (a model directory)"
        )
    _check_quantised_base(cfg)
    for message in cfg.notes:
        note(message)
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

    from runtime.mm.families import vision_model_type
    from runtime.model import fit_embeddings

    # The adapter dir holds the tokenizer the run trained with (pad token, template, added tokens).
    tokenizer_dir = adapter if adapter and (Path(adapter) / "tokenizer_config.json").is_file() else None
    tokenizer = AutoTokenizer.from_pretrained(
        tokenizer_dir or cfg.model_name_or_path, trust_remote_code=cfg.trust_remote_code
    )
    device = _export_device(cfg.export_device)
    # dtype "auto": the checkpoint's own dtype, so a bf16 base is merged and saved in bf16.
    vision = vision_model_type(cfg.model_name_or_path)  # Qwen-VL: the whole model, vision tower included
    auto = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    model = auto.from_pretrained(
        cfg.model_name_or_path, dtype="auto", trust_remote_code=cfg.trust_remote_code, device_map=device
    )
    model = fit_embeddings(model, tokenizer)  # training grew them when its template added tokens
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.config.use_cache = True
    out = Path(cfg.export_dir)
    model.save_pretrained(out, max_shard_size=f"{cfg.export_size}GB")
    if cfg.export_legacy_format:
        _to_legacy_format(model, out, cfg.export_size)
    tokenizer.save_pretrained(out)
    if vision:
        _save_processor_parts(cfg, tokenizer_dir, out)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    say(f"export: {'merged ' + adapter if adapter else 're-saved'} on {device}, dtype {dtype}")
    return out


def _save_processor_parts(cfg: TrainConfig, trained_dir: str | None, out: Path) -> None:
    """The image processor and chat template beside the merged weights (from the training output when
    it has them, else the base), so AutoProcessor reloads the export where torchvision is installed."""
    import shutil

    from runtime.mm.stage import load_image_processor

    source = next(
        (
            Path(d)
            for d in (trained_dir, cfg.model_name_or_path)
            if d and (Path(d) / "preprocessor_config.json").is_file()
        ),
        None,
    )
    if source is None:
        raise ConfigError("model_name_or_path", f"{cfg.model_name_or_path} has no preprocessor_config.json")
    load_image_processor(str(source)).save_pretrained(out)
    for name in (
        "chat_template.jinja",
        "chat_template.json",
        "processor_config.json",
        "video_preprocessor_config.json",
    ):
        if (source / name).is_file() and not (out / name).is_file():
            shutil.copyfile(source / name, out / name)


def _check_quantised_base(cfg: TrainConfig) -> None:
    """A QLoRA adapter is merged into the unquantised base, as LLaMA-Factory's merge_lora examples do
    (they drop quantization_bit; it refuses to merge into a quantised model). The export job reuses the
    training config, so quantization_bit is noted here, not refused: the base always loads unquantised."""
    from runtime.config.quantization import pre_quantised_method

    method = pre_quantised_method(cfg.model_name_or_path)
    if method is not None and cfg.adapter_name_or_path:
        raise ConfigError(
            "model_name_or_path",
            f"the base is a {method}-quantised checkpoint: an adapter cannot be merged into it; "
            "give the unquantised model it was quantised from",
        )
    if cfg.quantization_bit is not None:
        cfg.notes.append(
            f"quantization_bit {cfg.quantization_bit} is not applied on export: the adapter is merged into "
            "the unquantised base"
        )


def _export_device(choice: str) -> str:
    """export_device auto: the accelerator when there is one (LLaMA-Factory's `auto`), else cpu."""
    if choice != "auto":
        return "cpu"
    import torch

    from runtime.distributed import is_npu_available

    if torch.cuda.is_available():
        return "cuda"
    if is_npu_available():
        return "npu"
    note("export_device auto: no accelerator here; exporting on cpu")
    return "cpu"


def _to_legacy_format(model: Any, out: Path, size_gb: int) -> None:
    """pytorch_model*.bin shards instead of safetensors: transformers 5 saves safetensors only, so the
    state dict is written with torch.save, sharded by huggingface_hub's own splitter."""
    import torch
    from huggingface_hub import split_torch_state_dict_into_shards

    for old in [*out.glob("model*.safetensors"), out / "model.safetensors.index.json"]:
        old.unlink(missing_ok=True)
    state: dict[str, Any] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():  # tied weights once; from_pretrained re-ties them
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        state[name] = tensor.detach().cpu().contiguous()
    split = split_torch_state_dict_into_shards(
        state, filename_pattern="pytorch_model{suffix}.bin", max_shard_size=f"{size_gb}GB"
    )
    for filename, names in split.filename_to_tensors.items():
        torch.save({n: state[n] for n in names}, out / filename)
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (out / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))
