"""A stand-in for torch_npu on a machine without an Ascend NPU: the five functions the runtime's NPU levers
call, each checking its arguments the way the real operator documents them and computing the reference
result on CPU in plain torch (so gradients flow and a model wired to it must match the unwired model).

It never claims a device: `torch.npu` is not created, so transformers, accelerate and runtime.distributed
still see a CPU machine; tests that want transformers' NPU attention route patch that in themselves
(tests/runtime/perf/test_perf_npu.py). Every call is recorded in CALLS, by function name, so a test can tell
a kernel that really ran from one that was only patched in. Nothing here measures NPU speed.

Signatures and constraints follow the torch_npu API reference (torch_npu.npu_fusion_attention,
npu_rms_norm, npu_swiglu, npu_rotary_mul, torch_npu.optim.NpuFusedAdamW).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import torch

from . import optim  # noqa: F401  (torch_npu.optim.NpuFusedAdamW, as the real package exposes it)

__version__ = "0.0.fake"

CALLS: Counter[str] = Counter()
# The last npu_fusion_attention call's layout and sequence ends, for tests that check the varlen path.
LAST_ATTENTION: dict[str, Any] = {}

FLOATS = (torch.float16, torch.bfloat16, torch.float32)
# transformers' integrations/npu_flash_attention.py passes this compressed causal mask with sparse modes 2/3.
COMPRESSED_MASK = 2048
LAYOUTS = ("TND", "BSND", "BNSD", "BSH", "SBH")


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(f"fake torch_npu: {what}")


def reset() -> None:
    CALLS.clear()
    LAST_ATTENTION.clear()


def _cumulative(name: str, ends: Any, total: int) -> list[int]:
    """actual_seq_qlen / actual_seq_kvlen: host-side ints, each sequence's cumulative END (no leading 0)."""
    _check(isinstance(ends, (list, tuple)), f"{name} must be a list/tuple of ints, got {type(ends).__name__}")
    _check(all(isinstance(e, int) and not isinstance(e, bool) for e in ends), f"{name} must hold python ints")
    _check(len(ends) > 0 and ends[0] > 0, f"{name} must start with the first sequence's end (> 0): {ends}")
    _check(
        all(a < b for a, b in zip(ends, ends[1:], strict=False)),
        f"{name} must be strictly increasing: {ends}",
    )
    _check(ends[-1] == total, f"{name} must end at T={total}, got {ends[-1]}")
    return list(ends)


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: str | None
) -> torch.Tensor:
    """One sequence, [S, N, D] layout, GQA by repeating kv heads; causal 'top_left' | 'down_right' | None."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = torch.einsum("qnd,knd->nqk", q.float(), k.float()) * scale
    sq, skv = q.shape[0], k.shape[0]
    if causal is not None:
        shift = skv - sq if causal == "down_right" else 0
        rows = torch.arange(sq).unsqueeze(1)
        cols = torch.arange(skv).unsqueeze(0)
        scores = scores.masked_fill(cols > rows + shift, float("-inf"))
    return torch.einsum("nqk,knd->qnd", scores.softmax(-1), v.float()).to(q.dtype)


def npu_fusion_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    head_num: int,
    input_layout: str,
    pse: Any = None,
    padding_mask: Any = None,
    atten_mask: torch.Tensor | None = None,
    scale: float = 1.0,
    keep_prob: float = 1.0,
    pre_tockens: int = 2147483647,
    next_tockens: int = 2147483647,
    inner_precise: int = 0,
    prefix: Any = None,
    actual_seq_qlen: Any = None,
    actual_seq_kvlen: Any = None,
    sparse_mode: int = 0,
    gen_mask_parallel: bool = True,
    sync: bool = False,
) -> tuple:
    """Fused attention; TND is the variable-length layout: q [T, N1, D], k/v [T, N2, D], sequences given
    by actual_seq_qlen/kvlen. Returns (attention_out, softmax_max, softmax_sum, softmax_in, seed, offset,
    numels)."""
    _check(input_layout in ("TND", "BSND"), f"input_layout {input_layout!r}: this fake models TND and BSND")
    _check(query.dtype in FLOATS, f"query dtype {query.dtype} (FLOAT16/BFLOAT16/FLOAT32 only)")
    _check(key.dtype == query.dtype == value.dtype, "query, key and value must share one dtype")
    _check(
        pse is None and padding_mask is None and prefix is None, "pse/padding_mask/prefix are not modelled"
    )
    _check(keep_prob == 1.0, f"keep_prob {keep_prob}: dropout is not modelled (attention_dropout must be 0)")
    _check(isinstance(head_num, int), "head_num must be a python int")
    rank = 3 if input_layout == "TND" else 4
    _check(query.dim() == key.dim() == value.dim() == rank, f"{input_layout} needs {rank}-D q/k/v")
    heads_q, heads_kv = query.shape[-2], key.shape[-2]
    _check(head_num == heads_q, f"head_num {head_num} != query heads {heads_q}")
    _check(key.shape == value.shape, "key and value shapes differ")
    _check(heads_q % heads_kv == 0, f"key heads {heads_kv} must divide query heads {heads_q}")
    _check(query.shape[-1] == key.shape[-1], "query and key head dims differ")
    causal: str | None = None
    if sparse_mode in (2, 3):
        _check(atten_mask is not None and atten_mask.dtype == torch.bool, "sparse modes 2/3 need a bool mask")
        _check(
            tuple(atten_mask.shape) == (COMPRESSED_MASK, COMPRESSED_MASK), "the compressed mask is 2048x2048"
        )
        expected = torch.triu(torch.ones(COMPRESSED_MASK, COMPRESSED_MASK, dtype=torch.bool), diagonal=1)
        _check(torch.equal(atten_mask.cpu(), expected), "the compressed mask must be triu(ones, diagonal=1)")
        causal = "top_left" if sparse_mode == 2 else "down_right"
    else:
        _check(
            sparse_mode == 0 and atten_mask is None, f"sparse_mode {sparse_mode} with a mask is not modelled"
        )
    if input_layout == "TND":
        ends_q = _cumulative("actual_seq_qlen", actual_seq_qlen, query.shape[0])
        ends_kv = _cumulative("actual_seq_kvlen", actual_seq_kvlen, key.shape[0])
        _check(len(ends_q) == len(ends_kv), "actual_seq_qlen and actual_seq_kvlen count different sequences")
        pieces = [
            _attend(query[qa:qb], key[ka:kb], value[ka:kb], scale, causal)
            for qa, qb, ka, kb in zip([0, *ends_q[:-1]], ends_q, [0, *ends_kv[:-1]], ends_kv, strict=True)
        ]
        out = torch.cat(pieces, dim=0)
        LAST_ATTENTION.update(layout="TND", actual_seq_qlen=ends_q, actual_seq_kvlen=ends_kv)
    else:
        _check(actual_seq_qlen is None and actual_seq_kvlen is None, "BSND takes no actual_seq_*len")
        out = torch.stack(
            [_attend(q, k, v, scale, causal) for q, k, v in zip(query, key, value, strict=True)]
        )
        LAST_ATTENTION.update(layout="BSND", actual_seq_qlen=None, actual_seq_kvlen=None)
    _check(math.isfinite(scale) and scale > 0, f"scale {scale}")
    CALLS["npu_fusion_attention"] += 1
    empty = query.new_empty(0)
    return out, empty, empty, empty, 0, 0, 0


def npu_rms_norm(
    x: torch.Tensor, gamma: torch.Tensor, epsilon: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, rstd): y = x / sqrt(mean(x^2) + eps) * gamma (x's trailing shape, dtype)."""
    _check(x.dtype in FLOATS, f"x dtype {x.dtype}")
    _check(gamma.dtype == x.dtype, f"gamma dtype {gamma.dtype} must equal x's {x.dtype}")
    _check(
        tuple(gamma.shape) == tuple(x.shape[-gamma.dim() :]),
        f"gamma {tuple(gamma.shape)} vs x {tuple(x.shape)}",
    )
    _check(isinstance(epsilon, float) and epsilon > 0, f"epsilon {epsilon!r}")
    rstd = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + epsilon)
    CALLS["npu_rms_norm"] += 1
    return (x.float() * rstd).to(x.dtype) * gamma, rstd


def npu_swiglu(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """silu(A) * B where A, B are the two halves of x along dim (A first)."""
    _check(x.dtype in FLOATS, f"x dtype {x.dtype}")
    _check(x.shape[dim] % 2 == 0, f"x's dim {dim} has odd size {x.shape[dim]}")
    a, b = x.chunk(2, dim=dim)
    CALLS["npu_swiglu"] += 1
    return torch.nn.functional.silu(a) * b


def npu_rotary_mul(x: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """x * r1 + rotate_half(x) * r2, with x 4-D and r1/r2 (cos, sin) broadcastable to it, same dtype."""
    _check(x.dim() == 4 and r1.dim() == 4, f"x and r1 must be 4-D, got {x.dim()}-D and {r1.dim()}-D")
    _check(r1.shape == r2.shape, "r1 and r2 shapes differ")
    _check(r1.dtype == r2.dtype == x.dtype, f"r1/r2 dtype {r1.dtype} must equal x's {x.dtype}")
    _check(x.shape[-1] == r1.shape[-1] and x.shape[-1] % 2 == 0, "the last dim must match and be even")
    _check(
        torch.broadcast_shapes(x.shape, r1.shape) == x.shape, f"r1 {tuple(r1.shape)} does not broadcast to x"
    )
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    CALLS["npu_rotary_mul"] += 1
    return x * r1 + rotated * r2
