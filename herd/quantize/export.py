"""compressed-tensors checkpoints: write herd's quantized weights, read them back as dense tensors.

    export_compressed(model, qweights, scheme, "out/", tokenizer="artifacts/tokenizer")
    AutoModelForCausalLM.from_pretrained("out/", quantization_config=CompressedTensorsConfig(dequantize=True))
    load_hf("out/")                        # herd: dense (dequantized); herd.quantize.load_quantized: packed kernels

Layout (quantize-notes §1.3, checked against compressed-tensors 0.17 and vLLM 0.29's Llama 4 loader):
  int8 / int4   format ``pack-quantized``: ``<name>.weight_packed`` int32 (out, in/(32/bits)), ``weight_scale``
                (out, in/group) or (out, 1), ``weight_shape`` int64 [out, in]. int8 is per CHANNEL, written
                explicitly: compressed-tensors 0.17's ``W8A16`` preset is group-128, which torch's int8 kernel
                cannot run.
  fp8           format ``float-quantized``: ``<name>.weight`` float8_e4m3fn, ``weight_scale`` (out, 1); activations
                dynamic per token (nothing stored).
Routed experts are written per expert (``feed_forward.experts.{e}.gate_proj...``); no fused ``gate_up_proj``
remains. Everything else keeps its dense tensor and is listed by name in ``ignore``. Packing, the config schema
and decompression are compressed-tensors' own (``pack_to_int32``, ``QuantizationConfig``, the registered
compressors), so the package stays the single source of truth for names and bits.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from herd.quantize.config import QuantScheme
from herd.quantize.rtn import QuantizedWeight
from herd.quantize.targets import high_precision_linears

_FUSED_EXPERTS = re.compile(r"\.feed_forward\.experts\.(gate_up_proj|down_proj)$")


def ct_scheme(scheme: QuantScheme) -> Any:
    """The compressed-tensors ``QuantizationScheme`` of a herd scheme (targets: Linear)."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    if scheme.scheme == "fp8":
        weights = QuantizationArgs(num_bits=8, type="float", symmetric=True, strategy="channel", dynamic=False)
        acts = QuantizationArgs(num_bits=8, type="float", symmetric=True, strategy="token", dynamic=True)
        return QuantizationScheme(targets=["Linear"], weights=weights, input_activations=acts,
                                  format="float-quantized")
    grouped = scheme.group_size > 0
    weights = QuantizationArgs(
        num_bits=scheme.bits, type="int", symmetric=True, dynamic=False,
        strategy="group" if grouped else "channel", group_size=scheme.group_size if grouped else None,
        # static: columns were processed in Hessian order, scales stay per contiguous group (no g_idx stored)
        actorder="static" if scheme.method == "gptq" and scheme.act_order else None,
    )
    return QuantizationScheme(targets=["Linear"], weights=weights, format="pack-quantized")


def quantization_config(scheme: QuantScheme, ignore: list[str]) -> dict[str, Any]:
    """config.json's ``quantization_config``, validated by compressed-tensors' own model."""
    from compressed_tensors.quantization import QuantizationConfig

    cs = ct_scheme(scheme)
    cfg = QuantizationConfig(config_groups={"group_0": cs}, format=cs.format, quantization_status="compressed",
                             ignore=ignore)
    return json.loads(cfg.model_dump_json(exclude_none=False))


def compress(qw: QuantizedWeight, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The on-disk tensors of one quantized Linear (suffix -> tensor)."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    if qw.kind == "fp8":
        return {"weight": qw.q.contiguous(), "weight_scale": qw.scale.to(dtype).contiguous()}
    return {"weight_packed": pack_to_int32(qw.q.contiguous(), qw.bits),
            "weight_scale": qw.scale.to(dtype).contiguous(),
            "weight_shape": torch.tensor(list(qw.shape), dtype=torch.int64)}


def export_compressed(model: Any, qweights: dict[str, QuantizedWeight], scheme: QuantScheme, out_dir: str | Path,
                      tokenizer: Any = None, *, dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` with ``qweights`` (from ``quantize_weights``) as a compressed-tensors checkpoint.
    ``dtype`` is the dtype of the high-precision tensors and scales (default: the model's)."""
    from herd.model.hf import MM_TEXT_PREFIX, hf_state_dict, save_hf

    cfg = model.config
    dtype = dtype or next(model.parameters()).dtype
    prefix = MM_TEXT_PREFIX if cfg.vision is not None else ""
    for name, qw in qweights.items():
        if qw.kind == "int" and qw.scale.dtype != dtype:
            raise ValueError(f"{name}: scales are {qw.scale.dtype} but the export is {dtype}: quantize with "
                             f"scale_dtype={dtype} so the stored scale reproduces the codes")
    tensors: dict[str, torch.Tensor] = {}
    for key, t in hf_state_dict(model).items():
        if _FUSED_EXPERTS.search(key):
            continue  # written per expert below (quantized) or not at all
        text_key = key[len(prefix):] if prefix and key.startswith(prefix) else key
        if text_key.endswith(".weight") and text_key[: -len(".weight")] in qweights:
            continue
        tensors[key] = t.to(dtype) if t.is_floating_point() else t
    fused = [k[len(prefix):] if prefix and k.startswith(prefix) else k
             for k in hf_state_dict(model) if _FUSED_EXPERTS.search(k)]
    missing_experts = [k for k in fused if not any(n.startswith(k.rsplit(".", 1)[0] + ".") for n in qweights)]
    if missing_experts:
        raise ValueError(f"routed experts {missing_experts[:4]} are not quantized: vLLM's Llama 4 loader reads a "
                         "quantized checkpoint's experts only per expert; remove them from quantize.ignore")
    for name, qw in qweights.items():
        for suffix, t in compress(qw, dtype).items():
            tensors[f"{prefix}{name}.{suffix}"] = t
    ignore = [prefix + n if not n.startswith(("vision_model.", "multi_modal_projector.")) else n
              for n in high_precision_linears(model, qweights)]
    qcfg = quantization_config(scheme, ignore)
    return save_hf(model, out_dir, tokenizer, tensors=tensors, config_extra={"quantization_config": qcfg})


def decompress_tensors(tensors: dict[str, torch.Tensor], qcfg: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Checkpoint tensors of a compressed-tensors export -> dense ``<name>.weight`` tensors (dequantized with the
    scale's dtype), through compressed-tensors' registered compressor for the config's format."""
    from compressed_tensors.compressors.base import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig

    cfg = QuantizationConfig.model_validate(qcfg)
    if len(cfg.config_groups) != 1:
        raise ValueError(f"{len(cfg.config_groups)} config_groups: herd reads single-scheme exports (one "
                         "quantize.schemes entry per checkpoint)")
    scheme = next(iter(cfg.config_groups.values()))
    fmt = scheme.format or cfg.format
    compressor = BaseCompressor.get_value_from_registry(fmt)
    marker = ".weight_packed" if fmt == "pack-quantized" else ".weight_scale"
    names = sorted(k[: -len(marker)] for k in tensors if k.endswith(marker))
    out = dict(tensors)
    for name in names:
        local = {k[len(name) + 1:]: out.pop(k) for k in list(out) if k.startswith(name + ".")
                 and k[len(name) + 1:] in ("weight", "weight_packed", "weight_scale", "weight_shape",
                                           "weight_zero_point", "weight_g_idx")}
        dense = compressor.decompress(local, scheme)
        out[name + ".weight"] = dense["weight"].to(local["weight_scale"].dtype)
    return out


__all__ = ["compress", "ct_scheme", "decompress_tensors", "export_compressed", "quantization_config"]
