"""The KV-cache slot pool and the attention of one engine step over it.

A fixed pool of ``num_slots`` sequences, allocated once. NoPE (full-attention) layers keep ``max_len`` keys per
slot; chunked-attention layers keep only the current chunk (C keys, position p at slot p mod C), as
``herd.model.generate.KVCache`` does, so long contexts cost O(C) there.

One engine step runs ONE forward over a packed batch (1, T): the tokens of every scheduled sequence laid end to
end, each with its own position. The pool is the ``KVStore`` attention calls (``prefilling`` False, so every
layer goes through ``attend``), and ``attend`` splits the packed step by the ``StepPlan`` set before the forward:

- rows of one token (decoding sequences, and 1-token prefill chunks) are attended together in one batched
  ``scaled_dot_product_attention`` over the pool's slot rows, masked per row to its own length;
- fresh prompts (several tokens at position 0: nothing cached yet), when a step admits two or more, are
  attended together in ONE ``scaled_dot_product_attention`` over their packed rows with a block-diagonal mask
  (causal within a prompt, chunk-aligned on chunked layers), then their keys are copied into their slots: 32
  newly admitted prompts cost one attention call per layer, not 32;
- other rows of several tokens (a prefill chunk appended to a live slot at any position) are attended one by one
  by ``herd.model.attention.append_attention``: the slot's cached keys (the current chunk's prefix on chunked
  layers) plus the new keys, causal and chunk-aligned.

Positions, RoPE, NoPE temperature and chunk boundaries are each sequence's own (chunks aligned to its position
0), so a sequence's logits do not depend on its batch mates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from herd.model.attention import append_attention
from herd.model.config import ModelConfig


@dataclass
class Segment:
    """A multi-token run of the packed step: ``n`` tokens of ``slot`` at positions start..start+n-1, packed at
    ``offset``."""

    slot: int
    start: int
    n: int
    offset: int


# Fresh prompts are attended as one block only up to this many packed tokens: the block-diagonal mask costs
# (tokens)^2 per head, which beyond this outgrows the per-prompt calls it saves.
FRESH_BLOCK_MAX = 1024


@dataclass
class StepPlan:
    """Where each packed token goes. The first ``len(single_slots)`` packed tokens are 1-token rows; segments
    follow, fresh ones (start 0) last and contiguous (``EngineCore.step`` orders them so)."""

    single_slots: list[int]
    single_pos: list[int]
    segments: list[Segment]
    device: torch.device
    _cache: dict[int | None, tuple] = field(default_factory=dict)
    _fresh: dict[int | None, tuple] = field(default_factory=dict)

    def fresh_block(self) -> list[Segment]:
        """The trailing fresh segments attended as one block (empty when fewer than 2 or too many tokens)."""
        fresh: list[Segment] = []
        for seg in reversed(self.segments):
            if seg.start != 0:
                break
            fresh.append(seg)
        fresh.reverse()
        if len(fresh) < 2 or sum(s.n for s in fresh) > FRESH_BLOCK_MAX:
            return []
        return fresh

    def fresh_mask(self, fresh: list[Segment], chunk: int | None) -> torch.Tensor:
        """(L, L) bool over the block's packed rows: same prompt, key position <= query position, same chunk."""
        if chunk in self._fresh:
            return self._fresh[chunk]
        d = self.device
        seg_id = torch.cat([torch.full((s.n,), i, device=d) for i, s in enumerate(fresh)])
        pos = torch.cat([torch.arange(s.n, device=d) for s in fresh])
        mask = (seg_id[:, None] == seg_id[None, :]) & (pos[None, :] <= pos[:, None])
        if chunk is not None:
            mask &= (pos[None, :] // chunk) == (pos[:, None] // chunk)
        self._fresh[chunk] = mask
        return mask

    def single(self, chunk: int | None, num_slots: int) -> tuple:
        """Tensors of the 1-token rows for layers of chunk size ``chunk`` (computed once per step, per kind)."""
        if chunk in self._cache:
            return self._cache[chunk]
        d = self.device
        n = len(self.single_slots)
        write = [p if chunk is None else p % chunk for p in self.single_pos]
        hi = max(self.single_slots) + 1
        dense = self.single_slots == list(range(n))  # rows are slots 0..n-1: no scatter of the queries needed
        # rows of the slot view that are not in this step attend key 0; their output is dropped
        cur = [0] * hi
        for s, w in zip(self.single_slots, write, strict=True):
            cur[s] = w
        width = max(write) + 1
        cur_t = torch.tensor(cur, device=d)
        mask = None if len(set(cur)) == 1 else (torch.arange(width, device=d)[None, :] <= cur_t[:, None])
        out = (
            torch.tensor(self.single_slots, device=d),
            torch.tensor(write, device=d),
            hi,
            width,
            dense,
            mask,
        )
        self._cache[chunk] = out
        return out


class SlotKV:
    """Per-layer key/value buffers (num_slots, nKV, width, D); a ``KVStore`` for one packed step at a time."""

    # the engine never uses the model's whole-prompt prefill path: every layer calls attend
    prefilling = False

    def __init__(
        self,
        cfg: ModelConfig,
        num_slots: int,
        max_len: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ):
        self.num_slots, self.max_len = num_slots, max_len
        self.chunk: list[int | None] = []
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        for i in range(cfg.num_hidden_layers):
            chunk = cfg.attention_chunk_size if cfg.uses_rope(i) else None
            if chunk is not None and chunk >= max_len:
                chunk = None  # a chunk as long as the context is plain causal attention
            width = max_len if chunk is None else chunk
            shape = (num_slots, cfg.num_key_value_heads, width, cfg.head_dim)
            self.chunk.append(chunk)
            self.k.append(torch.zeros(shape, dtype=dtype, device=device))
            self.v.append(torch.zeros(shape, dtype=dtype, device=device))
        self.device = torch.device(device)
        self.plan: StepPlan | None = None

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [*self.k, *self.v])

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        raise RuntimeError("SlotKV is filled through attend(); prefilling must stay False")

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (1, T, nH, D), k/v (1, T, nKV, D) of the packed step; writes k/v into the slots and returns (1, T, nH, D)."""
        plan = self.plan
        if plan is None:
            raise RuntimeError(
                "SlotKV.attend called without a StepPlan: the engine sets one before each forward"
            )
        if q.shape[0] != 1:
            raise ValueError(f"SlotKV expects one packed row, got batch {q.shape[0]}")
        # under autocast (a bf16 trainer sampling RL rollouts) q/k/v arrive in bf16 while the slots keep the
        # engine's dtype: attend in the slots' dtype (index writes need matching dtypes), answer in the caller's
        in_dtype, kv_dtype = q.dtype, self.k[layer].dtype
        q, k, v = q[0].to(kv_dtype), k[0].to(kv_dtype), v[0].to(kv_dtype)
        n1 = len(plan.single_slots)
        if not plan.segments:
            return self._attend_single(layer, q, k, v, plan)[None].to(in_dtype)
        out = q.new_empty(q.shape)
        if n1:
            out[:n1] = self._attend_single(layer, q[:n1], k[:n1], v[:n1], plan)
        fresh = plan.fresh_block()
        for seg in plan.segments[: len(plan.segments) - len(fresh)]:
            sl = slice(seg.offset, seg.offset + seg.n)
            out[sl] = self._attend_segment(layer, q[sl], k[sl], v[sl], seg)
        if fresh:
            sl = slice(fresh[0].offset, fresh[-1].offset + fresh[-1].n)
            out[sl] = self._attend_fresh(layer, q[sl], k[sl], v[sl], fresh, plan)
        return out[None].to(in_dtype)

    def _attend_fresh(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fresh: list[Segment], plan: StepPlan
    ) -> torch.Tensor:
        """Fresh prompts packed end to end, (L, h, D) each: one masked attention, then each prompt's keys go to
        its slot (all of them on full layers; the last chunk's on chunked layers, at position mod chunk)."""
        chunk = self.chunk[layer]
        o = F.scaled_dot_product_attention(
            q.transpose(0, 1)[None],
            k.transpose(0, 1)[None],
            v.transpose(0, 1)[None],
            attn_mask=plan.fresh_mask(fresh, chunk),
            enable_gqa=True,
        )[0].transpose(0, 1)
        base = fresh[0].offset
        kt, vt = k.transpose(0, 1), v.transpose(0, 1)  # (h, L, D)
        for seg in fresh:
            a = seg.offset - base
            m = seg.n if chunk is None else min(seg.n, chunk)
            first = seg.n - m  # only the last chunk's keys can still be seen by later tokens
            w0 = first if chunk is None else first % chunk
            if chunk is None or w0 + m <= chunk:
                self.k[layer][seg.slot, :, w0 : w0 + m] = kt[:, a + first : a + seg.n]
                self.v[layer][seg.slot, :, w0 : w0 + m] = vt[:, a + first : a + seg.n]
            else:  # the last chunk's keys wrap around the slot's chunk buffer
                idx = torch.arange(first, seg.n, device=k.device) % chunk
                self.k[layer][seg.slot][:, idx] = kt[:, a + first : a + seg.n]
                self.v[layer][seg.slot][:, idx] = vt[:, a + first : a + seg.n]
        return o

    def _attend_single(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: StepPlan
    ) -> torch.Tensor:
        """One new token per row: (n, h, D) each. Batched over a view of slot rows 0..hi-1 (no cache copy)."""
        chunk = self.chunk[layer]
        if q.shape[0] == 1:  # one sequence (a lone client): plain slices, no index tensors or mask
            s, p = plan.single_slots[0], plan.single_pos[0]
            w = p if chunk is None else p % chunk
            kc, vc = self.k[layer][s], self.v[layer][s]
            kc[:, w] = k[0]
            vc[:, w] = v[0]
            o = F.scaled_dot_product_attention(
                q[:, :, None], kc[None, :, : w + 1], vc[None, :, : w + 1], enable_gqa=True
            )
            return o[:, :, 0]
        slots, write, hi, width, dense, mask = plan.single(chunk, self.num_slots)
        kc, vc = self.k[layer], self.v[layer]
        kc[slots, :, write] = k
        vc[slots, :, write] = v
        n = q.shape[0]
        if dense:
            qr = q[:, :, None]  # (n=hi, nH, 1, D)
        else:
            qr = q.new_zeros((hi, q.shape[1], 1, q.shape[2]))
            qr[slots] = q[:, :, None]
        o = F.scaled_dot_product_attention(
            qr,
            kc[:hi, :, :width],
            vc[:hi, :, :width],
            attn_mask=None if mask is None else mask[:, None, None, :],
            enable_gqa=True,
        )[:, :, 0]  # (hi, nH, D)
        return o if dense and hi == n else o[slots]

    def _attend_segment(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seg: Segment
    ) -> torch.Tensor:
        """``seg.n`` tokens appended to slot ``seg.slot`` at position ``seg.start``: (n, h, D) each."""
        return append_attention(
            q, k, v, self.k[layer][seg.slot], self.v[layer][seg.slot], seg.start, self.chunk[layer]
        )
