"""Round-to-nearest quantization of one weight matrix, and the ``QuantizedWeight`` record every method returns.

    qw = rtn(w, bits=4, group_size=32)        # w: (out, in) Linear weight; symmetric, one scale per group
    qw.dequantize()                           # q * scale, what transformers and vLLM reconstruct
    fw = fp8(w)                               # e4m3 weight, one fp32 scale per output row

Conventions follow compressed-tensors 0.17 (``quantization/utils/helpers.py::calculate_qparams``) so a herd
export decompresses to exactly herd's own reconstruction: signed codes in [-2^(b-1), 2^(b-1)-1], symmetric scale
``max|w| / ((qmax - qmin) / 2)`` (/7.5 for int4, /127.5 for int8), groups contiguous along the input dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max


@dataclass
class QuantizedWeight:
    """One quantized (out, in) weight. int: ``q`` int8 codes and ``scale`` (out, in/group) or (out, 1); fp8:
    ``q`` float8_e4m3fn and ``scale`` (out, 1). ``error`` is the method's reconstruction loss, when measured."""

    q: torch.Tensor
    scale: torch.Tensor
    bits: int
    group_size: int  # 0: one scale per output channel
    kind: str = "int"  # "int" | "fp8"
    error: float | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.q.shape)  # type: ignore[return-value]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The (out, in) weight the quantized model computes with."""
        s = self.scale.float()
        if self.group_size:
            s = s.repeat_interleave(self.group_size, dim=1)
        return (self.q.float() * s).to(dtype)


def qrange(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def _grouped(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N, K) -> (N, K/G, G); per channel is one group of K."""
    N, K = w.shape
    G = group_size or K
    if K % G:
        raise ValueError(f"input dim {K} is not a multiple of group_size {G}: pick a group size that divides it")
    return w.reshape(N, K // G, G)


def scales(w: torch.Tensor, bits: int, group_size: int, scale_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Symmetric scales (N, K/G) (or (N, 1) per channel), rounded to ``scale_dtype`` (the dtype stored on disk,
    so quantizing with the stored scale reproduces the stored codes)."""
    qmin, qmax = qrange(bits)
    amax = _grouped(w.float(), group_size).abs().amax(-1)
    s = amax / ((qmax - qmin) / 2)
    # an all-zero group: any scale works; use the dtype's eps so dequantization never divides by zero
    s = torch.where(s > 0, s, torch.full_like(s, torch.finfo(scale_dtype).eps))
    return s.to(scale_dtype)


def quantize_with(w: torch.Tensor, scale: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """int8 codes round(w / s), clamped to the signed range (compressed-tensors' ``quantize``)."""
    qmin, qmax = qrange(bits)
    g = _grouped(w.float(), group_size)
    q = torch.round(g / scale.float().unsqueeze(-1)).clamp(qmin, qmax)
    return q.reshape(w.shape).to(torch.int8)


def rtn(w: torch.Tensor, bits: int, group_size: int = 0, scale_dtype: torch.dtype = torch.float32) -> QuantizedWeight:
    """Round-to-nearest, data-free: the baseline GPTQ must beat."""
    s = scales(w, bits, group_size, scale_dtype)
    return QuantizedWeight(quantize_with(w, s, bits, group_size), s, bits, group_size)


def fp8(w: torch.Tensor, scale_dtype: torch.dtype = torch.float32) -> QuantizedWeight:
    """E4M3 per output channel: scale = max|row| / 448 (compressed-tensors FP8_DYNAMIC's weight side)."""
    amax = w.float().abs().amax(1, keepdim=True)
    s = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax)).to(scale_dtype)
    q = (w.float() / s.float()).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return QuantizedWeight(q, s, 8, 0, kind="fp8")


def fp8_activation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token e4m3 activation quantization: (x_q, scale (T, 1)), computed at run time, nothing stored."""
    amax = x.float().abs().amax(-1, keepdim=True)
    s = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    return (x.float() / s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), s


__all__ = ["FP8_MAX", "QuantizedWeight", "fp8", "fp8_activation", "qrange", "quantize_with", "rtn", "scales"]
