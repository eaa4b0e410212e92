"""herd.serve.engine correctness: greedy output equals herd.model.generate and the full forward while requests
join and leave mid-flight across chunk boundaries; seeded sampling independent of batch mates; stop ids and
strings; echo/score logprobs equal the full forward's log-softmax; abort frees the slot; clear request errors."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from herd.model import Llama4, ModelConfig
from herd.model.generate import SamplingParams as GenParams
from herd.model.generate import generate
from herd.serve.engine import (
    Engine,
    EngineConfig,
    EngineRequestError,
    PromptTooLongError,
    SamplingParams,
    generate_once,
)

CHUNK = 8
V = 400


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # the suite shares 2 cores: torch's 2-thread kernels spin-wait against other processes (60x slower at load)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model() -> Llama4:
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=V,
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
    return [torch.randint(13, V, (n,), generator=g).tolist() for n in lengths]


def _engine(model: Llama4, slots: int = 3, budget: int = 7, max_len: int = 96, tokenizer=None) -> Engine:
    return Engine(
        model,
        tokenizer,
        EngineConfig(max_num_seqs=slots, max_model_len=max_len, max_num_batched_tokens=budget),
    )


GREEDY = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)


def test_greedy_equals_generate_with_requests_joining_and_leaving(model: Llama4) -> None:
    # 3 slots, 7-token budget: prompts are prefilled in chunks that start mid-chunk (odd offsets), rows of
    # different lengths decode together, and the later prompts join as the first ones finish
    lengths = [5, 11, 8, 1, 30, 17, 23, 2]
    max_tokens = [20, 3, 14, 9, 20, 1, 12, 17]
    prompts = _prompts(lengths)
    params = [SamplingParams(max_tokens=m, temperature=0.0, ignore_eos=True) for m in max_tokens]
    eng = _engine(model)
    outs = eng.generate_batch(prompts, params)
    for p, m, o in zip(prompts, max_tokens, outs, strict=True):
        ref = generate(model, [p], GenParams(max_new_tokens=m, stop_tokens=[]))[0]
        assert o.token_ids == ref.tokens
        assert o.finish_reason == "length" and o.usage["completion_tokens"] == m
    assert eng.stats()["free_slots"] == 3 and eng.stats()["running"] == 0
    # chunked layers keep one chunk per slot, NoPE layers the whole context
    assert [k.shape[2] for k in eng.core.kv.k] == [CHUNK, 96, CHUNK, 96]


@torch.no_grad()
def test_greedy_equals_full_forward_argmax(model: Llama4) -> None:
    prompt = _prompts([13], seed=3)[0]
    out = _engine(model, slots=2, budget=4).generate_batch([prompt], GREEDY)[0]
    seq = list(prompt)
    for _ in range(20):
        seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    assert out.token_ids == seq[len(prompt) :]


@torch.no_grad()
def test_runs_under_bf16_autocast_like_a_bf16_trainer(model: Llama4) -> None:
    # RL samples from a policy that trains under bf16 autocast: the fp32 slots take bf16 k/v, and the answers
    # stay the same as the full forward's under the same autocast (it rounds the same matmuls)
    prompts = _prompts([13, 4, 21], seed=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = _engine(model, slots=3, budget=16).generate_batch(prompts, GREEDY)
        first = [int(model(torch.tensor([p])).logits[0, -1].argmax()) for p in prompts]
    assert all(len(o.token_ids) == GREEDY.max_tokens for o in outs)
    assert [o.token_ids[0] for o in outs] == first


@torch.no_grad()
def test_generate_once_equals_a_sized_engine_and_needs_max_tokens(model: Llama4) -> None:
    # the throwaway engine evaluation, the judge and RL rollouts use: same greedy tokens as generate(), its
    # hooks removed afterwards (the model's own forward is unchanged), and slots sized by max_tokens
    prompts = _prompts([5, 17, 9], seed=7)
    outs = generate_once(model, prompts, GREEDY, max_num_seqs=2, max_num_batched_tokens=8)
    for p, o in zip(prompts, outs, strict=True):
        assert o.token_ids == generate(model, [p], GenParams(max_new_tokens=20, stop_tokens=[]))[0].tokens
    with pytest.raises(EngineRequestError, match="max_tokens"):
        generate_once(model, prompts, SamplingParams(max_tokens=None), max_num_seqs=2, max_num_batched_tokens=8)
    assert generate_once(model, [], GREEDY, max_num_seqs=2, max_num_batched_tokens=8) == []


def test_seeded_sampling_independent_of_batch_mates(model: Llama4) -> None:
    p = SamplingParams(max_tokens=16, temperature=0.9, top_k=50, top_p=0.9, seed=7, ignore_eos=True)
    target = _prompts([9], seed=5)[0]
    alone = _engine(model).generate_batch([target], p)[0].token_ids
    others = _prompts([4, 20, 2], seed=6)
    mixed_params = [SamplingParams(max_tokens=10, temperature=1.2, seed=None, ignore_eos=True), p]
    mixed = (
        _engine(model, slots=4, budget=13)
        .generate_batch(
            [others[0], target, others[1], others[2]], [mixed_params[0], p, mixed_params[0], GREEDY]
        )[1]
        .token_ids
    )
    assert mixed == alone
    other_seed = SamplingParams(max_tokens=16, temperature=0.9, top_k=50, top_p=0.9, seed=8, ignore_eos=True)
    assert _engine(model).generate_batch([target], other_seed)[0].token_ids != alone


def test_top_k_one_and_tiny_top_p_are_greedy(model: Llama4) -> None:
    prompts = _prompts([6, 10])
    eng = _engine(model)
    greedy = [o.token_ids for o in eng.generate_batch(prompts, GREEDY)]
    for p in (
        SamplingParams(max_tokens=20, temperature=1.5, top_k=1, ignore_eos=True),
        SamplingParams(max_tokens=20, temperature=1.5, top_p=1e-6, ignore_eos=True),
    ):
        assert [o.token_ids for o in eng.generate_batch(prompts, p)] == greedy


def test_stop_token_ids_end_the_sequence_and_say_which(model: Llama4) -> None:
    prompt = _prompts([7], seed=1)[0]
    eng = _engine(model)
    full = eng.generate_batch([prompt], GREEDY)[0].token_ids
    stop = full[5]
    first = full.index(stop)
    out = eng.generate_batch(
        [prompt], SamplingParams(max_tokens=20, temperature=0, stop_token_ids=[999 % V, stop])
    )[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.token_ids == full[: first + 1]  # the stop token is included (vLLM's convention)


def test_echo_and_generated_logprobs_equal_full_forward(model: Llama4) -> None:
    prompts = _prompts([12, 3, 19], seed=2)
    eng = _engine(model, budget=5)
    params = SamplingParams(max_tokens=3, temperature=0, prompt_logprobs=2, logprobs=3, ignore_eos=True)
    for p, o in zip(prompts, eng.generate_batch(prompts, params), strict=True):
        seq = p + o.token_ids
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([seq])).logits[0].float(), -1)
        assert (
            o.prompt_logprobs is not None
            and o.prompt_logprobs[0] is None
            and len(o.prompt_logprobs) == len(p)
        )
        want = [lp[i - 1, p[i]].item() for i in range(1, len(p))]
        assert o.prompt_logprobs[1:] == pytest.approx(want, abs=1e-4)
        assert o.prompt_top_logprobs is not None and o.prompt_top_logprobs[0] is None
        for i, top in enumerate(o.prompt_top_logprobs[1:], start=1):
            assert 2 <= len(top) <= 3 and p[i] in top  # top-2 plus the actual token
            assert int(lp[i - 1].argmax()) in top
        gen = [lp[len(p) - 1 + j, t].item() for j, t in enumerate(o.token_ids)]
        assert o.logprobs == pytest.approx(gen, abs=1e-4)
        assert o.top_logprobs is not None and all(
            len(t) == 3 for t in o.top_logprobs
        )  # greedy: chosen in top-3


def test_score_equals_full_forward(model: Llama4) -> None:
    seqs = _prompts([20, 2, 9], seed=4)
    eng = _engine(model, budget=6)
    for s, sc in zip(seqs, eng.score(seqs, top_logprobs=1), strict=True):
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([s])).logits[0].float(), -1)
        assert sc.token_logprobs[0] is None and sc.is_greedy[0] is None
        assert sc.token_logprobs[1:] == pytest.approx(
            [lp[i - 1, s[i]].item() for i in range(1, len(s))], abs=1e-4
        )
        assert sc.is_greedy[1:] == [int(lp[i - 1].argmax()) == s[i] for i in range(1, len(s))]
        total, _ = sc.loglikelihood(1)
        assert total == pytest.approx(sum(lp[i - 1, s[i]].item() for i in range(1, len(s))), abs=1e-3)
    assert eng.stats()["free_slots"] == 3


def test_request_errors_are_typed_and_name_the_field(model: Llama4) -> None:
    eng = _engine(model, max_len=32)
    with pytest.raises(PromptTooLongError, match="maximum context length is 32") as e:
        eng.generate_batch(_prompts([40]), GREEDY)
    assert e.value.param == "prompt"
    with pytest.raises(PromptTooLongError, match="max_tokens") as e:
        eng.generate_batch(_prompts([20]), SamplingParams(max_tokens=20))
    assert e.value.param == "max_tokens"
    with pytest.raises(EngineRequestError, match="temperature") as e:
        eng.generate_batch(_prompts([3]), SamplingParams(temperature=-1))
    assert e.value.param == "temperature"
    with pytest.raises(EngineRequestError, match="empty"):
        eng.generate_batch([[]], GREEDY)
    with pytest.raises(EngineRequestError, match=r"\[0, 400\)"):
        eng.generate_batch([[1, 400]], GREEDY)
    with pytest.raises(EngineRequestError, match="tokenizer"):
        eng.generate_batch(_prompts([3]), SamplingParams(stop=["x"]))
    out = eng.generate_batch(_prompts([20]), SamplingParams(max_tokens=None, temperature=0, ignore_eos=True))[
        0
    ]
    assert len(out.token_ids) == 12 and out.finish_reason == "length"  # None: up to the context
    assert eng.stats()["free_slots"] == 3 and eng.stats()["waiting"] == 0


def test_async_streams_equal_sync_and_abort_frees_the_slot(model: Llama4) -> None:
    prompts = _prompts([5, 14, 9, 2], seed=9)
    eng = _engine(model, slots=2)
    want = [o.token_ids for o in eng.generate_batch(prompts, GREEDY)]

    async def collect(p: list[int]) -> list[int]:
        toks: list[int] = []
        async for d in eng.generate(p, GREEDY):
            toks.extend(d.token_ids)
            last = d
        assert last.finished and last.finish_reason == "length" and last.num_output_tokens == 20
        return toks

    async def abandon(p: list[int], rid: str) -> int:
        n = 0
        async for d in eng.generate(p, SamplingParams(max_tokens=60, temperature=0, ignore_eos=True), rid):
            n += len(d.token_ids)
            if n >= 3:
                break  # what a client disconnect does: the generator is closed and aborts the request
        return n

    async def main() -> list[list[int]]:
        got = await asyncio.gather(*(collect(p) for p in prompts), abandon(prompts[0], "gone"))
        for _ in range(100):
            if eng.stats()["free_slots"] == 2:
                break
            await asyncio.sleep(0.02)
        return got[:-1]

    try:
        assert asyncio.run(main()) == want
        assert eng.stats() | {"steps": 0, "tokens_computed": 0} == {
            "running": 0,
            "waiting": 0,
            "free_slots": 2,
            "steps": 0,
            "tokens_computed": 0,
        }

        # an explicit abort of a running request ends its stream with finish_reason "abort"
        async def aborted() -> str | None:
            asked = False
            async for d in eng.generate(
                prompts[1], SamplingParams(max_tokens=60, temperature=0, ignore_eos=True), "x"
            ):
                if d.num_output_tokens >= 2 and not asked:  # deltas may carry several tokens: abort once
                    eng.abort("x")
                    asked = True
                if d.finished:
                    return d.finish_reason
            return None

        assert asyncio.run(aborted()) == "abort"
    finally:
        eng.shutdown()


def test_paced_stream_merges_an_intervals_tokens_and_never_holds_the_last(model: Llama4) -> None:
    # a server's pace (Engine.generate(pace=...)): the first delta at once, then one merged delta per interval
    # holding the same tokens; the finished delta ends the wait at once (a 60 s pace must not delay the end)
    prompts = _prompts([6, 11, 3], seed=4)
    eng = _engine(model, slots=3, budget=32)
    want = [o.token_ids for o in eng.generate_batch(prompts, GREEDY)]

    async def collect(p: list[int], pace) -> tuple[list[list[int]], float]:
        t0 = time.perf_counter()
        deltas = [d.token_ids async for d in eng.generate(p, GREEDY, pace=pace)]
        return deltas, time.perf_counter() - t0

    async def main(pace) -> list[tuple[list[list[int]], float]]:
        return await asyncio.gather(*(collect(p, pace) for p in prompts))

    try:
        for got, w in zip(asyncio.run(main(lambda: 60.0)), want, strict=True):
            deltas, wall = got
            assert [t for d in deltas for t in d] == w
            # the first delta at once, then the other 19+ tokens in one piece (one, if a loaded box let the first
            # delta's consumer fall behind: what is ready is merged either way)
            assert len(deltas) <= 2
            assert wall < 30  # not held for the 60 s interval: the last output ends the wait
        unpaced = asyncio.run(main(None))
        assert [[t for d in ds for t in d] for ds, _ in unpaced] == want
    finally:
        eng.shutdown()


TEXTS = [
    "the quick brown fox jumps over the lazy dog. ",
    "herd serves tiny llama models with its own engine. ",
    "1 + 2 = 3. 7 + 7 = 14. 12 + 30 = 42. ",
    "Jonas Kovacs lives in a small town by the sea and repairs old clocks. ",
] * 20


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory):
    from herd.data.config import TokenizerConfig
    from herd.data.tokenizer import save_tokenizer, train_tokenizer
    from herd.model import save_hf

    out = tmp_path_factory.mktemp("engine_ckpt")
    tcfg = TokenizerConfig(vocab_size=512, min_frequency=1, max_train_chars=10_000, model_max_length=256)
    tok_dir = save_tokenizer(train_tokenizer(TEXTS, tcfg), out / "_tok", tcfg)
    cfg = ModelConfig(
        vocab_size=512,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        intermediate_size_mlp=128,
        num_local_experts=2,
        attention_chunk_size=16,
        max_position_embeddings=256,
        initializer_range=0.1,
    )
    torch.manual_seed(1)
    save_hf(Llama4(cfg), out, tokenizer=tok_dir)
    return out


def test_from_pretrained_text_and_stop_strings(ckpt) -> None:
    eng = Engine.from_pretrained(
        ckpt, EngineConfig(max_num_seqs=4, max_model_len=128, max_num_batched_tokens=16)
    )
    prompt = eng.encode("the quick brown fox")
    assert prompt[0] == 0  # bos
    base = eng.generate_batch([prompt], SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))[0]
    assert base.text == eng.decode(base.token_ids) and len(base.text) > 10
    text = base.text
    a = max(3, len(text) // 2)
    stop = text[a : a + 3]
    cut = text.find(stop)
    sp = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True, stop=["@@never@@", stop])
    out = eng.generate_batch([prompt], sp)[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.text == text[:cut] and stop not in out.text
    assert out.token_ids == base.token_ids[: len(out.token_ids)]
    sp.include_stop_str_in_output = True
    assert eng.generate_batch([prompt], sp)[0].text == text[: cut + len(stop)]

    async def stream() -> list[str]:
        sp2 = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True, stop=[stop])
        return [d.text async for d in eng.generate(prompt, sp2)]

    try:
        deltas = asyncio.run(stream())
    finally:
        eng.shutdown()
    assert "".join(deltas) == text[:cut]
    assert all(
        stop not in "".join(deltas[: i + 1]) for i in range(len(deltas))
    )  # never streamed, even partly joined


@pytest.mark.parametrize("kv_dtype", ["auto", "bfloat16"])
def test_bf16_checkpoint_runs_in_bf16(ckpt, kv_dtype: str) -> None:
    eng = Engine.from_pretrained(
        ckpt, EngineConfig(max_num_seqs=2, max_model_len=64, kv_dtype=kv_dtype), dtype=torch.bfloat16
    )
    assert eng.core.model.lm_head.weight.dtype == torch.bfloat16
    # auto on CPU: bf16 weights, fp32 slots and attention (bf16 CPU attention is the slower one)
    assert eng.core.kv.k[0].dtype == (torch.float32 if kv_dtype == "auto" else torch.bfloat16)
    prompts = [eng.encode("Jonas Kovacs lives"), eng.encode("7 + 7 =")]
    outs = eng.generate_batch(
        prompts, SamplingParams(max_tokens=8, temperature=0, ignore_eos=True, logprobs=0)
    )
    alone = eng.generate_batch(prompts[:1], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))[0]
    assert all(len(o.token_ids) == 8 and o.logprobs is not None and len(o.logprobs) == 8 for o in outs)
    assert all(x <= 0 for o in outs for x in o.logprobs or [])
    assert (
        outs[0].token_ids[:4] == alone.token_ids[:4]
    )  # bf16: batch mates may flip late near-ties, not early ones


def test_overload_is_refused_and_train_mode_is_kept(model: Llama4) -> None:
    from herd.serve.engine import EngineOverloadedError

    eng = Engine(model, None, EngineConfig(max_num_seqs=1, max_model_len=64, max_waiting=1))
    with pytest.raises(EngineOverloadedError, match="max_waiting"):
        eng.generate_batch(_prompts([4, 4, 4]), GREEDY)
    assert eng.stats()["running"] == 0 and eng.stats()["waiting"] == 0
    prompt = _prompts([6])[0]
    want = eng.generate_batch([prompt], GREEDY)[0].token_ids
    model.train()  # an RL trainer sharing the model: the engine runs it in eval mode and gives it back as it was
    try:
        assert eng.generate_batch([prompt], GREEDY)[0].token_ids == want
        assert model.training
    finally:
        model.eval()
    assert eng.error is None
