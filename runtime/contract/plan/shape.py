"""A decoder-only model's shape from its `config.json`, and the parameter counts that follow from it.

Torch-free: the generator reads `config.json` only (no weights, no transformers). The counts follow the
module shapes transformers builds for Llama, Mistral, Qwen2/2.5, Qwen3 and Qwen3-MoE/Mixtral (v5: MoE
experts as two 3-D weights, a router that is not an `nn.Linear`); tests/runtime/contract/test_plan_shape.py
builds the real model on the meta device and checks every count equals `sum(p.numel())`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Families whose q/k/v projections carry a bias whatever `attention_bias` says (Qwen2 / Qwen2.5).
_QKV_BIAS_ALWAYS = ("qwen2", "qwen2_moe")
# Families with an RMSNorm over head_dim on q and k (Qwen3).
_QK_NORM = ("qwen3", "qwen3_moe")
# MoE blocks that register the router before the experts (transformers v5; Qwen3-MoE: experts first).
_ROUTER_FIRST = ("mixtral", "qwen2_moe")


@dataclass(frozen=True)
class Shape:
    """What the memory terms need to know about the model."""

    model_type: str
    hidden: int  # H, hidden_size
    layers: int  # L, num_hidden_layers
    heads: int  # a, num_attention_heads
    kv_heads: int  # num_key_value_heads (GQA); = heads for MHA
    head_dim: int
    intermediate: int  # I of a dense MLP
    vocab: int  # V
    tied: bool  # tie_word_embeddings: lm_head shares embed_tokens' weight
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    experts: int = 0  # routed experts per MoE layer (0: dense)
    experts_per_token: int = 0
    moe_intermediate: int = 0
    moe_layers: int = 0  # how many of the layers are MoE layers
    shared_expert_intermediate: int = 0

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def dense_layers(self) -> int:
        return self.layers - self.moe_layers


def shape_from_config(config: dict[str, Any]) -> Shape:
    """The Shape of a `config.json` mapping (a multimodal config's `text_config` when there is one)."""
    c = config.get("text_config") or config
    model_type = str(config.get("model_type", c.get("model_type", "llama")))
    heads = int(c["num_attention_heads"])
    hidden = int(c["hidden_size"])
    layers = int(c["num_hidden_layers"])
    experts = int(c.get("num_experts") or c.get("num_local_experts") or 0)
    moe_layers = 0
    if experts:
        step = int(c.get("decoder_sparse_step", 1) or 1)
        only_dense = set(c.get("mlp_only_layers") or ())
        moe_layers = sum(1 for i in range(layers) if i not in only_dense and (i + 1) % step == 0)
    return Shape(
        model_type=model_type,
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=int(c.get("num_key_value_heads") or heads),
        head_dim=int(c.get("head_dim") or hidden // heads),
        intermediate=int(c.get("intermediate_size") or 0),
        vocab=int(c["vocab_size"]),
        tied=bool(c.get("tie_word_embeddings", config.get("tie_word_embeddings", False))),
        qkv_bias=bool(c.get("attention_bias", False)) or model_type in _QKV_BIAS_ALWAYS,
        o_bias=bool(c.get("attention_bias", False)) and model_type not in _QKV_BIAS_ALWAYS,
        mlp_bias=bool(c.get("mlp_bias", False)),
        qk_norm=model_type in _QK_NORM,
        experts=experts,
        experts_per_token=int(c.get("num_experts_per_tok") or 0),
        moe_intermediate=int(c.get("moe_intermediate_size") or c.get("intermediate_size") or 0),
        moe_layers=moe_layers,
        shared_expert_intermediate=int(c.get("shared_expert_intermediate_size") or 0),
    )


def read_shape(model_dir: str | Path) -> Shape:
    """The Shape of a model directory's config.json. OSError / KeyError / ValueError when unreadable."""
    return shape_from_config(json.loads((Path(model_dir) / "config.json").read_text()))


# --- parameter counts: every nn.Parameter transformers creates, by where it lives ---


def attention_linears(s: Shape) -> list[tuple[str, int, int]]:
    """(name, in_features, out_features) of one layer's attention projections."""
    return [
        ("q_proj", s.hidden, s.q_dim),
        ("k_proj", s.hidden, s.kv_dim),
        ("v_proj", s.hidden, s.kv_dim),
        ("o_proj", s.q_dim, s.hidden),
    ]


def mlp_linears(s: Shape, intermediate: int) -> list[tuple[str, int, int]]:
    """(name, in, out) of a SwiGLU MLP (gate_proj, up_proj, down_proj)."""
    return [
        ("gate_proj", s.hidden, intermediate),
        ("up_proj", s.hidden, intermediate),
        ("down_proj", intermediate, s.hidden),
    ]


def linear_tensors(name: str, i: int, o: int, bias: bool) -> list[tuple[str, int]]:
    return [(f"{name}.weight", i * o)] + ([(f"{name}.bias", o)] if bias else [])


def layer_tensors(s: Shape, moe: bool) -> list[tuple[str, int]]:
    """(name, elements) of one decoder layer's parameters in the order transformers registers them
    (`model.parameters()` order): attention, MLP or MoE block, the two norms."""
    out: list[tuple[str, int]] = []
    for name, i, o in attention_linears(s):
        bias = s.o_bias if name == "o_proj" else s.qkv_bias
        out += linear_tensors(f"self_attn.{name}", i, o, bias)
    if s.qk_norm:
        out += [("self_attn.q_norm.weight", s.head_dim), ("self_attn.k_norm.weight", s.head_dim)]
    if not moe:
        for name, i, o in mlp_linears(s, s.intermediate):
            out += linear_tensors(f"mlp.{name}", i, o, s.mlp_bias)
    else:
        experts = [
            ("mlp.experts.gate_up_proj", s.experts * 2 * s.moe_intermediate * s.hidden),
            ("mlp.experts.down_proj", s.experts * s.hidden * s.moe_intermediate),
        ]
        router = [("mlp.gate.weight", s.experts * s.hidden)]
        out += router + experts if s.model_type in _ROUTER_FIRST else experts + router
        if s.shared_expert_intermediate:
            for name, i, o in mlp_linears(s, s.shared_expert_intermediate):
                out += linear_tensors(f"mlp.shared_expert.{name}", i, o, False)
            out.append(("mlp.shared_expert_gate.weight", s.hidden))
    return out + [("input_layernorm.weight", s.hidden), ("post_attention_layernorm.weight", s.hidden)]


def layer_kinds(s: Shape) -> list[bool]:
    """Whether each layer, in order, is an MoE layer (the plan assumes the dense ones come first)."""
    return [False] * s.dense_layers + [True] * s.moe_layers


def model_tensors(s: Shape) -> list[tuple[str, int]]:
    """(name, elements) of every parameter of the causal LM in `model.parameters()` order."""
    out = [("model.embed_tokens.weight", s.vocab * s.hidden)]
    for n, moe in enumerate(layer_kinds(s)):
        out += [(f"model.layers.{n}.{name}", k) for name, k in layer_tensors(s, moe)]
    out.append(("model.norm.weight", s.hidden))
    return out + ([] if s.tied else [("lm_head.weight", s.vocab * s.hidden)])


def layer_params(s: Shape, moe: bool) -> int:
    """Parameters of one decoder layer (dense or MoE)."""
    return sum(n for _, n in layer_tensors(s, moe))


def embedding_params(s: Shape) -> int:
    return s.vocab * s.hidden


def head_params(s: Shape) -> int:
    """lm_head's own weight: 0 when tied to the embedding."""
    return 0 if s.tied else s.vocab * s.hidden


def total_params(s: Shape) -> int:
    """Every parameter of the causal LM: embedding, layers, final norm, head."""
    return sum(n for _, n in model_tensors(s))


def active_params_per_token(s: Shape) -> int:
    """Parameters one token passes through (MoE: top-k experts); = total for a dense model."""
    if not s.experts:
        return total_params(s)
    idle = s.experts - s.experts_per_token
    return total_params(s) - s.moe_layers * idle * 3 * s.hidden * s.moe_intermediate


def target_linears(s: Shape, target: str) -> list[tuple[str, int, int]]:
    """Every nn.Linear a LoRA `lora_target` names, over all layers (`all`: every linear but the head,
    as runtime.model.linear_module_names; MoE experts are 3-D weights and the router is no nn.Linear in
    transformers v5, so on MoE layers `all` is the attention projections)."""
    names = None if target.strip() == "all" else {t.strip() for t in target.split(",") if t.strip()}
    out: list[tuple[str, int, int]] = []
    for moe in layer_kinds(s):
        linears = attention_linears(s)
        if not moe:
            linears += mlp_linears(s, s.intermediate)
        elif s.shared_expert_intermediate:
            linears += mlp_linears(s, s.shared_expert_intermediate)
        out += [lin for lin in linears if names is None or lin[0] in names]
    return out


def lora_tensors(s: Shape, target: str, rank: int, dora: bool = False) -> list[tuple[str, int]]:
    """(name, elements) of the adapter as peft creates it, in `model.parameters()` order: per targeted
    Linear(in, out) lora_A (r x in), lora_B (out x r), no bias, and with DoRA the magnitude vector of `out`
    (peft.tuners.lora.layer `LoraLayer`, dora.py `DoraLinearLayer.update_layer`)."""
    out: list[tuple[str, int]] = []
    for name, i, o in target_linears(s, target):
        out += [(f"{name}.lora_A", rank * i), (f"{name}.lora_B", o * rank)]
        out += [(f"{name}.lora_magnitude_vector", o)] if dora else []
    return out


def lora_params(s: Shape, target: str, rank: int, dora: bool = False) -> int:
    """Adapter parameters as peft creates them (lora_tensors)."""
    return sum(n for _, n in lora_tensors(s, target, rank, dora))


def freeze_layer_ids(s: Shape, trainable_layers: int) -> range:
    """The layers freeze trains: the last N, or the first -N (runtime.model.apply_freeze)."""
    n = min(abs(trainable_layers), s.layers)
    return range(s.layers - n, s.layers) if trainable_layers > 0 else range(n)


def freeze_tensors(s: Shape, trainable_layers: int) -> list[tuple[str, int]]:
    """(name, elements) of the trained layers' parameters (freeze_trainable_modules `all`), in order. A
    mixed dense/MoE stack is planned as if the trained layers were MoE ones (an upper bound)."""
    moe = bool(s.moe_layers)
    return [
        (f"model.layers.{n}.{name}", k)
        for n in freeze_layer_ids(s, trainable_layers)
        for name, k in layer_tensors(s, moe)
    ]


def freeze_params(s: Shape, trainable_layers: int) -> int:
    """freeze with freeze_trainable_modules `all`: the last N (or first -N) layers train in full."""
    return sum(n for _, n in freeze_tensors(s, trainable_layers))


def linear_weight_params(s: Shape) -> int:
    """Parameters that pass through F.linear (every projection and the head): the weights autocast copies."""
    dense = sum(i * o for _, i, o in attention_linears(s) + mlp_linears(s, s.intermediate))
    moe = sum(i * o for _, i, o in attention_linears(s)) + s.experts * 3 * s.hidden * s.moe_intermediate
    return s.dense_layers * dense + s.moe_layers * moe + s.vocab * s.hidden
