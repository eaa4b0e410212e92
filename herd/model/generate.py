"""Inference core: a static KV cache, batched prefill, one-token decode steps, sampling, and ``generate``.

    from herd.model.generate import generate, SamplingParams
    outs = generate(model, [[0, 17, 42], [0, 5]], SamplingParams(max_new_tokens=32, temperature=0.7, seed=1))
    outs[0].tokens, outs[0].finish_reason      # new token ids (stop token excluded), "stop" | "length"

Lower level (what a serving engine drives):
    cache = KVCache(model.config, batch=B, max_len=..., dtype=..., device=...)
    logits = prefill(model, cache, prompts)          # (B, V) at each prompt's last token
    logits = decode_step(model, cache, next_tokens)  # (B, V); every row advances one position
    logits = extend(model, cache, tokens)            # (B, S, V); S tokens appended per row at its own position

Semantics are per sequence, exactly as if each prompt ran alone: prompts are RIGHT-padded, so every row's
tokens sit at positions 0..len-1; RoPE positions, the chunk boundaries of chunked layers (aligned to each
sequence's position 0, as vLLM does) and the NoPE temperature index t are that sequence's own. (transformers
with left padding shifts t by the pad count, reference §7.4; herd does not.) Rows may have different lengths
while decoding: writes go to each row's own slot and attention is masked per row.

Memory: NoPE (full-attention) layers keep max_len keys; chunked layers keep only their current chunk
(C slots, slot = position mod C), so long contexts cost O(C) per chunked layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from herd.model.attention import append_attention
from herd.model.config import ModelConfig
from herd.model.decoder import Llama4


class KVCache:
    """Per-layer static key/value buffers (B, nKV, slots, D) and each row's current length."""

    def __init__(
        self,
        cfg: ModelConfig,
        batch: int,
        max_len: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ):
        self.batch, self.max_len = batch, max_len
        self.chunk: list[int | None] = []
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        for i in range(cfg.num_hidden_layers):
            chunk = cfg.attention_chunk_size if cfg.uses_rope(i) else None
            slots = max_len if chunk is None else min(chunk, max_len)
            shape = (batch, cfg.num_key_value_heads, slots, cfg.head_dim)
            self.chunk.append(chunk if chunk is not None and chunk < max_len else None)
            self.k.append(torch.zeros(shape, dtype=dtype, device=device))
            self.v.append(torch.zeros(shape, dtype=dtype, device=device))
        self.lengths: list[int] = [0] * batch  # host copy: decides slicing without a device sync
        self.device = torch.device(device)
        self.prefilling = False

    def positions(self) -> torch.Tensor:
        """(B, 1) position of the next token of every row."""
        return torch.tensor(self.lengths, device=self.device)[:, None]

    # --- prefill ----------------------------------------------------------------------------------------------
    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Keep the prefill's keys/values (B, S, nKV, D); rows are right-padded to S with ``self.lengths``."""
        B, S = k.shape[:2]
        chunk = self.chunk[layer]
        if chunk is None:
            self.k[layer][:, :, :S] = k.transpose(1, 2)
            self.v[layer][:, :, :S] = v.transpose(1, 2)
            return
        # row b's current chunk starts at floor(len_b / C)·C; its keys go to slots 0..len_b mod C - 1
        lengths = torch.tensor(self.lengths, device=k.device)
        start = torch.div(lengths, chunk, rounding_mode="floor") * chunk
        idx = (start[:, None] + torch.arange(chunk, device=k.device)[None]).clamp(max=S - 1)  # (B, C)
        gather = idx[:, :, None, None].expand(B, chunk, k.shape[2], k.shape[3])
        self.k[layer].copy_(k.gather(1, gather).transpose(1, 2))
        self.v[layer].copy_(v.gather(1, gather).transpose(1, 2))

    # --- decode -----------------------------------------------------------------------------------------------
    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Write the new tokens' k/v (B, S, nKV, D) of every row at its own length and attend their queries
        (B, S, nH, D) to the cache: S = 1 decodes, S > 1 appends a chunk to a live cache."""
        chunk = self.chunk[layer]
        if q.shape[1] != 1:  # several tokens per row appended to a live cache (``extend``): row by row
            return torch.stack(
                [
                    append_attention(
                        q[b], k[b], v[b], self.k[layer][b], self.v[layer][b], self.lengths[b], chunk
                    )
                    for b in range(self.batch)
                ]
            )
        slots = self.lengths if chunk is None else [n % chunk for n in self.lengths]
        kc, vc = self.k[layer], self.v[layer]
        if self.batch == 1 or len(set(slots)) == 1:
            s = slots[0]
            kc[:, :, s] = k[:, 0]
            vc[:, :, s] = v[:, 0]
            o = F.scaled_dot_product_attention(
                q.transpose(1, 2), kc[:, :, : s + 1], vc[:, :, : s + 1], enable_gqa=True
            )
            return o.transpose(1, 2)
        rows = torch.arange(self.batch, device=q.device)
        slot_t = torch.tensor(slots, device=q.device)
        # advanced-index writes do not cast (slice writes do): under a bf16 autocast (RL rollouts sample under
        # the trainer's autocast) k/v arrive in bf16 while the cache keeps the model's dtype
        kc[rows, :, slot_t] = k[:, 0].to(kc.dtype)
        vc[rows, :, slot_t] = v[:, 0].to(vc.dtype)
        width = max(slots) + 1
        mask = torch.arange(width, device=q.device)[None, :] <= slot_t[:, None]  # (B, width): own keys only
        o = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            kc[:, :, :width],
            vc[:, :, :width],
            attn_mask=mask[:, None, None, :],
            enable_gqa=True,
        )
        return o.transpose(1, 2)

    def advance(self, rows: Sequence[int] | None = None, n: int = 1) -> None:
        for b in range(self.batch) if rows is None else rows:
            self.lengths[b] += n


def _right_pad(
    prompts: Sequence[Sequence[int]] | torch.Tensor, pad: int, device: torch.device
) -> tuple[torch.Tensor, list[int]]:
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() != 2:
            raise ValueError(f"prompts tensor must be (batch, seq), got shape {tuple(prompts.shape)}")
        return prompts.to(device), [prompts.shape[1]] * prompts.shape[0]
    lengths = [len(p) for p in prompts]
    if not lengths or min(lengths) == 0:
        raise ValueError("every prompt needs at least one token (start it with bos)")
    ids = torch.full((len(prompts), max(lengths)), pad, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, : len(p)] = torch.as_tensor(list(p), dtype=torch.long)
    return ids.to(device), lengths


def prefill(
    model: Llama4,
    cache: KVCache,
    prompts: Sequence[Sequence[int]] | torch.Tensor,
    pixel_values: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run the prompts (token lists of different lengths, or a (B, S) tensor) through the model into an empty
    ``cache``; returns the next-token logits (B, V) at each prompt's last token."""
    device = cache.device
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    ids, lengths = _right_pad(prompts, pad, device)
    if ids.shape[0] != cache.batch or max(lengths) > cache.max_len:
        raise ValueError(
            f"{ids.shape[0]} prompts of up to {max(lengths)} tokens do not fit a cache of batch "
            f"{cache.batch} and max_len {cache.max_len}"
        )
    if any(cache.lengths):
        raise ValueError("prefill needs an empty KVCache: create a new one per batch of prompts")
    cache.lengths = list(lengths)
    cache.prefilling = True
    try:
        out = model(
            ids,
            pixel_values,
            positions=torch.arange(ids.shape[1], device=device)[None],
            kv=cache,
            logits_at=torch.tensor(lengths, device=device) - 1,
        )
    finally:
        cache.prefilling = False
    return out.logits[:, 0]


def decode_step(model: Llama4, cache: KVCache, tokens: torch.Tensor) -> torch.Tensor:
    """Feed one token per row (B,) at each row's next position; returns next-token logits (B, V)."""
    if max(cache.lengths) >= cache.max_len:
        raise ValueError(f"KV cache full ({cache.max_len} tokens): allocate a larger max_len")
    out = model(tokens.reshape(-1, 1), positions=cache.positions(), kv=cache)
    cache.advance()
    return out.logits[:, -1]


def extend(model: Llama4, cache: KVCache, tokens: torch.Tensor) -> torch.Tensor:
    """Append S tokens per row (B, S) to a live cache, each row at its own next positions (chunked prefill,
    multi-turn continuation); returns their logits (B, S, V), equal to the full forward's."""
    if tokens.dim() != 2 or tokens.shape[0] != cache.batch:
        raise ValueError(f"tokens must be (batch={cache.batch}, S), got {tuple(tokens.shape)}")
    S = tokens.shape[1]
    if max(cache.lengths) + S > cache.max_len:
        raise ValueError(f"KV cache full: {max(cache.lengths)} + {S} tokens > max_len {cache.max_len}")
    positions = torch.tensor(cache.lengths, device=cache.device)[:, None] + torch.arange(
        S, device=cache.device
    )
    out = model(tokens.to(cache.device), positions=positions, kv=cache)
    cache.advance(n=S)
    return out.logits


@dataclass
class SamplingParams:
    """Decoding settings. temperature 0 = greedy; top_k 0 and top_p 1 disable those filters."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop_tokens: Sequence[int] | None = None  # None: the model's eos_token_id


def sample(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Pick one token per row from logits (B, V)."""
    if params.temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / params.temperature
    if params.top_k > 0:
        kth = torch.topk(logits, min(params.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass (keeps at least one)
        drop = probs.cumsum(-1) - probs >= params.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


@dataclass
class Generation:
    tokens: list[int]
    finish_reason: Literal["stop", "length"]


@torch.inference_mode()
def generate(
    model: Llama4,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams | None = None,
    pixel_values: torch.Tensor | None = None,
) -> list[Generation]:
    """Complete every prompt (lists of token ids of any lengths) in one batch; stop tokens end a row early."""
    params = params or SamplingParams()
    if params.temperature < 0 or not 0 < params.top_p <= 1 or params.top_k < 0 or params.max_new_tokens < 1:
        raise ValueError(
            f"invalid sampling params {params}: need temperature >= 0, 0 < top_p <= 1, top_k >= 0, "
            "max_new_tokens >= 1"
        )
    ref = next(model.parameters())
    stops = set(model.config.eos_token_id if params.stop_tokens is None else params.stop_tokens)
    cache = KVCache(
        model.config,
        len(prompts),
        max(len(p) for p in prompts) + params.max_new_tokens,
        dtype=ref.dtype,
        device=ref.device,
    )
    gen = None
    if params.seed is not None:
        gen = torch.Generator(device=ref.device)
        gen.manual_seed(params.seed)
    logits = prefill(model, cache, prompts, pixel_values)
    outs = [Generation([], "length") for _ in prompts]
    live = list(range(len(prompts)))
    for step in range(params.max_new_tokens):
        next_tokens = sample(logits, params, gen)
        for b, t in zip(live, next_tokens.tolist(), strict=True):
            if t in stops:
                outs[b].finish_reason = "stop"
            else:
                outs[b].tokens.append(t)
        if step == params.max_new_tokens - 1:
            break
        keep = [i for i, b in enumerate(live) if outs[b].finish_reason != "stop"]
        if not keep:
            break
        if len(keep) < len(live):  # drop finished rows from the batch: no compute spent on them
            cache = _select_rows(cache, keep)
            next_tokens = next_tokens[keep]
            live = [live[i] for i in keep]
        logits = decode_step(model, cache, next_tokens)
    return outs


def _select_rows(cache: KVCache, rows: list[int]) -> KVCache:
    idx = torch.tensor(rows, device=cache.device)
    cache.k = [t.index_select(0, idx) for t in cache.k]
    cache.v = [t.index_select(0, idx) for t in cache.v]
    cache.lengths = [cache.lengths[r] for r in rows]
    cache.batch = len(rows)
    return cache
