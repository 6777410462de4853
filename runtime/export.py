"""`xgen-runtime export CFG`: merge a LoRA adapter into its base and save a standalone model.

Keys as LLaMA-Factory: model_name_or_path (base), adapter_name_or_path, export_dir,
export_size (GB per shard). The result loads with AutoModelForCausalLM and vLLM.
"""

from __future__ import annotations

from pathlib import Path

from runtime.config import ConfigError, TrainConfig


def export(cfg: TrainConfig) -> Path:
    if not cfg.export_dir:
        raise ConfigError("export_dir", "required for export (where the merged model goes)")
    if not cfg.adapter_name_or_path:
        raise ConfigError("adapter_name_or_path", "required for export (the LoRA adapter to merge)")
    if not (Path(cfg.adapter_name_or_path) / "adapter_config.json").is_file():
        raise ConfigError("adapter_name_or_path", f"{cfg.adapter_name_or_path} has no adapter_config.json")
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runtime.model import fit_embeddings

    # The adapter dir holds the tokenizer the run trained with (pad token, template).
    tokenizer_dir = cfg.adapter_name_or_path
    if not (Path(tokenizer_dir) / "tokenizer_config.json").is_file():
        tokenizer_dir = cfg.model_name_or_path
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=cfg.trust_remote_code)
    base = AutoModelForCausalLM.from_pretrained(
        cfg.model_name_or_path, dtype=torch.float32, trust_remote_code=cfg.trust_remote_code
    )
    base = fit_embeddings(base, tokenizer)  # training grew them when its template added tokens
    merged = PeftModel.from_pretrained(base, cfg.adapter_name_or_path).merge_and_unload()
    merged.config.use_cache = True
    out = Path(cfg.export_dir)
    merged.save_pretrained(out, max_shard_size=f"{cfg.export_size}GB")
    tokenizer.save_pretrained(out)
    return out
