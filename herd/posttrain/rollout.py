"""Rollouts for RL and the judge: sample completions with each token's log-prob and the stop token, and the
trainer-side log-probs of the same tokens.

    outs = sample(model, prompt_ids, temperature=1.0, max_new_tokens=40, stop=[5], seed=7)
    outs[i].tokens        # completion ids INCLUDING the stop token when it fired (it is trained, TRL L1869)
    outs[i].logprobs      # the sampler's log p(token) at that temperature, fp32
    logp = token_logprobs(model, input_ids, temperature)   # (B, S-1) the trainer's log-probs, same positions

Sampling goes through herd's KV-cache decoder (herd.model.generate: prefill + decode_step; right-padded rows at
their own positions 0..len-1), so the trainer's forward on prompt+completion from position 0 sees exactly the
positions, chunk boundaries and NoPE temperature the sampler saw. Logits are divided by the temperature in both
places and nothing else (no top-k / top-p: they would make the sampled distribution differ from the trained one,
ms-swift #8442). The model samples in eval() so MoE load counts stay clean; the router bias only moves in the
trainer's update after the optimizer step, so it is frozen between sampling a batch and training on it.

`sample_engine` is the same contract through herd's continuous-batching engine (herd.serve.engine): one packed
forward per step over every live row, finished rows leave at once and waiting ones take their slot, so a batch
whose completions end at different lengths wastes no decode steps (the static sampler decodes every row until the
longest is done). Rows keep their own positions 0..len-1, so the trainer's forward still matches them. The
engine's log-probs are the raw softmax's, equal to the sampler's at temperature 1 (the RL default); at any other
temperature they are rescored here. Which one RL uses is `posttrain.rl.sampler`; the judge always uses the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from herd.model.generate import KVCache, decode_step, prefill


@dataclass
class Sample:
    tokens: list[int]
    logprobs: list[float]
    stopped: bool  # the stop token fired (it is the last of `tokens`); False: truncated at max_new_tokens


@torch.inference_mode()
def sample(model: nn.Module, prompts: Sequence[Sequence[int]], *, temperature: float, max_new_tokens: int,
           stop: Sequence[int], seed: int) -> list[Sample]:
    """One completion per prompt (repeat a prompt G times for a group). Deterministic for a given seed and
    prompt list: one generator per call, rows never leave the batch (finished rows keep decoding pad and are
    ignored), so a row's samples do not depend on when the others finished."""
    if temperature <= 0:
        raise ValueError(f"rollout temperature must be > 0 (got {temperature}); greedy has no log-probs to train")
    was_training = model.training
    model.eval()
    try:
        ref = next(model.parameters())
        cache = KVCache(model.config, len(prompts), max(map(len, prompts)) + max_new_tokens, dtype=ref.dtype,
                        device=ref.device)
        gen = torch.Generator(device=ref.device)
        gen.manual_seed(seed)
        stops = torch.tensor(list(stop), device=ref.device)
        logits = prefill(model, cache, prompts)
        outs = [Sample([], [], False) for _ in prompts]
        done = torch.zeros(len(prompts), dtype=torch.bool, device=ref.device)
        for step in range(max_new_tokens):
            logp = F.log_softmax(logits.float() / temperature, -1)
            tok = torch.multinomial(logp.exp(), 1, generator=gen)[:, 0]
            lp = logp.gather(-1, tok[:, None])[:, 0]
            for b in (~done).nonzero()[:, 0].tolist():
                t = int(tok[b])
                outs[b].tokens.append(t)
                outs[b].logprobs.append(float(lp[b]))
                if t in stop:
                    outs[b].stopped = True
            done |= torch.isin(tok, stops)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            logits = decode_step(model, cache, tok)
        return outs
    finally:
        model.train(was_training)


@torch.inference_mode()
def sample_engine(model: nn.Module, prompts: Sequence[Sequence[int]], *, temperature: float, max_new_tokens: int,
                  stop: Sequence[int], seed: int, logprobs: bool = True, max_num_seqs: int = 64) -> list[Sample]:
    """`sample` through herd's engine. Deterministic for a given seed and prompt list: a fresh engine whose one
    shared generator is seeded with `seed` and a fixed submission order (the scheduler is deterministic)."""
    if temperature <= 0:
        raise ValueError(f"rollout temperature must be > 0 (got {temperature}); greedy has no log-probs to train")
    if not prompts:
        return []
    from herd.serve.engine import SamplingParams, generate_once

    was_training = model.training
    model.eval()
    try:
        # only `stop` ends a row (ignore_eos): the same stop set as the static sampler, whose rows RL trains on
        params = SamplingParams(max_tokens=max_new_tokens, temperature=temperature, stop_token_ids=list(stop),
                                ignore_eos=True, logprobs=0 if logprobs else None, skip_special_tokens=False)
        # samples in the weights' precision even under the trainer's autocast (the gap to a bf16 trainer is what
        # rollout.logp_gap.* reports); the engine itself runs under autocast too, so this is a choice, not a limit
        dev = next(model.parameters()).device.type
        with torch.autocast(dev, enabled=False):
            # a batch job, not a latency-bound server: big steps amortize the per-step Python work over more
            # prefill tokens
            outs = generate_once(model, prompts, params, max_num_seqs=max_num_seqs, seed=seed,
                                 max_num_batched_tokens=max(2048, max(map(len, prompts)) + max_new_tokens))
    finally:
        model.train(was_training)
    samples = [Sample(list(o.token_ids), list(o.logprobs or []), o.finish_reason == "stop") for o in outs]
    if logprobs and temperature != 1.0:  # the engine reports raw log-softmax; RL needs the tempered one
        for s_, p in zip(samples, prompts, strict=True):
            ids = torch.tensor([list(p) + s_.tokens])
            s_.logprobs = token_logprobs(model, ids, temperature)[0, len(p) - 1:].tolist()
    return samples


def token_logprobs(model: nn.Module, input_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(input_ids[:, t+1] | input_ids[:, :t+1]) at `temperature`, (B, S-1), fp32; rows start at position 0
    (right padding), as the sampler's. Gradients flow (this is the trainer side)."""
    out = model(input_ids[:, :-1])
    logits = out.logits if hasattr(out, "logits") else out
    logp = F.log_softmax(logits.float() / temperature, -1)
    return logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)


__all__ = ["Sample", "sample", "sample_engine", "token_logprobs"]
