"""Throughput levers: decide, per device, what `perf: auto` turns on, before anything is loaded.

    plan = resolve_perf(cfg, device)   # a PerfPlan: one decision per lever, plus notes for fallbacks
    apply_perf(cfg, plan)              # writes the decisions back into the config's own keys

Each lever is one small function so the plan reads as a list (torchtitan's `apply_*` style). The
decisions land in the config (`padding_free`, `flash_attn`, `enable_liger_kernel`, `optim`), so the rest
of the runtime only ever reads the config, and `perf: off` means exactly what the keys say. `packing` is
LLaMA-Factory's key (offline rows of cutoff_len, pt blocks) and only that; perf never sets it. An unset
`packing` lets perf auto turn the padding-free lever on; a written one (true or false) keeps it off.

Why these levers (bench/README.md has the predicted and measured effect of each):
  padding_free padding-free rows: instruction data is ~60% padding when batched to the longest example.
              CUDA: flash_attention_2 (varlen) if the flash_attn package is there, else flex_attention
              (block mask): one row per micro-batch. CPU: sdpa run once per example (sdpa_varlen,
              runtime/levers/sdpa_varlen.py): one row per micro-batch, no padding, attention cost the sum of
              the examples' squares. Plain sdpa/eager keep the examples apart too, given restarting
              position_ids, in rows of at most cutoff_len (runtime/data/packing.py).
  token budget `micro_batch_tokens`: padding-free micro-batches of whole examples up to N tokens
              (runtime/data/packing.py, TokenBudgetBatches), like LLaMA-Factory's rows of cutoff_len but
              without padding.
  label logits `label_logits_only` (sft): the lm_head runs only where a label is trained; prompt tokens
              never reach the [tokens, vocab] projection (runtime/stages/sft.py). Same loss.
  fused RMSNorm `fused_rms_norm` (opt-in): torch's F.rms_norm kernel where it reproduces the model's norm
              (probed per class, runtime/levers/fused_rms_norm.py); no effect above the CPU bench's noise.
  fused LoRA  `fused_lora` (LoRA; perf auto on CPU): each LoRA layer as one autograd node, frozen base
              product and update together (runtime/levers/fused_lora.py): +16 % on the CPU shape, steps on
              and off interleaved (bench/lever_ab.py). Not measured on a GPU: off there unless set.
  allocator   `cpu_allocator_cache` (CPU, any stage; perf auto): glibc malloc keeps freed blocks instead of
              unmapping and page-faulting every step's large tensors again
              (runtime/levers/cpu_allocator_cache.py).
  liger       fused linear+cross-entropy never materialises the [tokens, vocab] fp32 logits; fused
              RMSNorm/SwiGLU/RoPE save activations and memory traffic. Triton kernels: CUDA only.
  fused AdamW one kernel for the whole update instead of a few per parameter group (same maths).
  compile     torch.compile: off unless asked (compile time and recompiles on varying packed lengths
              are not yet measured to pay back).
  activation checkpointing: only when the config asks (it costs ~1/3 more compute).

Everything here is torch-free: the device is passed in, availability is probed with find_spec.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.config import ConfigError, TrainConfig
from runtime.levers.cpu_allocator_cache import glibc
from runtime.mm.families import vision_model_type
from runtime.perf.predicates import PLAIN_ADAMW, auto_chooses, has_module, is_set, tunes

# Devices where perf auto turns padding-free on: CUDA (varlen/flex) and CPU (sdpa, rows <= cutoff_len).
PADDING_FREE_DEVICES = ("cuda", "cpu")
# Not CPU: there bench/lever_ab.py measured fused against foreach at 1.005 on full SFT (the update is ~2 %
# of a step), and the update's rounding moves off the trajectories the CPU tests were tuned on.
FUSED_ADAMW = {"cuda": "adamw_torch_fused", "npu": "adamw_torch_npu_fused"}


@dataclass
class PerfPlan:
    """What runs: one field per lever, decided from the config, the device and what is installed."""

    mode: str
    device: str
    padding_free: bool
    rows: str  # padding-free rows: "one" (variable-length attention) or "<=cutoff_len"; "-" when off
    flash_attn: str
    liger: bool
    optim: str
    torch_compile: bool
    activation_checkpointing: bool
    micro_batch_tokens: int | None = None
    label_logits_only: bool = False
    fused_rms_norm: bool = False
    fused_lora: bool = False
    cpu_allocator_cache: bool = False
    notes: list[str] = field(default_factory=list)
    npu_kernels: tuple[str, ...] = ()  # torch_npu fused kernels build_model patches in (runtime/perf/npu.py)

    def line(self) -> str:
        """The one start line: `perf: auto (cuda) padding_free=on rows=one … attention=flex liger=on …`."""
        onoff = {True: "on", False: "off"}
        budget = self.micro_batch_tokens or "off"
        return (
            f"perf: {self.mode} ({self.device}) padding_free={onoff[self.padding_free]} rows={self.rows} "
            f"micro_batch_tokens={budget} attention={self.flash_attn} liger={onoff[self.liger]} "
            f"label_logits_only={onoff[self.label_logits_only]} optim={self.optim} "
            f"compile={onoff[self.torch_compile]} "
            f"activation_checkpointing={onoff[self.activation_checkpointing]}"
        ) + (
            f" npu_kernels={','.join(self.npu_kernels) or 'off'}"
            if self.device == "npu"
            else f" fused_rms_norm={onoff[self.fused_rms_norm]} fused_lora={onoff[self.fused_lora]} "
            f"cpu_allocator_cache={onoff[self.cpu_allocator_cache]}"
            if self.device == "cpu"
            else ""
        )


def resolve_padding_free(cfg: TrainConfig, device: str) -> bool:
    """The padding-free lever: on for pt/sft on CUDA and CPU under perf auto while `packing` is unset and
    not LLaMA-Factory's default (pt's blocks keep `packing`); or set in code (cfg.padding_free). CPU runs
    sdpa, which keeps the examples of a row apart given restarting position_ids."""
    auto = auto_chooses(cfg, "packing") and device in PADDING_FREE_DEVICES
    return cfg.padding_free or (auto and not cfg.packing)


def packs_rows(cfg: TrainConfig, padding_free: bool) -> bool:
    """Examples share a row: the padding-free lever, or LLaMA-Factory's `packing`/`neat_packing` rows
    (pt: documents joined into blocks)."""
    return padding_free or bool(cfg.packing)


def resolve_rows(cfg: TrainConfig, device: str, padding_free: bool, attention: str) -> str:
    """What the start line says about padding-free rows; the collator decides from the loaded model's
    attention (runtime/data/packing.row_capacity), this mirrors it: one row only with varlen/flex."""
    if not padding_free:
        return "-"  # off, or LLaMA-Factory's rows (packing/neat_packing, pt blocks)
    varlen = (
        attention == "flex"
        and device == "cuda"
        or attention == "fa2"
        and device in ("cuda", "npu")
        or attention == "sdpa_varlen"
    )
    return "one" if varlen else f"<={cfg.cutoff_len}"


def resolve_label_logits(cfg: TrainConfig, liger: bool) -> bool:
    """sft cross-entropy only: the lm_head at trained positions. Off under Liger (its fused linear+CE
    already skips the logits), the DFT/EAFT/ASFT losses (they read full logits), or when set false."""
    if cfg.stage != "sft" or liger or cfg.use_dft_loss or cfg.use_eaft_loss or cfg.use_asft_loss:
        return False
    if cfg.perf == "auto" and not is_set(cfg, "label_logits_only"):
        return True
    return bool(cfg.label_logits_only)


def resolve_fused_lora(cfg: TrainConfig, device: str) -> bool:
    """Unset: on for plain LoRA (not DoRA, not QLoRA) pt/sft on CPU under perf auto, where
    bench/lever_ab.py measured it; elsewhere what the key says (the config rules refuse it outside plain
    LoRA)."""
    if auto_chooses(cfg, "fused_lora"):
        plain_lora = cfg.finetuning_type == "lora" and not cfg.use_dora and cfg.quantization_bit is None
        return device == "cpu" and plain_lora
    return bool(cfg.fused_lora)


def resolve_allocator_cache(cfg: TrainConfig, device: str) -> tuple[bool, str | None]:
    """(on, note). Unset: on on CPU under perf auto, any stage (glibc only). Set where it cannot act
    (another device: the tensors are not in malloc's heap; another C library): off with one note."""
    if cfg.perf == "auto" and not is_set(cfg, "cpu_allocator_cache"):  # any stage: not auto_chooses
        return device == "cpu" and glibc(), None
    if not cfg.cpu_allocator_cache:
        return False, None
    if device != "cpu":
        return False, f"cpu_allocator_cache: the tensors are in {device} memory, not malloc's; off"
    if not glibc():
        return False, "cpu_allocator_cache: the C library is not glibc (mallopt); off"
    return True, None


def resolve_flash_attn(cfg: TrainConfig, device: str, padding_free: bool, *, fa2: bool) -> str:
    """The `flash_attn` key under perf auto. Packed rows need a variable-length attention to cost linear in
    the row: on CUDA fa2 if installed, else flex; on CPU sdpa per example (sdpa_varlen,
    runtime/levers/sdpa_varlen.py). Only an unset `flash_attn` (auto) changes; sdpa/eager also keep
    examples apart, in rows of at most cutoff_len."""
    if not packs_rows(cfg, padding_free) or cfg.flash_attn != "auto" or not auto_chooses(cfg, "flash_attn"):
        return cfg.flash_attn
    if device == "cuda":
        return "fa2" if fa2 else "flex"
    # Only where examples are kept apart: LLaMA-Factory's plain packing and pt blocks attend across
    # examples under an all-ones mask, which plain sdpa runs as is_causal without building a mask.
    apart = padding_free or cfg.neat_packing
    return "sdpa_varlen" if device == "cpu" and apart else cfg.flash_attn


def resolve_liger(cfg: TrainConfig, device: str, *, available: bool) -> tuple[bool, str | None]:
    """(on, note). Unset: on for pt/sft on CUDA when liger_kernel is installed. Asked for where it cannot
    run (no CUDA, not installed): off, with one note instead of a crash inside Trainer."""
    if tunes(cfg, "enable_liger_kernel", device):
        return available, None
    if not cfg.enable_liger_kernel:
        return False, None
    if device != "cuda":
        return False, f"enable_liger_kernel: Liger's Triton kernels need CUDA; off on {device}"
    if not available:
        return False, "enable_liger_kernel: the liger_kernel package is not installed; off"
    return True, None


def resolve_optim(cfg: TrainConfig, device: str) -> str:
    """Unset: the device's fused AdamW under perf auto (the same update as adamw_torch), any stage."""
    if cfg.perf != "auto" or is_set(cfg, "optim") or cfg.optim != PLAIN_ADAMW:
        return cfg.optim
    return FUSED_ADAMW.get(device, cfg.optim)


def resolve_perf(
    cfg: TrainConfig,
    device: str,
    *,
    liger_available: bool | None = None,
    fa2_available: bool | None = None,
    npu_ops: frozenset[str] | None = None,
) -> PerfPlan:
    """Decide every lever for this device. The `*_available` arguments override the package probes (tests)."""
    if liger_available is None:
        liger_available = has_module("liger_kernel")
    if fa2_available is None:
        fa2_available = has_module("flash_attn")
    padding_free = resolve_padding_free(cfg, device)
    liger, liger_note = resolve_liger(cfg, device, available=liger_available)
    allocator_cache, allocator_note = resolve_allocator_cache(cfg, device)
    attention = resolve_flash_attn(cfg, device, padding_free, fa2=fa2_available)
    rows = resolve_rows(cfg, device, padding_free, attention)
    plan = PerfPlan(
        mode=cfg.perf,
        device=device,
        padding_free=padding_free,
        rows=rows,
        flash_attn=attention,
        liger=liger,
        optim=resolve_optim(cfg, device),
        torch_compile=cfg.torch_compile,
        activation_checkpointing=cfg.gradient_checkpointing,
        micro_batch_tokens=cfg.micro_batch_tokens,
        label_logits_only=resolve_label_logits(cfg, liger),
        # fused_rms_norm is opt-in, never chosen by perf auto (no effect above the noise,
        # bench/README.md): in the plan only so the start line shows it
        fused_rms_norm=cfg.fused_rms_norm,
        fused_lora=resolve_fused_lora(cfg, device),
        cpu_allocator_cache=allocator_cache,
    )
    plan.notes.extend(note for note in (liger_note, allocator_note) if note)
    if device == "npu":  # padding-free rows with the varlen fused attention, fused kernels, fused AdamW
        from runtime.perf import npu as perf_npu

        perf_npu.resolve_npu(cfg, plan, perf_npu.npu_ops() if npu_ops is None else npu_ops)
        plan.rows = resolve_rows(cfg, device, plan.padding_free, plan.flash_attn)
    if plan.padding_free and vision_model_type(cfg.model_name_or_path):
        # Qwen's M-RoPE position ids are computed per row from the image grids (get_rope_index): rows that
        # hold several examples would need them per example; LLaMA-Factory refuses packing there too.
        plan.padding_free = False
        if cfg.flash_attn == "auto":  # fa2 was picked for the padding-free rows only
            plan.flash_attn = resolve_flash_attn(cfg, device, False, fa2=fa2_available)
        plan.rows = resolve_rows(cfg, device, False, plan.flash_attn)
        plan.notes.append("padding-free rows are off for vision-language models (Qwen's M-RoPE position ids)")
    if cfg.micro_batch_tokens and plan.rows == "-":  # the config rules refused the static cases already
        raise ConfigError(
            "micro_batch_tokens",
            f"needs the padding-free path, which is off here ({cfg.stage} on {device}, packing="
            f"{cfg.packing}); remove micro_batch_tokens",
        )
    return plan


def apply_perf(cfg: TrainConfig, plan: PerfPlan) -> None:
    """Write the plan into the config's keys; the data, model and TrainingArguments code reads only those."""
    cfg.padding_free = plan.padding_free
    cfg.flash_attn = plan.flash_attn
    cfg.enable_liger_kernel = plan.liger
    cfg.optim = plan.optim
    cfg.torch_compile = plan.torch_compile
    cfg.use_v1_kernels, cfg.npu_kernels = bool(plan.npu_kernels), plan.npu_kernels
    cfg.label_logits_only = plan.label_logits_only
    cfg.fused_lora = plan.fused_lora
    cfg.cpu_allocator_cache = plan.cpu_allocator_cache
    cfg.notes.extend(plan.notes)
