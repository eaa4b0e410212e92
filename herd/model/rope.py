"""Rotary position embedding (complex / interleaved-pair convention) and NoPE attention temperature.

Llama 4 rotates the pair (x[2i], x[2i+1]) of every head as the complex number x[2i] + j x[2i+1] times
e^{j p θ_i}. transformers computes it in fp32 through ``view_as_complex`` and ``polar``; doing the same math with
real cos/sin differs by ~3e-6 in fp32, so we keep the complex form (reference §2.3). There is no Llama-2/3 style
q/k weight permutation: checkpoints hold q/k rows in this interleaved order and vLLM permutes them on load.
"""

from __future__ import annotations

import math

import torch

from herd.model.config import ModelConfig


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """Inverse frequencies θ^(-2i/D), i < D/2, in fp32, with Llama 3 scaling when configured (transformers' rule)."""
    rp, dim = cfg.rope_parameters, cfg.head_dim
    inv = 1.0 / (rp.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if rp.rope_type == "default":
        return inv
    factor, lo, hi = rp.factor, rp.low_freq_factor, rp.high_freq_factor
    n0 = rp.original_max_position_embeddings or cfg.max_position_embeddings
    wavelen = 2 * math.pi / inv
    # long wavelengths (beyond the original context) are divided by the factor, short ones kept,
    # the band between interpolated smoothly
    scaled = torch.where(wavelen > n0 / lo, inv / factor, inv)
    if hi == lo:  # degenerate band: transformers divides by zero here but never selects the NaN branch
        return scaled
    smooth = (n0 / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < n0 / hi) * ~(wavelen > n0 / lo)
    return torch.where(medium, smoothed, scaled)


def rope_freqs(inv_freq: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Complex rotations e^{j p θ_i} (complex64) for ``positions`` of shape (B, S) or (S,): (..., S, D/2)."""
    angles = positions[..., None].float() * inv_freq.float()
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (B, S, heads, D) by ``freqs`` (B or 1, S, D/2); computed in fp32, returned in x's dtype."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    if freqs.dim() == 2:
        freqs = freqs[None]
    return torch.view_as_real(xc * freqs[:, :, None, :]).flatten(3).type_as(x)


def attn_temperature(positions: torch.Tensor, floor_scale: int, attn_scale: float) -> torch.Tensor:
    """NoPE-layer query scale τ(t) = 1 + attn_scale · ln(1 + ⌊(t + 1) / floor_scale⌋), fp32, same shape as t.

    τ grows with the token index so long-context attention on NoPE layers stays sharp (Llama 4; Nakanishi 2025,
    arXiv:2501.19399). It is exactly 1 below floor_scale - 1 tokens."""
    return torch.log1p(torch.floor((positions.float() + 1.0) / floor_scale)) * attn_scale + 1.0
