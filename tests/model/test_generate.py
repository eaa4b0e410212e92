"""Inference core: cached decoding equals the no-cache forward across chunk boundaries, batched prompts of
different lengths equal running them alone, chunk-only caches, sampling with a seed, stop tokens."""

from __future__ import annotations

import pytest
import torch

from herd.model import Llama4, ModelConfig
from herd.model.generate import KVCache, SamplingParams, decode_step, generate, prefill, sample

CHUNK = 8


@pytest.fixture(scope="module")
def model() -> Llama4:
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=400,
        hidden_size=64,
        intermediate_size=96,
        intermediate_size_mlp=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        attention_chunk_size=CHUNK,
        no_rope_layer_interval=2,
        floor_scale=4,
        initializer_range=0.1,
    )
    return Llama4(cfg).eval()


def _prompts(lengths: list[int], seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(13, 400, (n,), generator=g).tolist() for n in lengths]


@torch.no_grad()
def test_cached_decoding_equals_full_forward_across_chunk_boundaries(model: Llama4) -> None:
    prompts = _prompts([5, 11, 8, 1])  # ends mid-chunk, past a chunk, exactly on a boundary, a single token
    cache = KVCache(model.config, len(prompts), max_len=40)
    logits = prefill(model, cache, prompts)
    seqs = [list(p) for p in prompts]
    worst = 0.0
    for _ in range(22):  # every row crosses at least two chunk boundaries while decoding
        for b, seq in enumerate(seqs):
            full = model(torch.tensor([seq])).logits[0, -1]
            worst = max(worst, (full - logits[b]).abs().max().item())
        nxt = logits.argmax(-1)
        for b, seq in enumerate(seqs):
            seq.append(int(nxt[b]))
        logits = decode_step(model, cache, nxt)
    assert worst <= 1e-4, worst


def test_chunked_layers_keep_only_their_chunk(model: Llama4) -> None:
    cache = KVCache(model.config, 2, max_len=100)
    for i, k in enumerate(cache.k):
        assert k.shape[2] == (CHUNK if model.config.uses_rope(i) else 100)


def test_batched_generate_equals_one_by_one(model: Llama4) -> None:
    prompts = _prompts([3, 14, 9], seed=1)
    params = SamplingParams(max_new_tokens=15, stop_tokens=[])
    together = generate(model, prompts, params)
    alone = [generate(model, [p], params)[0] for p in prompts]
    assert together == alone
    assert all(len(g.tokens) == 15 and g.finish_reason == "length" for g in together)


def test_stop_tokens_end_a_row_and_are_not_returned(model: Llama4) -> None:
    prompts = _prompts([6, 10], seed=2)
    free = generate(model, prompts, SamplingParams(max_new_tokens=12, stop_tokens=[]))
    stop = free[0].tokens[4]
    first = free[0].tokens.index(stop)
    out = generate(model, prompts, SamplingParams(max_new_tokens=12, stop_tokens=[stop]))
    assert out[0].tokens == free[0].tokens[:first] and out[0].finish_reason == "stop"
    if stop not in free[1].tokens:  # the other row is unaffected by row 0 leaving the batch
        assert out[1].tokens == free[1].tokens and out[1].finish_reason == "length"


def test_sampling_is_seeded_and_filters_reduce_to_greedy(model: Llama4) -> None:
    prompts = _prompts([7, 4], seed=3)
    hot = SamplingParams(max_new_tokens=10, temperature=1.5, seed=11, stop_tokens=[])
    a, b = generate(model, prompts, hot), generate(model, prompts, hot)
    c = generate(model, prompts, SamplingParams(**{**hot.__dict__, "seed": 12}))
    assert a == b and a != c
    greedy = generate(model, prompts, SamplingParams(max_new_tokens=10, stop_tokens=[]))
    for narrow in ({"top_k": 1}, {"top_p": 1e-6}):
        assert generate(model, prompts, SamplingParams(**{**hot.__dict__, **narrow})) == greedy


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    draws = {int(sample(logits, SamplingParams(temperature=1.0, top_p=0.75), g)) for _ in range(200)}
    assert draws == {0, 1}


def test_bad_requests_get_clear_errors(model: Llama4) -> None:
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[]])
    with pytest.raises(ValueError, match="top_p"):
        generate(model, [[1, 2]], SamplingParams(top_p=0.0))
    cache = KVCache(model.config, 1, max_len=4)
    with pytest.raises(ValueError, match="do not fit"):
        prefill(model, cache, [[1, 2, 3, 4, 5]])


def test_ragged_batch_decodes_under_bf16_autocast(model: Llama4) -> None:
    # RL rollouts sample under the trainer's bf16 autocast: k/v arrive in bf16 into the model-dtype cache, and
    # rows of different lengths take the advanced-index write path
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = generate(model, [[1, 2, 3], [4, 5, 6, 7, 8]], SamplingParams(max_new_tokens=3))
    assert [len(g.tokens) for g in out] == [3, 3]
    assert all(0 <= t < model.config.vocab_size for g in out for t in g.tokens)
