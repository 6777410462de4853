"""do_predict's pieces without a model: the rows each rank takes, left padding, where a reply ends, and
the generate keywords LLaMA-Factory builds from its GeneratingArguments."""

from __future__ import annotations

import dataclasses

import pytest

from runtime.fit.predict import generation_kwargs, left_pad, reply_ids, share, stop_ids


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("rows", [0, 1, 5, 7, 8])
def test_every_row_is_generated_once(rows: int, world_size: int) -> None:
    shares = [share(rows, rank, world_size) for rank in range(world_size)]
    assert sorted(r for part in shares for r in part) == list(range(rows))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1  # no padding rows: one shorter at most


def test_left_padding() -> None:
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_a_reply_ends_at_its_first_stop_token() -> None:
    assert reply_ids([4, 9, 2, 0, 0], {2, 3}) == [4, 9, 2]
    assert reply_ids([4, 9, 3, 2, 2], {2, 3}) == [4, 9, 3]
    assert reply_ids([4, 9], {2}) == [4, 9]  # max_new_tokens reached


def test_generate_keywords_are_llamafactory_gen_kwargs(data_cfg, tiny_tokenizer) -> None:
    from runtime.data import resolve_template

    cfg = data_cfg(eval_dataset="tiny_alpaca", do_predict=True, predict_with_generate=True)
    resolve_template("llama3", tiny_tokenizer)  # its first stop word becomes EOS, the other one special
    kwargs = generation_kwargs(cfg, tiny_tokenizer)
    assert kwargs == {
        "do_sample": True,
        "temperature": 0.95,
        "top_p": 0.7,
        "top_k": 50,
        "num_beams": 1,
        "repetition_penalty": 1.0,
        "length_penalty": 1.0,
        "max_new_tokens": 1024,
        "eos_token_id": stop_ids(tiny_tokenizer),
        "pad_token_id": tiny_tokenizer.pad_token_id,
    }
    eot, eom = tiny_tokenizer.convert_tokens_to_ids(["<|eot_id|>", "<|eom_id|>"])
    stops = stop_ids(tiny_tokenizer)
    assert stops[0] == eot == tiny_tokenizer.eos_token_id
    assert eom in stops and len(set(stops)) == len(stops)
    # GeneratingArguments.to_dict: max_length only when max_new_tokens <= 0; greedy reads no sampling keys
    greedy_cfg = dataclasses.replace(cfg, max_new_tokens=0, do_sample=False)
    greedy = generation_kwargs(greedy_cfg, tiny_tokenizer)
    assert greedy["max_length"] == 1024 and "max_new_tokens" not in greedy
    assert not {"temperature", "top_p", "top_k"} & set(greedy)


def test_left_padded_batch_generates_what_each_prompt_generates_alone(small_llama) -> None:
    """transformers places a left-padded row's positions after its padding: batching changes no reply."""
    import torch

    model = small_llama().eval()
    prompts = [[1, 50, 60, 70, 80, 90, 11], [1, 40, 30]]
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=[96], use_cache=True)
    ids, mask = left_pad(prompts, 0)
    with torch.no_grad():
        batched = model.generate(input_ids=ids, attention_mask=mask, **kwargs)[:, ids.shape[1] :].tolist()
        alone = [
            model.generate(
                input_ids=torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long), **kwargs
            )[0, len(p) :].tolist()
            for p in prompts
        ]
    assert [reply_ids(r, {96}) for r in batched] == alone  # a finished row is padded after its stop
