"""Packed runtime modules: herd's CPU engine runs quantized checkpoints with torch's weight-only kernels.

    model = load_quantized("out/int4")                        # a herd Llama4 with packed MLPs and experts
    model = load_quantized("out/int8", dtype=torch.float32)   # fp32 activations (slow; for parity tests)
    quantize_model_(model, qweights, compute_dtype=torch.bfloat16)   # swap in place, from outside the model

    int8  Int8Linear     torch._weight_int8pack_mm(x, w int8 (N, K), scales (N,))            per channel
    int4  Int4Linear     torch._weight_int4pack_mm_for_cpu(x, packed, group, scale_and_zero)  per group
    fp8   FP8Linear      e4m3 weights per channel, activations quantized per token at run time
                         (torch._scaled_mm's CPU kernel: simulates what vLLM runs on Ada/Hopper GPUs)
    PackedExperts        the routed experts as per-expert packed (gate|up) and down Linears, with the
                         ``forward(x_sorted, counts)`` / ``one(x, e)`` interface of ``herd.model.moe.Experts``

Model code stays single-device and dense: the swap replaces ``nn.Linear`` targets and each MoE's ``experts``
after loading. bf16 activations are the default: both packed ops are several times slower in fp32, and at
batch 1 the bf16 packed ops beat a dense bf16 matmul 5-9x (quantize-notes §6.4). Shape limits are checked
before any kernel runs: ``_weight_int8pack_mm`` segfaults on bf16 inputs when in_features % 16 != 0 (§6.2).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from herd.quantize.rtn import QuantizedWeight, fp8_activation

INT4_KERNEL_GROUPS = (32, 64, 128, 256)


class KernelShapeError(ValueError):
    """A weight shape torch's packed CPU kernels cannot run (they would crash or raise deep inside ATen)."""


def check_shape(name: str, qw: QuantizedWeight, compute_dtype: torch.dtype) -> None:
    """Raise KernelShapeError if ``qw`` cannot run on its packed kernel; the message says what to change."""
    N, K = qw.shape
    if qw.kind == "fp8":
        return
    if qw.bits == 8:
        if qw.group_size:
            raise KernelShapeError(f"{name}: int8 group_size {qw.group_size}: torch._weight_int8pack_mm takes one "
                                   "scale per output channel; quantize int8 with group_size 0")
        if compute_dtype != torch.float32 and K % 16:
            raise KernelShapeError(f"{name}: in_features {K} is not a multiple of 16, and "
                                   f"torch._weight_int8pack_mm crashes (segfault) on {compute_dtype} inputs of that "
                                   "width; pad the layer to a multiple of 16 or load with dtype=torch.float32")
        return
    if qw.group_size not in INT4_KERNEL_GROUPS:
        raise KernelShapeError(f"{name}: int4 group_size {qw.group_size} is not one of {INT4_KERNEL_GROUPS} that "
                               "torch._weight_int4pack_mm_for_cpu takes; re-quantize with group_size 32, 64 or 128")
    if N % 16:
        raise KernelShapeError(f"{name}: out_features {N} is not a multiple of 16 (torch's int4 CPU kernel "
                               "tiles rows by 16); use a model width that is, or keep this layer unquantized "
                               "(add it to quantize.ignore)")
    if K % qw.group_size:
        raise KernelShapeError(f"{name}: in_features {K} is not a multiple of group_size {qw.group_size}")


class Int8Linear(nn.Module):
    """y = x @ (q · s)ᵀ with int8 weights and one scale per output row."""

    def __init__(self, qw: QuantizedWeight, compute_dtype: torch.dtype = torch.bfloat16, name: str = "int8"):
        super().__init__()
        check_shape(name, qw, compute_dtype)
        self.out_features, self.in_features = qw.shape
        self.compute_dtype = compute_dtype
        self.register_buffer("weight", qw.q.contiguous())
        self.register_buffer("scales", qw.scale.reshape(-1).to(compute_dtype).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch._weight_int8pack_mm(x.reshape(-1, self.in_features).to(self.compute_dtype), self.weight,
                                      self.scales)
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)


class Int4Linear(nn.Module):
    """y = x @ (q · s)ᵀ with int4 weights packed by ``_convert_weight_to_int4pack_for_cpu`` and one scale per group.
    tinygemm dequantizes ``(code - 8) · scale + zero``; compressed-tensors' stored codes are ``q + 8``, so the
    symmetric export maps over with zero = 0 and no requantization."""

    def __init__(self, qw: QuantizedWeight, compute_dtype: torch.dtype = torch.bfloat16, name: str = "int4",
                 inner_k_tiles: int = 2):
        super().__init__()
        check_shape(name, qw, compute_dtype)
        self.out_features, self.in_features = qw.shape
        self.group_size, self.compute_dtype = qw.group_size, compute_dtype
        codes = (qw.q.to(torch.int32) + 8).contiguous()
        self.register_buffer("weight", torch._convert_weight_to_int4pack_for_cpu(codes, inner_k_tiles))
        scale = qw.scale.to(compute_dtype).T.contiguous()  # (K/G, N)
        self.register_buffer("scale_and_zero", torch.stack([scale, torch.zeros_like(scale)], -1).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch._weight_int4pack_mm_for_cpu(x.reshape(-1, self.in_features).to(self.compute_dtype), self.weight,
                                              self.group_size, self.scale_and_zero)
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)


class FP8Linear(nn.Module):
    """W8A8 fp8: e4m3 weight (N, K) with per-row scales; activations quantized per token on every call."""

    def __init__(self, qw: QuantizedWeight, compute_dtype: torch.dtype = torch.bfloat16, name: str = "fp8"):
        super().__init__()
        self.out_features, self.in_features = qw.shape
        self.compute_dtype = compute_dtype
        self.register_buffer("weight", qw.q.contiguous())
        self.register_buffer("weight_scale", qw.scale.float().reshape(1, -1).contiguous())  # (1, N)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        xq, xs = fp8_activation(x.reshape(-1, self.in_features))
        y = torch._scaled_mm(xq, self.weight.t(), scale_a=xs, scale_b=self.weight_scale,
                             out_dtype=self.compute_dtype)
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)


_KINDS = {("int", 8): Int8Linear, ("int", 4): Int4Linear, ("fp8", 8): FP8Linear}


def packed_linear(qw: QuantizedWeight, compute_dtype: torch.dtype = torch.bfloat16, name: str = "") -> nn.Module:
    return _KINDS[(qw.kind, qw.bits)](qw, compute_dtype, name=name)


def _cat_rows(a: QuantizedWeight, b: QuantizedWeight) -> QuantizedWeight:
    """[gate; up] as one (2I, H) weight: one kernel call per expert instead of two (scales are per row)."""
    return QuantizedWeight(torch.cat([a.q, b.q]), torch.cat([a.scale, b.scale]), a.bits, a.group_size, a.kind)


class PackedExperts(nn.Module):
    """Routed experts with packed per-expert weights; a drop-in for ``herd.model.moe.Experts`` at inference."""

    def __init__(self, experts: list[tuple[QuantizedWeight, QuantizedWeight, QuantizedWeight]],
                 compute_dtype: torch.dtype = torch.bfloat16, name: str = "experts"):
        super().__init__()
        self.intermediate = experts[0][0].shape[0]
        self.hidden = experts[0][2].shape[0]
        self.gate_up = nn.ModuleList(packed_linear(_cat_rows(g, u), compute_dtype, f"{name}.{e}.gate_up_proj")
                                     for e, (g, u, _) in enumerate(experts))
        self.down = nn.ModuleList(packed_linear(d, compute_dtype, f"{name}.{e}.down_proj")
                                  for e, (_, _, d) in enumerate(experts))

    def one(self, x: torch.Tensor, e: int) -> torch.Tensor:
        gate, up = self.gate_up[e](x).chunk(2, dim=-1)
        return self.down[e](F.silu(gate) * up)

    def forward(self, x_sorted: torch.Tensor, counts: list[int]) -> torch.Tensor:
        if torch.is_grad_enabled() and x_sorted.requires_grad:
            raise RuntimeError("packed experts are inference-only: run under torch.inference_mode()")
        outs, start = [], 0
        for e, n in enumerate(counts):
            if n:
                outs.append(self.one(x_sorted[start : start + n], e))
                start += n
        if not outs:
            return x_sorted.new_zeros(0, self.hidden)
        return outs[0] if len(outs) == 1 else torch.cat(outs)


@torch.no_grad()
def quantize_model_(model: nn.Module, qweights: dict[str, QuantizedWeight],
                    compute_dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Swap every quantized target of ``model`` (names from ``herd.quantize.targets``) for its packed module, in
    place. All shapes are checked first, so a KernelShapeError leaves the model untouched."""
    from herd.model.moe import Experts

    for name, qw in qweights.items():
        if qw.kind == "int":
            check_shape(name, qw, compute_dtype)
    experts = {n: m for n, m in model.named_modules() if isinstance(m, Experts)}
    for ename, mod in experts.items():
        E = mod.gate_up_proj.shape[0]
        keys = [[f"{ename}.{e}.{p}" for p in ("gate_proj", "up_proj", "down_proj")] for e in range(E)]
        if not all(k in qweights for row in keys for k in row):
            continue  # experts left in high precision
        packed = PackedExperts([tuple(qweights[k] for k in row) for row in keys], compute_dtype, ename)
        parent, _, attr = ename.rpartition(".")
        setattr(model.get_submodule(parent), attr, packed)
    for name, qw in qweights.items():
        if ".experts." in name and name.rsplit(".", 2)[0] in experts:
            continue
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, packed_linear(qw, compute_dtype, name))
    return model


def read_quantized_weights(path: str | Path) -> dict[str, QuantizedWeight]:
    """The QuantizedWeights stored in a compressed-tensors export (herd text names), without dequantizing."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from compressed_tensors.quantization import QuantizationConfig

    from herd.model.hf import MM_TEXT_PREFIX, _read_tensors

    path = Path(path)
    qcfg = json.loads((path / "config.json").read_text()).get("quantization_config")
    if qcfg is None:
        raise ValueError(f"{path} has no quantization_config in config.json: it is not a quantized export "
                         "(load it with herd.model.load_hf)")
    scheme = next(iter(QuantizationConfig.model_validate(qcfg).config_groups.values()))
    w = scheme.weights
    tensors = _read_tensors(path)
    out: dict[str, QuantizedWeight] = {}
    for key in tensors:
        if not key.endswith(".weight_scale"):
            continue
        name = key[: -len(".weight_scale")]
        herd_name = name.removeprefix(MM_TEXT_PREFIX)
        scale = tensors[key]
        if w.type == "float":
            out[herd_name] = QuantizedWeight(tensors[name + ".weight"], scale, 8, 0, kind="fp8")
        else:
            shape = torch.Size(tensors[name + ".weight_shape"].tolist())
            q = unpack_from_int32(tensors[name + ".weight_packed"], w.num_bits, shape)
            out[herd_name] = QuantizedWeight(q, scale, w.num_bits, w.group_size or 0)
    return out


def load_quantized(path: str | Path, *, dtype: torch.dtype = torch.bfloat16, device: str = "cpu") -> nn.Module:
    """Load a compressed-tensors export as a herd Llama4 whose quantized layers run on packed CPU kernels and
    whose other layers are dense in ``dtype`` (the packed kernels compute in ``dtype`` too)."""
    from herd.model.hf import load_hf

    qweights = read_quantized_weights(path)
    model = load_hf(path, dtype=dtype, device=device)
    return quantize_model_(model, qweights, compute_dtype=dtype).eval()


def load_for_inference(
    path: str | Path, *, dtype: torch.dtype | None = torch.bfloat16, device: str = "cpu"
) -> nn.Module:
    """Any herd/HF Llama 4 checkpoint for inference: packed kernels when config.json has a
    ``quantization_config`` (a compressed-tensors export), else the dense model (``load_hf``).
    ``dtype=None`` (a server's ``dtype: auto``): a dense checkpoint keeps its own dtype; a quantized export,
    which stores no activation dtype, computes in fp32."""
    from herd.model.hf import load_hf

    if "quantization_config" in json.loads((Path(path) / "config.json").read_text()):
        return load_quantized(path, dtype=dtype or torch.float32, device=device)
    return load_hf(path, dtype=dtype, device=device)


__all__ = [
    "INT4_KERNEL_GROUPS",
    "FP8Linear",
    "Int4Linear",
    "Int8Linear",
    "KernelShapeError",
    "PackedExperts",
    "check_shape",
    "load_for_inference",
    "load_quantized",
    "packed_linear",
    "quantize_model_",
    "read_quantized_weights",
]
