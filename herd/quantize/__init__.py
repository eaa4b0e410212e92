"""herd.quantize: post-training weight quantization of herd's Llama 4 models, exported as compressed-tensors.

    from herd.quantize import QuantScheme, quantize_weights, export_compressed, load_quantized
    scheme = QuantScheme(scheme="int4", method="gptq", group_size=32)
    hessians = collect_hessians(model, batches, target_names(model))   # GPTQ only (calibration rows)
    qweights = quantize_weights(model, scheme, hessians)          # {module name: QuantizedWeight}
    export_compressed(model, qweights, scheme, "out/", tokenizer=...)   # loads in transformers, vLLM, load_hf
    fast = load_quantized("out/")                                 # herd model with packed int8/int4 CPU kernels

Modules: config (recipe section), rtn (round to nearest, fp8, the QuantizedWeight record), gptq (Hessians and
GPTQ), targets (which weights are quantized, experts unfused), export (compressed-tensors writer and reader),
modules (packed runtime Linears and experts, swapped in from outside the model code), gate (quality gate).
"""

from __future__ import annotations

import importlib
from typing import Any

from herd.quantize.config import CalibrationConfig, GateConfig, QuantizeConfig, QuantScheme

# torch-backed names resolve lazily so recipes and the CLI import the config without torch
_LAZY = {
    "QuantizedWeight": "herd.quantize.rtn",
    "collect_hessians": "herd.quantize.gptq",
    "quantize_weights": "herd.quantize.targets",
    "export_compressed": "herd.quantize.export",
    "load_quantized": "herd.quantize.modules",
    "load_for_inference": "herd.quantize.modules",
    "quantize_model_": "herd.quantize.modules",
    "KernelShapeError": "herd.quantize.modules",
    "QualityGateError": "herd.quantize.gate",
    "check_gate": "herd.quantize.gate",
    "logit_agreement": "herd.quantize.gate",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'herd.quantize' has no attribute {name!r}")


__all__ = [
    "CalibrationConfig",
    "GateConfig",
    "KernelShapeError",
    "QualityGateError",
    "QuantScheme",
    "QuantizeConfig",
    "QuantizedWeight",
    "check_gate",
    "collect_hessians",
    "export_compressed",
    "load_for_inference",
    "load_quantized",
    "logit_agreement",
    "quantize_model_",
    "quantize_weights",
]
