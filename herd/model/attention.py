"""Llama 4 self-attention: GQA, complex RoPE + weightless qk RMS-norm on RoPE layers, chunked local attention on
RoPE layers, full causal attention with temperature tuning on NoPE layers.

Chunked attention is computed block-diagonally: the sequence is cut into aligned chunks of C tokens that become
extra batch entries of one causal ``scaled_dot_product_attention`` call, so no S×S mask is ever built and the cost
is O(S·C) instead of O(S²). With a KV cache (``herd.model.generate``), decoding goes through the cache's own
``attend``, which keeps only the current chunk for chunked layers.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from herd.model.config import ModelConfig
from herd.model.rope import apply_rope, attn_temperature


class KVStore(Protocol):
    """What attention needs from a KV cache (``herd.model.generate.KVCache`` and the serving engine's slot pool
    ``herd.serve.engine.kv.SlotKV`` implement it). ``attend`` takes the new tokens' q/k/v (one or several per
    row, at positions the store knows), writes k/v into the cache and returns their attention output."""

    prefilling: bool

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None: ...

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor: ...


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk: int | None) -> torch.Tensor:
    """Causal attention for (B, S, heads, D) inputs (k/v may have fewer heads: GQA); returns (B, S, nH, D).

    With ``chunk`` set, query i attends key j iff j <= i and both lie in the same aligned block [nC, (n+1)C)."""
    B, S, nH, D = q.shape
    if chunk is None or S <= chunk:
        o = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=True
        )
        return o.transpose(1, 2)
    n = -(-S // chunk)
    pad = n * chunk - S
    if pad:  # padding at the end only meets queries we drop: causal masking keeps real queries off it
        q, k, v = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v))

    def blocks(t: torch.Tensor) -> torch.Tensor:  # (B, n·C, h, D) -> (B·n, h, C, D)
        return t.reshape(B * n, chunk, t.shape[2], D).transpose(1, 2)

    o = F.scaled_dot_product_attention(blocks(q), blocks(k), blocks(v), is_causal=True, enable_gqa=True)
    return o.transpose(1, 2).reshape(B, n * chunk, nH, D)[:, :S]


def append_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kc: torch.Tensor,
    vc: torch.Tensor,
    start: int,
    chunk: int | None,
) -> torch.Tensor:
    """Attend n new tokens of ONE sequence, at positions start..start+n-1, to its cache and themselves, and write
    their keys/values into the cache (a prefill chunk appended to a live sequence, or n=1 decoding).

    q (n, nH, D), k/v (n, nKV, D); kc/vc (nKV, width, D) are that sequence's cache rows: position p sits at slot p
    (full layers: width >= start+n) or at slot p mod ``chunk`` (chunked layers: width = chunk, holding only the
    current chunk). Returns (n, nH, D), equal to the full forward's rows start..start+n-1."""
    n = q.shape[0]
    if chunk is None:
        kc[:, start : start + n] = k.transpose(0, 1)
        vc[:, start : start + n] = v.transpose(0, 1)
        if start == 0:
            return causal_attention(q[None], k[None], v[None], None)[0]
        keys, vals, k0 = kc[:, : start + n], vc[:, : start + n], 0
    else:
        k0 = (start // chunk) * chunk  # the current chunk's first position; cached at slots 0..start-k0-1
        prefix = start - k0
        if prefix == 0:  # starts on a chunk boundary: blocks aligned to the new tokens
            o = causal_attention(q[None], k[None], v[None], chunk)[0]
        else:  # read the cached prefix before the writes below can overwrite it (they wrap around the chunk)
            keys = torch.cat([kc[:, :prefix], k.transpose(0, 1)], dim=1)
            vals = torch.cat([vc[:, :prefix], v.transpose(0, 1)], dim=1)
        m = min(n, chunk)  # only the last chunk's keys can still be seen by later tokens
        idx = torch.arange(start + n - m, start + n, device=k.device) % chunk
        kc[:, idx] = k[n - m :].transpose(0, 1)
        vc[:, idx] = v[n - m :].transpose(0, 1)
        if prefix == 0:
            return o
    qpos = torch.arange(start, start + n, device=q.device)[:, None]
    kpos = torch.arange(k0, start + n, device=q.device)[None, :]
    mask = kpos <= qpos
    if chunk is not None:
        mask &= (kpos // chunk) == (qpos // chunk)
    o = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None], keys[None], vals[None], attn_mask=mask, enable_gqa=True
    )
    return o[0].transpose(0, 1)


class Attention(nn.Module):
    """One decoder layer's attention. Parameter names are transformers' (``self_attn.{q,k,v,o}_proj``)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv, self.head_dim = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        )
        self.use_rope = cfg.uses_rope(layer_idx)
        self.use_qk_norm = cfg.use_qk_norm and self.use_rope
        self.temperature = cfg.attn_temperature_tuning and not self.use_rope
        self.chunk = cfg.attention_chunk_size if self.use_rope else None  # NoPE layers see the whole context
        self.floor_scale, self.attn_scale, self.eps = cfg.floor_scale, cfg.attn_scale, cfg.rms_norm_eps
        H = cfg.hidden_size
        self.q_proj = nn.Linear(H, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(H, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(H, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, H, bias=False)

    def forward(
        self, x: torch.Tensor, freqs: torch.Tensor, positions: torch.Tensor, kv: KVStore | None = None
    ) -> torch.Tensor:
        """x (B, S, H); freqs (B or 1, S, D/2) complex RoPE rotations; positions (B or 1, S) token indices."""
        B, S, _ = x.shape
        q = self.q_proj(x).view(B, S, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(B, S, self.n_kv, self.head_dim)
        v = self.v_proj(x).view(B, S, self.n_kv, self.head_dim)
        if self.use_rope:
            q, k = apply_rope(q, freqs), apply_rope(k, freqs)
            if (
                self.use_qk_norm
            ):  # weightless RMS norm in fp32, after RoPE (not an L2 norm despite HF's class name)
                q = F.rms_norm(q.float(), (self.head_dim,), eps=self.eps).type_as(q)
                k = F.rms_norm(k.float(), (self.head_dim,), eps=self.eps).type_as(k)
        elif self.temperature:
            tau = attn_temperature(positions, self.floor_scale, self.attn_scale)
            q = (q * tau[..., None, None]).type_as(q)  # fp32 multiply, as transformers does
        if kv is None or kv.prefilling:
            o = causal_attention(q, k, v, self.chunk)
            if kv is not None:
                kv.store(self.layer_idx, k, v)
        else:
            o = kv.attend(self.layer_idx, q, k, v)
        return self.o_proj(o.reshape(B, S, self.n_heads * self.head_dim))
