"""The memory terms of one training run, per device, in bytes: each a small function with its source.

Model states follow the ZeRO paper (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training
Trillion Parameter Models", sec. 3.1 and 5): mixed-precision Adam holds 2 bytes of half-precision
parameters, 2 of gradients and K = 12 of optimizer states (fp32 master weights 4, Adam m 4, v 4) per
parameter; ZeRO-1 partitions the 12 over the N data-parallel ranks, ZeRO-2 also the 2 of gradients,
ZeRO-3 also the 2 of parameters. How this runtime holds them (runtime/model.py `model_dtype`,
`upcast_trainable`) decides the bytes outside DeepSpeed: full tuning keeps fp32 weights (they are the
master) under bf16 autocast; LoRA/freeze keep a half-precision frozen base and fp32 trainable weights.

Activations follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
Models", sec. 4.1: the tensors each op saves for backward, summed per layer), adapted op by op to the
Llama/Qwen decoder layer as transformers 5 implements it (RMSNorm in fp32, SwiGLU MLP, GQA with rotary
embeddings, sdpa or eager attention, ForCausalLMLoss upcasting the logits to fp32).
tests/runtime/contract/test_plan_activations.py holds the per-layer sum against what autograd saves.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from runtime.contract.plan.shape import (
    Shape,
    freeze_tensors,
    layer_params,
    linear_weight_params,
    lora_tensors,
    model_tensors,
    target_linears,
    total_params,
)

STRATEGIES = ("ddp", "zero1", "zero2", "zero3", "fsdp2")
# DeepSpeed defaults the runtime's named stages use (runtime/contract/zero.py); `auto` values are filled
# by transformers' HfDeepSpeedConfig: reduce_bucket_size = H*H, stage3_prefetch_bucket_size = 0.9*H*H.
ZERO12_REDUCE_BUCKET = int(5e8)


@dataclass(frozen=True)
class Run:
    """One candidate: the model and method, precision, strategy and batch on one device."""

    shape: Shape
    method: str  # full | freeze | lora (oft is planned like lora)
    trainable: int  # trainable parameters (all for full; the adapter for lora)
    precision: str = "bf16"  # bf16 | fp16 | fp32 (the autocast dtype; fp32 = none)
    pure_bf16: bool = False
    quant_bits: int | None = None  # QLoRA base: 4 | 8
    double_quant: bool = True  # bnb 4-bit: quantised quantisation constants
    device: str = "cuda"  # cuda | npu | cpu (the runtime keeps fp32 weights on cpu)
    strategy: str = "ddp"
    offload: bool = False  # DeepSpeed offload_optimizer (+ offload_param at ZeRO-3), FSDP2 cpu_offload
    world: int = 1  # data-parallel ranks
    micro_batch: int = 1
    seq: int = 2048
    checkpointing: bool = False
    attention: str = "sdpa"  # sdpa | fa2 | eager
    padded: bool = True  # batches carry an attention mask (no packing): sdpa repeats k/v for GQA
    optimizer_states: int = 2  # tensors per trainable parameter (AdamW: m, v; SGD: 0; 8-bit: see optim_bytes)
    optim_bytes: int | None = None  # bytes per state element; None: the trainable weights' dtype
    lora_rank: int = 8
    lora_target: str = "all"
    dora: bool = False  # use_dora: a magnitude vector per adapted Linear (counted in `trainable`)
    freeze_layers: int = 2  # freeze_trainable_layers (its default): which layers train, for their order
    rows_per_example: int = (
        1  # rows the policy's forward (with grad) runs per example: dpo/rm 2 (chosen, rejected)
    )
    reference_copy: bool = False  # dpo/kto/ASFT with a frozen copy of the model (full, freeze, or ref_model)
    checkpointing_key: str = "gradient_checkpointing"  # the key the config turns checkpointing with

    def but(self, **changes: object) -> Run:
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def deepspeed(self) -> bool:
        return self.strategy.startswith("zero")

    @property
    def stage(self) -> int:
        return int(self.strategy[-1]) if self.deepspeed else 0

    @property
    def rows(self) -> int:
        """Rows of one micro-batch's forward with grad: DPO and RM run the chosen and the rejected rows
        together (runtime.data.collators.PairwiseCollator: 2B rows)."""
        return self.micro_batch * self.rows_per_example

    @property
    def tokens(self) -> int:
        return self.rows * self.seq

    @property
    def frozen(self) -> int:
        return (
            total_params(self.shape) - self.trainable if self.method != "lora" else total_params(self.shape)
        )


def half(run: Run) -> bool:
    return run.precision in ("bf16", "fp16") or run.pure_bf16


def compute_bytes(run: Run) -> int:
    """c: bytes of an activation under autocast (2 for bf16/fp16, 4 for fp32)."""
    return 2 if half(run) else 4


def weight_bytes(run: Run, trainable: bool) -> int:
    """Bytes per weight as the runtime loads it (runtime/model.py model_dtype, upcast_trainable);
    DeepSpeed casts the whole module to the half dtype (engine `_configure_distributed_model`)."""
    if not half(run):
        return 4
    if run.deepspeed or run.pure_bf16:
        return 2
    if run.method == "full" or run.device == "cpu":
        return 4
    return 4 if trainable else 2


def residual_bytes(run: Run) -> int:
    """r: dtype of the residual stream = the dtype of the embedding weight (norm weights multiply it)."""
    frozen_embedding = run.method != "full"
    return weight_bytes(run, trainable=not frozen_embedding)


# --- model states -----------------------------------------------------------------------------------


def shard(run: Run, partitioned: bool) -> int:
    return run.world if partitioned else 1


def quantized_base_bytes(run: Run) -> float:
    """QLoRA: bitsandbytes stores 4-bit weights two per byte (0.5 B) plus per-64-weight absmax constants:
    fp32 (4/64 B) or, double-quantised, 8-bit with an fp32 constant per 256 blocks (1/64 + 4/16384 B)
    (Dettmers et al. 2023, "QLoRA", sec. 3); 8-bit: 1 B plus an fp32 scale per row (ignored)."""
    if run.quant_bits == 8:
        return 1.0
    return 0.5 + (1 / 64 + 4 / 16384 if run.double_quant else 4 / 64)


def parameters(run: Run) -> int:
    """Bytes of the weights a rank holds. DDP/ZeRO-1/2: all; ZeRO-3 and FSDP2: 1/N (ZeRO paper, P_os+g+p).
    ZeRO-3 keeps its persistent tensors whole on every rank, and a frozen one's own partition beside it
    (partition_parameters.py `_partition_param`: a `ds_persist` partition goes to `local_device`; the
    trainable ones' partitions live in the optimizer's flat buffer, part of the 1/N). offload_param moves
    the partitions to the host (stage3.py `param_groups_fp16_flat_cpu_memory`), not those persistent
    tensors. FSDP2's CPUOffloadPolicy: nothing stays."""
    part = run.stage == 3 or run.strategy == "fsdp2"
    kept = partitioned = 0.0  # ZeRO-3's persistent tensors: as the device holds them, and their 1/N
    if part and run.deepspeed and run.world > 1:
        kept_t, kept_f = persistent(run)
        kept = kept_t * weight_bytes(run, True) + kept_f * weight_bytes(run, False) * (1 + 1 / run.world)
        partitioned = (kept_t * weight_bytes(run, True) + kept_f * weight_bytes(run, False)) / run.world
    if part and run.offload:
        return int(kept)
    s = run.shape
    frozen = run.frozen * weight_bytes(run, False)
    if run.quant_bits and run.method == "lora":  # the nn.Linear projections are quantised, nothing else
        linear = sum(i * o for _, i, o in target_linears(s, "all"))
        frozen = (total_params(s) - linear) * weight_bytes(run, False) + int(
            linear * quantized_base_bytes(run)
        )
    trainable = run.trainable * weight_bytes(run, True)
    return int((frozen + trainable) / shard(run, part) - partitioned + kept)


def gradients(run: Run) -> int:
    """Bytes of gradients: trainable parameters x their dtype. ZeRO-2/3 and FSDP2 keep 1/N (reduce-scatter);
    DDP and ZeRO-1 the full set (ZeRO-1 reduces after the backward, when all of them exist). ZeRO offload
    moves the partition to CPU. ZeRO-2's gradient buffer holds whole parameters: zero2_partition."""
    part = run.stage >= 2 or run.strategy == "fsdp2"
    if run.offload and (run.stage >= 2 or run.strategy == "fsdp2"):  # FSDP2's CPUOffloadPolicy: grads too
        return 0
    if run.stage == 2 and run.world > 1:
        return zero2_partition(run) * weight_bytes(run, True)
    grads = run.trainable * weight_bytes(run, True) // shard(run, part)
    if run.stage == 3 and run.world > 1:  # persistent trainable tensors' gradients stay whole too
        grads += int(persistent(run)[0] * weight_bytes(run, True) * (1 - 1 / run.world))
    return grads


def trainable_tensors(run: Run) -> list[tuple[str, int]]:
    """(name, elements) of the trainable parameters in `model.parameters()` order."""
    if run.method == "full":
        return model_tensors(run.shape)
    if run.method == "freeze":
        return freeze_tensors(run.shape, run.freeze_layers)
    return lora_tensors(run.shape, run.lora_target, run.lora_rank, run.dora)


def no_decay(name: str) -> bool:
    """transformers' Trainer.get_decay_parameter_names: biases and norm weights get no weight decay."""
    module = name.rsplit(".", 1)[0].rsplit(".", 1)[-1]
    return name.endswith("bias") or "norm" in module


def zero2_partition(run: Run) -> int:
    """Elements of ZeRO-2's gradient partition (stage_1_and_2.py `grads_in_partition`) on the fullest rank.
    The Trainer's two parameter groups (weight decay, none: `create_optimizer`) are partitioned apart;
    in each, DeepSpeed deals the tensors round-robin over the ranks (`round_robin_gradients`, set by the
    runtime's z1/z2: `_round_robin_reorder`), pads the flat buffer to a multiple of 2N elements and cuts N
    equal partitions; a rank's gradient buffer holds every tensor that starts in its partition or crosses
    into it (`get_partition_info`), whole: the partition plus what overhangs its edges."""
    n = run.world
    held = [0] * n
    groups = ([t for t in trainable_tensors(run) if no_decay(t[0]) == nd] for nd in (False, True))
    for group in groups:
        dealt = [k for r in range(n) for _, k in group[r::n]]
        if not dealt:  # DeepSpeed drops an empty group
            continue
        size = -(-sum(dealt) // (2 * n)) * 2  # the padded buffer's partition: ceil(total / 2N) * 2N / N
        start = 0
        for k in dealt:
            for rank in range(start // size, min((start + max(k, 1) - 1) // size, n - 1) + 1):
                held[rank] += k
            start += k
    return max(held)


def largest_param(run: Run) -> int:
    """Elements of the biggest trainable tensor (stage_1_and_2.py `largest_param_numel`)."""
    return max((k for _, k in trainable_tensors(run)), default=0)


def persistent(run: Run) -> tuple[int, int]:
    """ZeRO-3 keeps tensors of at most stage3_param_persistence_threshold elements (transformers' `auto`:
    10*H) whole on every rank (partition_parameters.py `ds_persist`: `ds_numel <= threshold`): (trainable,
    frozen) elements of them — the norms and biases, and with LoRA most adapter matrices (r*H < 10*H for
    r < 10) and DoRA's magnitude vectors (`out` elements each, peft dora.py `DoraLinearLayer`)."""
    threshold = 10 * run.shape.hidden
    small = sum(k for _, k in model_tensors(run.shape) if k <= threshold)
    trained = sum(k for _, k in trainable_tensors(run) if k <= threshold)
    return trained, small if run.method == "lora" else small - trained


def optimizer_states(run: Run) -> int:
    """AdamW's m and v per trainable parameter: fp32 under DeepSpeed (part of the paper's K=12), else the
    dtype of the trainable weights (torch.optim.AdamW's `zeros_like(param)`). ZeRO-1/2/3 and FSDP2: 1/N;
    offload: on the CPU."""
    if run.offload and (run.deepspeed or run.strategy == "fsdp2"):
        return 0
    per = run.optim_bytes or (4 if run.deepspeed else weight_bytes(run, True))
    part = run.deepspeed or run.strategy == "fsdp2"
    return run.trainable * run.optimizer_states * per // shard(run, part)


def master_weights(run: Run) -> int:
    """DeepSpeed's fp32 copy of the trainable partition (single_partition_of_fp32_groups,
    fp32_partitioned_groups_flat): 4/N per trainable parameter, even when the model is fp32 (it clones).
    Outside DeepSpeed the fp32 trainable weights are themselves the master: 0."""
    if not run.deepspeed or run.offload:
        return 0
    return run.trainable * 4 // run.world


# --- activations ------------------------------------------------------------------------------------


def norm_saved(width: int, r: int) -> int:
    """transformers' RMSNorm: `x.to(fp32)` (4 B, saved by pow and mul), rsqrt of the variance (4 B a row),
    and `y.to(input_dtype)` saved by `weight * y` (r B): 4*w + r*w + 4 per row."""
    return 4 * width + r * width + 4


def linear_inputs(width: int, consumers: int, r: int, c: int) -> int:
    """What the projections reading one tensor save: the input once when it is already in the compute
    dtype; under autocast from fp32 each F.linear casts (and saves) its own copy (autocast caches only
    leaf weights)."""
    return width * c * (consumers if r != c else 1)


def attention_core(run: Run) -> int:
    """Per token: sdpa/flash save q, k, v, the output and the fp32 log-sum-exp per head (k, v repeated to
    every head when a mask forces transformers' repeat_kv, `use_gqa_in_sdpa`); eager saves q, the repeated
    k and v, softmax's fp32 output and its cast (a*s scores per token each: quadratic in the sequence)."""
    s, c = run.shape, compute_bytes(run)
    if run.attention == "eager":
        return 3 * c * s.q_dim + (4 + c) * s.heads * run.seq
    kv = s.q_dim if (run.padded and run.attention == "sdpa") else s.kv_dim
    return c * (2 * s.q_dim + 2 * kv) + 4 * s.heads


def layer_activations_per_token(run: Run, moe: bool = False) -> int:
    """Bytes one decoder layer saves per token without checkpointing (Korthikanti et al. 2022, eq. 1's
    sum, adapted): two RMSNorms, the q/k/v inputs, q/k RMSNorm (Qwen3), the attention core, o_proj's
    input, gate/up inputs, and SwiGLU's four I-wide tensors (silu input, silu output, up, product)."""
    s, r, c = run.shape, residual_bytes(run), compute_bytes(run)
    total = 2 * norm_saved(s.hidden, r)
    total += linear_inputs(s.hidden, 3, r, c) + linear_inputs(s.hidden, 2, r, c)
    if s.qk_norm:
        total += (4 + c) * (s.q_dim + s.kv_dim) + 4 * (s.heads + s.kv_heads)
    total += attention_core(run)
    if run.attention == "eager":  # sdpa/flash return (b, s, heads, d) strides: o_proj's input is their output
        total += c * s.q_dim
    if moe:  # top-k experts each: its gathered input, SwiGLU, plus the router's fp32 softmax
        k = s.experts_per_token
        total += k * (c * s.hidden + 4 * c * s.moe_intermediate) + 8 * s.experts
        if s.shared_expert_intermediate:
            total += 4 * c * s.shared_expert_intermediate
    else:
        total += 4 * c * s.intermediate
    return total


def outside_layers_per_token(run: Run) -> int:
    """Embedding indices and shifted labels (int64), the final norm, lm_head's input, and the loss:
    ForCausalLMLoss upcasts the logits to fp32 and log_softmax saves its fp32 output (4*V)."""
    s, r, c = run.shape, residual_bytes(run), compute_bytes(run)
    return 16 + norm_saved(s.hidden, r) + c * s.hidden + 4 * s.vocab


def rotary(run: Run) -> int:
    """The rotary cos and sin every layer's q/k multiplication saves: one (1, seq, head_dim) pair in the
    residual dtype, shared by the batch (position ids broadcast) and by all layers."""
    return 2 * residual_bytes(run) * run.shape.head_dim * run.seq


def sdpa_mask(run: Run) -> int:
    """A padded batch's 4-D attention mask (b, 1, s, s), which sdpa saves in fp32 (one for all layers;
    eager only adds it to the scores, which saves nothing)."""
    if run.attention != "sdpa" or not run.padded:
        return 0
    return 4 * run.rows * run.seq * run.seq


def freeze_split(run: Run) -> tuple[int, int]:
    """(trainable layers, frozen layers above them) of a freeze run, without checkpointing: freeze trains
    the last freeze_trainable_layers layers (a negative count: the first ones). Nothing below the first
    trainable layer requires grad, so autograd saves nothing there; a frozen layer above it still passes
    gradients down and saves what its own backward needs for them. Other methods: (all layers, 0)."""
    layers = run.shape.layers
    if run.method != "freeze" or run.checkpointing:
        return layers, 0
    k = run.freeze_layers
    if k > 0:
        return min(k, layers), 0
    first = min(-k, layers) if k < 0 else layers
    return first, layers - first


def frozen_layer_per_token(run: Run, moe: bool = False) -> int:
    """What a frozen layer above a trainable one saves per token (measured op by op with
    saved_tensors_hooks): each RMSNorm its fp32 input and rsqrt (not its output: the weight takes no
    gradient), the attention core, and SwiGLU's silu input, silu output and up (not the product, nor any
    projection's input: the frozen weights take no gradient)."""
    s, c = run.shape, compute_bytes(run)
    total = 2 * (4 * s.hidden + 4) + attention_core(run)
    if s.qk_norm:
        total += 4 * (s.q_dim + s.kv_dim) + 4 * (s.heads + s.kv_heads)
    if moe:
        total += s.experts_per_token * 3 * c * s.moe_intermediate + 8 * s.experts
    else:
        total += 3 * c * s.intermediate
    return total


def layer_split(run: Run, count: int, upper: bool) -> tuple[int, int]:
    """(MoE, dense) among `count` layers, the upper or the lower ones (MoE layers are taken to be the
    upper ones: DeepSeek's first layers are dense)."""
    s = run.shape
    moe = min(count, s.moe_layers) if upper else max(0, count - s.dense_layers)
    return moe, count - moe


def forward_saved(run: Run) -> int:
    """What autograd holds for backward at the end of one micro-batch's forward. With checkpointing
    (transformers' per-layer gradient checkpointing) each layer keeps only its input, r*H per token."""
    s = run.shape
    if run.checkpointing:
        per_token = s.layers * residual_bytes(run) * s.hidden
    else:
        trained, frozen = freeze_split(run)
        upper = run.method != "freeze" or run.freeze_layers > 0
        moe, dense = layer_split(run, trained, upper)
        per_token = dense * layer_activations_per_token(run)
        per_token += moe * layer_activations_per_token(run, moe=True)
        moe, dense = layer_split(run, frozen, True)
        per_token += dense * frozen_layer_per_token(run) + moe * frozen_layer_per_token(run, moe=True)
    shared = 0 if run.checkpointing else rotary(run) + sdpa_mask(run)  # reentrant: only tensor args saved
    return (per_token + outside_layers_per_token(run)) * run.tokens + shared


def activations(run: Run) -> int:
    """forward_saved, plus with checkpointing the one layer backward recomputes at a time (its activations
    come back for a moment: Korthikanti et al. 2022 sec. 5, full recomputation)."""
    if not run.checkpointing:
        return forward_saved(run)
    moe = bool(run.shape.moe_layers)
    return forward_saved(run) + layer_activations_per_token(run, moe=moe) * run.tokens


def autocast_weight_copies(run: Run) -> int:
    """fp32 weights under bf16/fp16 autocast: every F.linear casts its weight and saves the copy for
    backward (trainable leaf weights are cached for the forward): 2 B per projection/head weight.
    DeepSpeed and pure_bf16 weights are already half: 0. ZeRO-3/FSDP2 hold one layer at a time, which the
    all-gather term already covers."""
    if not half(run) or run.deepspeed or run.pure_bf16 or run.strategy == "fsdp2":
        return 0
    if weight_bytes(run, True) != 4 and weight_bytes(run, False) != 4:
        return 0
    if run.checkpointing:  # only the head's copy outlives its layer, and only an fp32 head is copied
        return 2 * run.shape.vocab * run.shape.hidden if weight_bytes(run, run.method == "full") == 4 else 0
    if run.method == "freeze":  # the layers that save (freeze_split), where their weights are fp32
        trained, frozen = freeze_split(run)
        on_path = trained + (frozen if weight_bytes(run, trainable=False) == 4 else 0)
        per_layer = (linear_weight_params(run.shape) - run.shape.vocab * run.shape.hidden) // run.shape.layers
        return 2 * per_layer * on_path
    if run.method == "full" or run.device == "cpu":
        return 2 * linear_weight_params(run.shape)
    return 0


def reference_model(run: Run) -> int:
    """DPO/KTO's frozen reference when it is a copy (runtime/stages/reference.py load_reference): the model
    loaded as the policy is (same dtype rules), whole on every rank under DDP, FSDP2 and ZeRO-1/2 (the
    copy goes through a stage-0 engine there), partitioned 1/N under ZeRO-3 (a stage-3 engine, as trl's
    prepare_deepspeed does). LoRA's reference is the adapter switched off: no copy. Its forward runs under
    no_grad, so it saves no activations; its logits come and go like the policy's (logits + loss)."""
    if not run.reference_copy:
        return 0
    per_weight = weight_bytes(run, trainable=run.method == "full")
    return total_params(run.shape) * per_weight // shard(run, run.stage == 3)


# --- temporary buffers ------------------------------------------------------------------------------


def logits_and_loss(run: Run) -> int:
    """The logits in the compute dtype (held by the model output) and their fp32 upcast in
    ForCausalLMLoss while log_softmax runs: (c + 4) * V per token (its saved output is in activations)."""
    c = compute_bytes(run)
    return (c + (4 if c != 4 else 0)) * run.shape.vocab * run.tokens


def ddp_buckets(run: Run) -> int:
    """torch DDP's reducer keeps flat bucket tensors covering every trainable gradient
    (gradient_as_bucket_view=False, transformers' default): one more copy of the gradients."""
    return run.trainable * weight_bytes(run, True) if run.strategy == "ddp" and run.world > 1 else 0


def zero_buckets(run: Run) -> int:
    """DeepSpeed's communication buffers (runtime/contract/zero.py): ZeRO-1/2 allocate the contiguous
    gradient bucket of reduce_bucket_size (5e8) elements in the model dtype at the first gradient of each
    backward (stage_1_and_2 `setup_buckets`, whatever the trainable count: 2 GB in fp32, measured at
    ZeRO-1), and an fp32 gradient partition at step (4/N per trainable parameter); with offload, a
    device-side staging buffer of the largest trainable tensor (`temp_grad_buffer_for_gpu_offload`)
    instead. ZeRO-3: reduce bucket (H*H, auto) plus the prefetch bucket (0.9*H*H, auto), half dtype."""
    if not run.deepspeed:
        return 0
    h, c = run.shape.hidden, compute_bytes(run)
    if run.stage == 3:
        return int((h * h + 0.9 * h * h) * c)
    bucket = ZERO12_REDUCE_BUCKET * c
    if run.offload:
        return bucket + largest_param(run) * weight_bytes(run, True)
    return bucket + run.trainable * 4 // run.world


def gathered_layers(run: Run) -> int:
    """ZeRO-3 / FSDP2 all-gather the current layer's full weights in the compute dtype (FSDP2 also
    prefetches the next: 2 layers; its unsharded gradients of one layer wait for the reduce-scatter)."""
    if run.stage != 3 and run.strategy != "fsdp2":
        return 0
    s, c = run.shape, compute_bytes(run)
    layer = layer_params(s, bool(s.moe_layers))
    biggest = max(layer, s.vocab * s.hidden)
    if run.strategy == "fsdp2":
        grads = layer * weight_bytes(run, True) if run.method == "full" else 0
        return 2 * biggest * c + grads
    return biggest * c


@dataclass(frozen=True)
class Term:
    name: str
    bytes: int
    kind: str  # state | activation | buffer


def breakdown(run: Run) -> list[Term]:
    """Every term for one run, per device."""
    return [
        Term("parameters", parameters(run), "state"),
        Term("gradients", gradients(run), "state"),
        Term("optimizer states", optimizer_states(run), "state"),
        Term("master weights", master_weights(run), "state"),
        Term("reference model", reference_model(run), "state"),
        Term("activations", activations(run), "activation"),
        Term("autocast weight copies", autocast_weight_copies(run), "activation"),
        Term("logits + loss", logits_and_loss(run), "buffer"),
        Term("DDP gradient buckets", ddp_buckets(run), "buffer"),
        Term("ZeRO buckets", zero_buckets(run), "buffer"),
        Term("all-gathered layer", gathered_layers(run), "buffer"),
    ]


def peak(run: Run) -> int:
    """The sum of the terms: they are alive together at the end of the forward or the start of the
    backward (states, saved activations, the logits, the communication buffers), so the sum is the peak
    up to allocator fragmentation (which the headroom covers)."""
    return sum(t.bytes for t in breakdown(run))
