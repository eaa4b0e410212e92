"""Multi-token appends into a live KV cache (chunked prefill): ``herd.model.generate.extend`` over ``KVCache``
and the engine's slot pool give the full forward's logits for chunks that start mid-chunk, cross chunk boundaries
and are longer than a chunk, on chunked and NoPE layers alike."""

from __future__ import annotations

import pytest
import torch

from herd.model import Llama4, ModelConfig
from herd.model.generate import KVCache, decode_step, extend, prefill

CHUNK = 8


@pytest.fixture(scope="module")
def model() -> Llama4:
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core box: 2-thread kernels spin-wait against other processes
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=300,
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
    yield Llama4(cfg).eval()
    torch.set_num_threads(n)


@torch.no_grad()
def test_extend_equals_full_forward_across_chunks(model: Llama4) -> None:
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(13, 300, (60,), generator=g).tolist() for _ in range(2)]
    cache = KVCache(model.config, 2, max_len=64)
    lens = [5, 3]  # rows start at different positions, so each chunk below lands differently in each row
    prefill(model, cache, [s[:n] for s, n in zip(seqs, lens, strict=True)])
    full = [model(torch.tensor([s])).logits[0] for s in seqs]
    for S in (3, 9, 1, 12, 17):  # mid-chunk starts, crossings, longer than a chunk, a single token
        toks = torch.tensor([s[n : n + S] for s, n in zip(seqs, lens, strict=True)])
        got = extend(model, cache, toks)
        for b, n in enumerate(lens):
            assert (got[b] - full[b][n : n + S]).abs().max().item() <= 1e-4
        lens = [n + S for n in lens]
    assert cache.lengths == lens
    # decoding continues from the extended cache
    nxt = torch.tensor([s[n] for s, n in zip(seqs, lens, strict=True)])
    logits = decode_step(model, cache, nxt)
    for b, n in enumerate(lens):
        assert (logits[b] - full[b][n]).abs().max().item() <= 1e-4


def test_extend_refuses_overflow(model: Llama4) -> None:
    cache = KVCache(model.config, 1, max_len=10)
    prefill(model, cache, [[13, 14, 15, 16]])
    with pytest.raises(ValueError, match="KV cache full"):
        extend(model, cache, torch.tensor([[20] * 7]))


@torch.no_grad()
def test_engine_prefill_chunks_equal_full_forward(model: Llama4) -> None:
    """The engine prefills in budget-sized chunks at odd offsets; echo logprobs cover every prompt position."""
    from herd.serve.engine import Engine, EngineConfig

    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(13, 300, (45,), generator=g).tolist()
    lp = torch.log_softmax(model(torch.tensor([prompt])).logits[0], -1)
    want = [lp[i - 1, prompt[i]].item() for i in range(1, len(prompt))]
    for budget in (1, 3, 7, 8, 13, 64):
        eng = Engine(
            model, None, EngineConfig(max_num_seqs=1, max_model_len=64, max_num_batched_tokens=budget)
        )
        got = eng.score([prompt])[0].token_logprobs
        assert got[0] is None and got[1:] == pytest.approx(want, abs=1e-4), budget
        eng.shutdown()


@torch.no_grad()
def test_engine_fresh_prompts_attended_as_one_block_equal_full_forward(model: Llama4) -> None:
    """Several new prompts admitted in one step are attended as one block-masked call (``kv._attend_fresh``):
    their prompt logprobs and the greedy tokens decoded from the keys it wrote equal each prompt's own forward
    (lengths below, at and across the chunk, wrapping the chunked layers' slot buffer)."""
    from herd.serve.engine import Engine, EngineConfig, SamplingParams

    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(13, 300, (n,), generator=g).tolist() for n in (5, 8, 12, 20, 17, 2)]
    eng = Engine(model, None, EngineConfig(max_num_seqs=len(prompts), max_model_len=64, max_num_batched_tokens=128))
    try:
        outs = eng.generate_batch(
            prompts, SamplingParams(max_tokens=6, temperature=0, ignore_eos=True, logprobs=0, prompt_logprobs=0)
        )
    finally:
        eng.shutdown()
    for p, out in zip(prompts, outs, strict=True):
        seq = p + out.token_ids
        lp = torch.log_softmax(model(torch.tensor([seq])).logits[0], -1)
        assert out.prompt_logprobs is not None and out.logprobs is not None
        assert out.prompt_logprobs[1:] == pytest.approx([lp[i - 1, p[i]].item() for i in range(1, len(p))], abs=1e-4)
        for j, t in enumerate(out.token_ids):
            i = len(p) + j - 1  # the row that predicted generated token j
            assert t == int(lp[i].argmax()) and out.logprobs[j] == pytest.approx(lp[i, t].item(), abs=1e-4)
