"""Per-row sampling and logprobs for one engine step.

Every row has its own temperature (0 = argmax), top-k and top-p, applied as batched tensor ops. Rows with a
``seed`` draw from their own ``torch.Generator`` (one small multinomial per seeded row), so a seeded request
samples the same tokens whatever else shares its batch; unseeded sampled rows share the engine's generator and
draw together.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def sample(
    logits: torch.Tensor,
    temperature: Sequence[float],
    top_k: Sequence[int],
    top_p: Sequence[float],
    generators: Sequence[torch.Generator | None],
    shared: torch.Generator | None,
) -> torch.Tensor:
    """One token id per row of ``logits`` (n, V) float32; returns (n,) long."""
    out = logits.argmax(-1)
    rows = [i for i, t in enumerate(temperature) if t > 0]
    if not rows:
        return out
    dev = logits.device
    idx = torch.tensor(rows, device=dev)
    x = logits[idx] / torch.tensor([temperature[i] for i in rows], device=dev, dtype=logits.dtype)[:, None]
    ks = [max(0, top_k[i]) for i in rows]
    ps = [top_p[i] for i in rows]
    order = None
    if any(ks) or any(p < 1.0 for p in ps):
        x, order = torch.sort(x, dim=-1, descending=True)
        V = x.shape[-1]
        if any(ks):
            k_t = torch.tensor([k if k > 0 else V for k in ks], device=dev)
            x = x.masked_fill(torch.arange(V, device=dev)[None, :] >= k_t[:, None], float("-inf"))
        if any(p < 1.0 for p in ps):
            probs = x.softmax(-1)
            # drop a token once the tokens ranked above it already hold top_p of the mass (keeps at least one)
            drop = probs.cumsum(-1) - probs >= torch.tensor(ps, device=dev, dtype=probs.dtype)[:, None]
            x = x.masked_fill(drop, float("-inf"))
    probs = x.softmax(-1)
    picked = torch.empty(len(rows), dtype=torch.long, device=dev)
    seeded = [j for j, i in enumerate(rows) if generators[i] is not None]
    free = [j for j, i in enumerate(rows) if generators[i] is None]
    for j in seeded:  # own generator per seeded row: reproducible regardless of batch mates
        picked[j] = torch.multinomial(probs[j : j + 1], 1, generator=generators[rows[j]])[0, 0]
    if free:
        f = torch.tensor(free, device=dev)
        picked[f] = torch.multinomial(probs[f], 1, generator=shared)[:, 0]
    if order is not None:
        picked = order.gather(1, picked[:, None])[:, 0]
    out[idx] = picked
    return out


def token_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, k: int
) -> tuple[list[float], list[dict[int, float]], list[bool]]:
    """Raw log-softmax of ``tokens`` (n,) under ``logits`` (n, V), the top-``k`` alternatives of each row (the
    chosen token always included, so up to k+1 entries, as OpenAI's logprobs) and whether it is the argmax."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    chosen = lp.gather(1, tokens[:, None])[:, 0].tolist()
    greedy = (lp.argmax(-1) == tokens).tolist()
    toks = tokens.tolist()
    tops: list[dict[int, float]] = []
    if k > 0:
        vals, ids = lp.topk(min(k, lp.shape[-1]), dim=-1)
        for r, (vs, ii) in enumerate(zip(vals.tolist(), ids.tolist(), strict=True)):
            d = dict(zip(ii, vs, strict=True))
            d.setdefault(toks[r], chosen[r])
            tops.append(d)
    else:
        tops = [{t: c} for t, c in zip(toks, chosen, strict=True)]
    return chosen, tops, greedy
