"""The GPU checks (docs/gpu-checks.md): the production paths the CPU suite cannot run
(trainer-cpu-findings.md §7).

Each test launches the runtime exactly as the generated scripts do,
`python -m torch.distributed.run --standalone --nproc_per_node 1 -m runtime train cfg.yaml`, on one CUDA
GPU with the runtime's CUDA defaults (`perf: auto`, bf16). One GPU means an NCCL world of one rank: NCCL
refuses two ranks on the same device, so "DDP over NCCL" here proves the backend, the process group and
the CUDA code paths, not gradient averaging (the CPU suite proves that with 2 gloo ranks).

Skipped without CUDA; the DeepSpeed checks also without an importable deepspeed. Run on the GPU machine
by scripts/gpu_checks.sh, which sets XGEN_GPU_FIGURES: every launch appends one JSON line of figures
(wall time, train_runtime, peak GPU memory, losses) to that file, before its assertions, so a failing
check still leaves its numbers. docs/gpu-checks.md says what each check proves.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from trainer_harness import base_config, run_torchrun, step_losses, weights, write_config

torch = pytest.importorskip("torch")
HAS_CUDA = torch.cuda.is_available()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (NCCL, stock FSDP2, pinned CPU offload)"),
]


def _deepspeed_imports() -> bool:
    """Import for real (a broken sdist build imports as nothing useful); only on a CUDA machine."""
    if not HAS_CUDA:
        return False
    try:
        importlib.import_module("deepspeed")
    except Exception:  # ImportError, or an op-builder error raised at import
        return False
    return True


needs_deepspeed = pytest.mark.skipif(
    not _deepspeed_imports(),
    reason="deepspeed is not importable (scripts/gpu_checks.sh installs its sdist)"
    if HAS_CUDA
    else "needs a CUDA GPU (DeepSpeed on cuda)",
)

STEPS = 8
# bf16 keeps 8 mantissa bits (relative rounding 2^-8 ≈ 0.4%); the same forward pass on restored
# weights agrees far closer, while a wrong step counter, optimizer state or data order moves it by more.
BF16_RTOL = 1e-2
# The runtime must see the GPU and DeepSpeed must pick its CUDA accelerator (tests/conftest.py and the
# harness default both to cpu for the CPU suite). One inductor/Triton cache for every launch: the
# harness gives each run its own TMPDIR, which would otherwise recompile flex attention every time.
GPU_ENV = {
    "XGEN_DEVICE": "cuda",
    "DS_ACCELERATOR": "cuda",
    "TORCHINDUCTOR_CACHE_DIR": os.environ.get(
        "TORCHINDUCTOR_CACHE_DIR", str(Path(tempfile.gettempdir()) / "xgen-inductor-cache")
    ),
}


# --- helpers -----------------------------------------------------------------------------------------


def _start_fields(stdout: str) -> dict[str, str]:
    """The start line's key=value pairs ({} when it was not printed)."""
    lines = [line for line in stdout.splitlines() if line.startswith("xgen-runtime: world_size=")]
    if not lines:
        return {}
    assert len(lines) == 1, lines
    return dict(part.split("=", 1) for part in lines[0].removeprefix("xgen-runtime: ").split())


def _cpu_adam_seconds(text: str) -> float | None:
    """DeepSpeed's op loader prints 'Time to load cpu_adam op: X seconds' (JIT build or cache hit)."""
    found = re.findall(r"Time to load cpu_adam op: ([0-9.]+) seconds", text)
    return float(found[-1]) if found else None


def _error_tail(proc: Any) -> str:
    return (proc.stdout[-4000:] + "\n--- stderr ---\n" + proc.stderr[-6000:]).strip()


def _record(check: str, proc: Any, wall_s: float, out: Path, **extra: Any) -> dict[str, Any]:
    """Append this launch's figures to $XGEN_GPU_FIGURES (one JSON object per line); return them."""
    results_path = out / "train_results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    losses = step_losses(out) if (out / "trainer_state.json").is_file() else {}
    figures = {
        "check": check,
        "gpu": torch.cuda.get_device_name(0) if HAS_CUDA else "none",
        "torch": torch.__version__,
        "rc": proc.returncode,
        "wall_s": round(wall_s, 1),
        "train_runtime_s": results.get("train_runtime"),
        "peak_memory_gib": results.get("peak_memory_gib"),
        "effective_tokens_per_second": results.get("effective_tokens_per_second"),
        "global_step": results.get("global_step"),
        "first_loss": losses[min(losses)] if losses else None,
        "final_loss": losses[max(losses)] if losses else None,
        "start": _start_fields(proc.stdout),
        "cpu_adam_load_s": _cpu_adam_seconds(proc.stdout + proc.stderr),
        **extra,
    }
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if "Error" in line or "Exception" in line]
        figures["error"] = errors[-1][:300] if errors else proc.stderr.strip()[-300:]
    _append(figures)
    return figures


def _append(figures: dict[str, Any]) -> None:
    path = os.environ.get("XGEN_GPU_FIGURES")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps(figures, sort_keys=True) + "\n")


def _launch(check: str, cfg: dict[str, Any], tmp: Path, *, env: dict[str, str] | None = None, **extra: Any):
    """One torchrun launch of the runtime on the GPU; returns (proc, figures)."""
    cfg_path = write_config(tmp / f"{check}.yaml", cfg, xgen_style=True)
    began = time.monotonic()
    proc = run_torchrun(cfg_path, tmp, nproc=1, env={**GPU_ENV, **(env or {})})
    figures = _record(check, proc, time.monotonic() - began, Path(cfg["output_dir"]), **extra)
    return proc, figures


def _assert_trained(
    proc: Any, figures: dict[str, Any], out: Path, *, strategy: str, kind: str = "model", learns: bool = True
) -> None:
    """Exit 0, the start line of a one-rank NCCL world on cuda, the end line, finite decreasing loss.

    strategy is read from a live process group (runtime.distributed.gather_start_info): a run that
    never initialised NCCL would print strategy=single, so this also proves backend=nccl is real."""
    assert proc.returncode == 0, _error_tail(proc)
    start = figures["start"]
    assert start.get("device") == "cuda" and start.get("backend") == "nccl", start
    assert start.get("world_size") == "1" and start.get("strategy") == strategy, start
    assert f"xgen-runtime: saved {kind} to {out}" in proc.stdout
    results = json.loads((out / "train_results.json").read_text())
    assert results["device"] == "cuda" and results["global_step"] == STEPS
    assert results["peak_memory_gib"] > 0
    losses = list(step_losses(out).values())
    assert len(losses) == STEPS and all(math.isfinite(x) for x in losses), losses
    if learns:  # full tuning at lr 1e-3/1e-4; a zero-initialised LoRA B moves too little in 8 steps
        assert figures["final_loss"] < figures["first_loss"], losses


def _config(tiny_dir: Path, out: Path, **overrides: Any) -> dict[str, Any]:
    return base_config(tiny_dir, out, max_steps=STEPS, bf16=True, **overrides)


def _load_checked(out: Path, reference: Path) -> Any:
    """The saved model loads with transformers: same tensors as the base, all finite, some changed."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(reference)
    saved, original = dict(model.named_parameters()), dict(base.named_parameters())
    assert saved.keys() == original.keys()
    assert all(p.numel() > 0 and torch.isfinite(p).all() for p in saved.values())
    assert any(not torch.equal(saved[k], original[k]) for k in saved), "the saved weights are the base's"
    return model


@pytest.fixture(scope="module")
def wide_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny tokenizer and datasets with a wider Llama (~75M parameters, 302 MB in fp32).

    The 124k-parameter tiny model is smaller than CUDA's own workspaces, so CPU offload would not
    show in peak memory; at this size keeping params, grads and Adam state on the GPU costs >1 GB
    while offloaded FSDP2 holds one gathered layer at a time."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from runtime.commands.make_tiny import llama_config

    root = tmp_path_factory.mktemp("wide")
    shutil.copytree(tiny_dir / "data", root / "data")
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir / "model")
    config = llama_config(
        tokenizer,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=4,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root


def _param_bytes(model_dir: Path) -> int:
    return sum(t.numel() * 4 for t in weights(model_dir).values())  # full tuning keeps fp32 masters


# --- (a) DDP over NCCL -------------------------------------------------------------------------------


def test_ddp_over_nccl_trains_saves_and_reloads(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    proc, figures = _launch("ddp-nccl", _config(tiny_dir, out), tmp_path)
    _assert_trained(proc, figures, out, strategy="ddp")
    model = _load_checked(out, tiny_dir / "model").to("cuda", torch.bfloat16)
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(out)("reverse: abc", return_tensors="pt")["input_ids"].to("cuda")
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()


# --- (b, c) FSDP2 through stock accelerate, with and without CPU offload ---------------------------


def test_fsdp2_stock_accelerate_saves_loadable_model(wide_dir: Path, tmp_path: Path) -> None:
    """No CPU patch on cuda: accelerate itself must wrap the model (the runtime exits non-zero with
    'not an FSDP2 module' otherwise). Unsharded on one rank, params + grads + Adam state sit on the GPU."""
    out = tmp_path / "fsdp2"
    param_bytes = _param_bytes(wide_dir / "model")
    cfg = _config(wide_dir, out, fsdp="full_shard auto_wrap", learning_rate=1e-4)
    proc, figures = _launch("fsdp2", cfg, tmp_path, param_gib=round(param_bytes / 2**30, 3))
    _assert_trained(proc, figures, out, strategy="fsdp")
    assert "not an FSDP2 module" not in proc.stderr
    assert (out / "model.safetensors").is_file()
    _load_checked(out, wide_dir / "model")
    assert figures["peak_memory_gib"] * 2**30 > param_bytes, figures


def test_fsdp2_cpu_offload_keeps_weights_off_the_gpu(wide_dir: Path, tmp_path: Path) -> None:
    """`fsdp: ... offload` → accelerate's CPUOffloadPolicy(pin_memory=True), which only a GPU machine
    can run. Offloaded, the GPU holds one gathered layer at a time, so its peak stays well under the
    fp32 weights alone (the no-offload run above needs them plus grads and Adam state)."""
    out = tmp_path / "fsdp2-offload"
    param_bytes = _param_bytes(wide_dir / "model")
    cfg = _config(wide_dir, out, fsdp="full_shard auto_wrap offload", learning_rate=1e-4)
    proc, figures = _launch("fsdp2-offload", cfg, tmp_path, param_gib=round(param_bytes / 2**30, 3))
    _assert_trained(proc, figures, out, strategy="fsdp")
    _load_checked(out, wide_dir / "model")
    assert figures["peak_memory_gib"] * 2**30 < 0.5 * param_bytes, figures


# --- (d) DeepSpeed on CUDA: ZeRO-2, ZeRO-3 offload with DeepSpeedCPUAdam ----------------------------


@needs_deepspeed
def test_deepspeed_zero2_on_cuda(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "z2"
    proc, figures = _launch("deepspeed-z2", _config(tiny_dir, out, deepspeed="z2"), tmp_path)
    _assert_trained(proc, figures, out, strategy="deepspeed-z2")
    _load_checked(out, tiny_dir / "model")


def _assert_cpu_adam(proc: Any, figures: dict[str, Any], out: Path) -> None:
    assert proc.returncode == 0, _error_tail(proc)
    assert figures["cpu_adam_load_s"] is not None, "DeepSpeedCPUAdam (the cpu_adam op) was never loaded"
    _assert_trained(proc, figures, out, strategy="deepspeed-z3")


@needs_deepspeed
def test_deepspeed_zero3_offload_named_stage_uses_cpu_adam(tiny_dir: Path, tmp_path: Path) -> None:
    """The named stage the generator writes (`deepspeed: z3_offload`), unchanged on cuda (the CPU
    suite swaps in torch AdamW): accelerate turns the Trainer's AdamW into DeepSpeedCPUAdam, whose
    cpu_adam op is JIT-built (~1 min the first time) and must load."""
    out = tmp_path / "z3-offload"
    cfg = _config(tiny_dir, out, deepspeed="z3_offload")
    proc, figures = _launch("deepspeed-z3-offload", cfg, tmp_path)
    _assert_cpu_adam(proc, figures, out)
    _load_checked(out, tiny_dir / "model")


# --- (e) LoRA + resume on cuda -----------------------------------------------------------------------


def test_lora_resume_continues_exactly_on_cuda(tiny_dir: Path, tmp_path: Path) -> None:
    """Uninterrupted run vs. a run preempted after step k (SIGUSR1 → checkpoint-k, exit 75) and resumed:
    the loss at step k+1 (and after) must match within bf16 tolerance."""
    k = 3
    cfg = {"finetuning_type": "lora", "save_steps": k, "learning_rate": 1e-3}
    whole_out = tmp_path / "lora-whole"
    proc, figures = _launch("lora-uninterrupted", _config(tiny_dir, whole_out, **cfg), tmp_path)
    _assert_trained(proc, figures, whole_out, strategy="ddp", kind="adapter", learns=False)

    out = tmp_path / "lora-resumed"
    first, _ = _launch(
        "lora-preempted", _config(tiny_dir, out, **cfg), tmp_path, env={"XGEN_FAULT_SIGNAL_AT_STEP": str(k)}
    )
    assert f"SIGUSR1 received: checkpointing at step {k}" in first.stdout, _error_tail(first)
    assert "exitcode: 75" in first.stderr or "exitcode  : 75" in first.stderr, first.stderr[-2000:]
    assert (out / f"checkpoint-{k}").is_dir() and not (out / "adapter_model.safetensors").exists()

    expected = step_losses(whole_out)
    second, figures = _launch("lora-resumed", _config(tiny_dir, out, **cfg), tmp_path)
    resumed = step_losses(out)
    deltas = {step: abs(resumed[step] - expected[step]) for step in resumed if step > k and step in expected}
    _append({"check": "lora-resume-loss-delta", "after_step": k, "abs_delta_by_step": deltas})
    assert f"resuming from {out / f'checkpoint-{k}'}" in second.stdout, _error_tail(second)
    _assert_trained(second, figures, out, strategy="ddp", kind="adapter", learns=False)
    for step in range(k + 1, STEPS + 1):
        assert resumed[step] == pytest.approx(expected[step], rel=BF16_RTOL), (step, resumed, expected)
