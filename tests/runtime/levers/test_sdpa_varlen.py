"""`flash_attn: sdpa_varlen` (runtime/levers/sdpa_varlen.py): sdpa once per packed example must give each
example the logits and gradients it gets alone, on CPU, for a GQA Llama; padded batches must be plain sdpa;
models whose attention is not plain causal must be refused before loading."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from runtime.levers import sdpa_varlen  # noqa: E402

TOL = 1e-5


@pytest.fixture
def llama(small_llama):
    """llama(attn, dropout=0.0) -> conftest's small GQA Llama (two query heads per key/value head) running
    the attention implementation `attn` (NAME registered first)."""

    def make(attn: str, dropout: float = 0.0):
        sdpa_varlen.register()
        model = small_llama(attention_dropout=dropout)
        model.config._attn_implementation = attn
        return model

    return make


def examples(lengths: list[int], seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 97, (n,), generator=g) for n in lengths]


def packed_row(seqs: list[torch.Tensor], pads: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One row: the examples back to back, positions restarting at 0, then `pads` pad tokens at position 0
    (how the neat-packing and padding-free collators pad)."""
    ids = torch.cat([*seqs, torch.zeros(pads, dtype=torch.long)])
    pos = torch.cat([torch.arange(len(s)) for s in seqs] + [torch.zeros(pads, dtype=torch.long)])
    return ids[None], pos[None]


def test_sequence_starts_and_single_token_runs() -> None:
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 0, 0], [3, 4, 0, 1, 2, 3, 0, 1]])
    assert sdpa_varlen.sequence_starts(pos) == [[0, 3, 5, 6, 7, 8], [0, 2, 6, 8]]
    assert sdpa_varlen.runs_of_single_tokens([0, 3, 5, 6, 7, 8]) == [
        (0, 3, False),
        (3, 5, False),
        (5, 8, True),  # three one-token sequences: one span, no kernel
    ]
    assert sdpa_varlen.runs_of_single_tokens([0, 1, 4]) == [(0, 1, True), (1, 4, False)]


def test_starts_are_computed_once_per_position_ids_and_again_after_a_write() -> None:
    pos = torch.tensor([[0, 1, 2, 0, 1]])
    first = sdpa_varlen.starts_once_per_forward(pos)
    assert first == [[0, 3, 5]] and sdpa_varlen.starts_once_per_forward(pos) is first  # next layer
    assert sdpa_varlen.starts_once_per_forward(torch.tensor([[0, 1, 2, 0, 1]])) == [[0, 3, 5]]
    pos[0, 1] = 0  # written in place: the version changed, the offsets are computed again
    assert sdpa_varlen.starts_once_per_forward(pos) == [[0, 1, 3, 5]]
    other = torch.tensor([[0, 0, 1, 2, 3]])  # a new forward's tensor
    assert sdpa_varlen.starts_once_per_forward(other) == [[0, 1, 5]]
    with torch.inference_mode():  # no version counter there: computed each time
        frozen = torch.tensor([[0, 1, 0]])
        assert sdpa_varlen.starts_once_per_forward(frozen) == [[0, 2, 3]]


def test_packed_row_equals_each_example_alone_forward_and_gradients(llama) -> None:
    """One packed row (with pad tokens at the end, as neat rows have) against each example run alone with
    plain sdpa: logits, and the gradient of a loss over the real tokens, within 1e-5."""
    lengths = [7, 1, 19, 3, 1, 1, 12]  # one-token examples inside and at the end too
    seqs = examples(lengths)
    varlen, plain = llama(sdpa_varlen.NAME), llama("sdpa")
    ids, pos = packed_row(seqs, pads=5)
    packed = varlen(input_ids=ids, position_ids=pos).logits[0]
    real = sum(lengths)
    weights = torch.randn(real, 97, generator=torch.Generator().manual_seed(2))
    (packed[:real] * weights).sum().backward()
    offset, worst = 0, 0.0
    alone_total = 0
    for seq in seqs:
        alone = plain(input_ids=seq[None]).logits[0]
        worst = max(worst, (packed[offset : offset + len(seq)] - alone).abs().max().item())
        alone_total = alone_total + (alone * weights[offset : offset + len(seq)]).sum()
        offset += len(seq)
    alone_total.backward()
    assert worst < TOL
    for (name, a), (_, b) in zip(varlen.named_parameters(), plain.named_parameters(), strict=True):
        assert (a.grad - b.grad).abs().max().item() < TOL * max(1.0, b.grad.abs().max().item()), name
    # Control: the same row with plain sdpa and positions from 0 to the end lets examples see each other.
    with torch.no_grad():
        leaky = plain(input_ids=ids).logits[0]
    assert (leaky[:real] - packed[:real].detach()).abs().max().item() > 1e-3


def test_several_rows_and_the_model_level_mask_path(llama) -> None:
    """Two packed rows in one batch, and a padded batch with an attention_mask (evaluation): the latter must
    be exactly sdpa's result, masks and all."""
    varlen, plain = llama(sdpa_varlen.NAME), llama("sdpa")
    a, b = examples([5, 9, 2], seed=3), examples([11, 4], seed=4)
    (ids_a, pos_a), (ids_b, pos_b) = packed_row(a, pads=1), packed_row(b, pads=2)
    ids, pos = torch.cat([ids_a, ids_b]), torch.cat([pos_a, pos_b])
    with torch.no_grad():
        both = varlen(input_ids=ids, position_ids=pos).logits
        for row, seqs in ((0, a), (1, b)):
            offset = 0
            for seq in seqs:
                alone = plain(input_ids=seq[None]).logits[0]
                assert (both[row, offset : offset + len(seq)] - alone).abs().max().item() < TOL
                offset += len(seq)
        mask = torch.tensor([[1] * 16, [1] * 10 + [0] * 6])
        padded = torch.randint(3, 97, (2, 16), generator=torch.Generator().manual_seed(5))
        got = varlen(input_ids=padded, attention_mask=mask).logits
        want = plain(input_ids=padded, attention_mask=mask).logits
    assert (got - want).abs().max().item() < TOL


def test_dropout_runs_every_sequence_through_sdpa(llama) -> None:
    """With attention dropout in training no one-token shortcut is taken (dropout applies there too)."""
    model = llama(sdpa_varlen.NAME, dropout=0.5).train()
    ids, pos = packed_row(examples([4, 1, 1, 6]), pads=0)
    calls = []
    from transformers.integrations import sdpa_attention

    real = sdpa_attention.sdpa_attention_forward

    def spy(*args, **kwargs):
        calls.append(args[1].shape[2])
        return real(*args, **kwargs)

    sdpa_attention.sdpa_attention_forward = spy
    try:
        model(input_ids=ids, position_ids=pos)
    finally:
        sdpa_attention.sdpa_attention_forward = real
    assert calls == [4, 1, 1, 6] * 2  # every sequence, both layers


def test_models_whose_attention_is_not_plain_causal_are_refused() -> None:
    from transformers import Gemma2Config, LlamaConfig, MistralConfig, Qwen2Config

    assert sdpa_varlen.why_not(LlamaConfig()) is None
    assert sdpa_varlen.why_not(MistralConfig(sliding_window=None)) is None
    assert "sliding window of 4096" in sdpa_varlen.why_not(MistralConfig(sliding_window=4096))
    assert sdpa_varlen.why_not(Qwen2Config(use_sliding_window=False)) is None
    assert sdpa_varlen.why_not(Qwen2Config(use_sliding_window=True, sliding_window=1024))
    assert sdpa_varlen.why_not(Gemma2Config())  # sliding layers and soft-capping


def test_load_model_falls_back_to_sdpa_for_a_sliding_window_model(tmp_path, caplog, llama) -> None:
    """runtime.model: `flash_attn: sdpa_varlen` on a model it cannot serve loads sdpa, with one warning."""
    from transformers import MistralConfig, MistralForCausalLM

    from runtime.config import TrainConfig
    from runtime.model import load_model

    config = MistralConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, vocab_size=50, sliding_window=16,
    )  # fmt: skip
    MistralForCausalLM(config).save_pretrained(tmp_path / "mistral")
    cfg = TrainConfig(model_name_or_path=str(tmp_path / "mistral"), flash_attn="sdpa_varlen")
    with caplog.at_level("WARNING", logger="xgen-runtime"):
        model = load_model(cfg, stage="sft", device="cpu")
    assert model.config._attn_implementation == "sdpa"
    assert "sdpa_varlen: the model uses a sliding window of 16 tokens; using sdpa" in caplog.text
    llama(sdpa_varlen.NAME).save_pretrained(tmp_path / "llama")
    cfg = TrainConfig(model_name_or_path=str(tmp_path / "llama"), flash_attn="sdpa_varlen")
    assert load_model(cfg, stage="sft", device="cpu").config._attn_implementation == sdpa_varlen.NAME
