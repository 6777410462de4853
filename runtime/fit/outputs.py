"""What a finished run leaves in output_dir besides the weights: results JSON and loss plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from runtime.contract.secrets import redact


def peak_memory_gib(device: str) -> float:
    """Max memory allocated on this rank's accelerator (0 on CPU, where torch does not track it)."""
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    if device == "npu" and hasattr(torch, "npu"):
        return torch.npu.max_memory_allocated() / 2**30
    return 0.0


def write_json(path: Path, data: dict[str, Any]) -> None:
    """One JSON file in output_dir; a credential value from the environment is written as ***."""
    path.write_text(redact(json.dumps(data, indent=2, sort_keys=True)) + "\n")


def train_results(
    metrics: dict[str, Any],
    state: Any,
    *,
    world_size: int,
    hosts: list[str],
    strategy: str,
    device: str,
    tokens_before: int,
) -> dict[str, Any]:
    """train_results.json: Trainer's metrics plus what a cluster user wants to compare runs by."""
    runtime = float(metrics.get("train_runtime", 0.0)) or 1e-9
    tokens = int(state.num_input_tokens_seen)
    return {
        **{k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        "global_step": int(state.global_step),
        "world_size": world_size,
        "hosts": sorted(set(hosts)),
        "strategy": strategy,
        "device": device,
        "effective_tokens": tokens,
        # tokens of this session only: a resumed run did not see the earlier ones in this runtime
        "effective_tokens_per_second": (tokens - tokens_before) / runtime,
        "peak_memory_gib": round(peak_memory_gib(device), 3),
    }


def plot_loss(log_history: list[dict[str, Any]], output_dir: Path) -> Path | None:
    """training_loss.png (train loss by step, eval loss as points); None when nothing was logged."""
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e and "step" in e]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    path = output_dir / "training_loss.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _tensor_count(path: Path) -> int:
    """Tensors in a safetensors file (its JSON header), or in a torch .bin; 0 when unreadable."""
    try:
        if path.suffix == ".safetensors":
            with path.open("rb") as f:
                size = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(size))
            return len([k for k in header if k != "__metadata__"])
        return len(torch.load(path, map_location="cpu", weights_only=True))
    except (OSError, ValueError, RuntimeError):
        return 0


def missing_weights(out: Path, kind: str) -> str | None:
    """Why `out` does not hold a loadable model (kind "model") or adapter ("adapter"); None if it does."""
    if kind == "adapter":
        need, stems = "adapter_config.json", ("adapter_model",)
    else:
        need, stems = "config.json", ("model", "pytorch_model")
    if not (out / need).is_file():
        return f"no {need}"
    for stem in stems:
        for ext in ("safetensors", "bin"):
            index = out / f"{stem}.{ext}.index.json"
            if index.is_file():
                files = set(json.loads(index.read_text()).get("weight_map", {}).values())
                if files and all(_tensor_count(out / f) for f in files):
                    return None
            single = out / f"{stem}.{ext}"
            if single.is_file() and _tensor_count(single):
                return None
    return "no weights (no weight file holds any tensor)"


# --- operable: what ran, on disk ---
RESOLVED_CONFIG = "xgen_config_resolved.yaml"


def redact_keys(value: Any, key: str = "") -> Any:
    """The value with every credential-looking key's value replaced by ***, nested mappings included (an HF
    token in a config must not end up in a file next to the model). Names judged by runtime.contract.secrets'
    rule."""
    from runtime.contract.secrets import is_credential_name

    if key and is_credential_name(key) and value not in (None, "", False):
        return "***"
    if isinstance(value, dict):
        return {k: redact_keys(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_keys(v) for v in value]
    return value


def resolved_config(cfg: Any) -> dict[str, Any]:
    """Every training key after defaults, LLaMA-Factory renames and device/perf adjustments, in schema
    order, plus the DeepSpeed JSON a named ZeRO stage stands for; credential-looking values redacted."""
    import dataclasses

    keys = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if not f.metadata.get("internal")}
    if getattr(cfg, "padding_free", False) and not cfg.packing and "packing" not in cfg.explicit:
        # perf's padding-free rows are not LLaMA-Factory's `packing`: a `packing: false` here would switch
        # them off when this file is trained again, so the key is left for perf auto to choose again.
        keys.pop("packing")
    if cfg.deepspeed_config is not None:
        keys["deepspeed_config_resolved"] = cfg.deepspeed_config
    return redact_keys(keys)


def write_resolved_config(cfg: Any, output_dir: str | Path) -> Path:
    """output_dir/xgen_config_resolved.yaml (mode 0600), written whole (temp file + replace)."""
    import yaml

    from runtime.contract.files import write_atomic
    from runtime.contract.secrets import redact as secret_values_redacted

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = "# Every training key as this run resolved it (xgen-runtime); credential values are ***.\n"
    # and any credential value from the environment that a key holds verbatim (runtime.contract.secrets)
    text += secret_values_redacted(yaml.safe_dump(resolved_config(cfg), sort_keys=False, allow_unicode=True))
    return write_atomic(out / RESOLVED_CONFIG, text, 0o600)
