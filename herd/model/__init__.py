"""herd.model: Llama 4 (text decoder, early-fusion vision, MoE) in single-device PyTorch.

from herd.model import ModelConfig, Llama4, save_hf, load_hf
model = Llama4(ModelConfig())
out = model(input_ids)            # out.logits, out.aux_loss, out.router_stats
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from herd.model.config import ModelConfig, RopeParameters
from herd.model.vision_config import VisionConfig

if TYPE_CHECKING:
    from herd.model.decoder import Llama4, Llama4Output
    from herd.model.hf import CheckpointError, load_hf, save_hf, vllm_issues
    from herd.model.moe import RouterStats

# The configs are torch-free; everything else imports torch (2-6 s). Recipes and the CLI import herd.model.config
# through this package, so the torch-backed names resolve lazily, on first use.
_LAZY = {
    "Llama4": "herd.model.decoder",
    "Llama4Output": "herd.model.decoder",
    "CheckpointError": "herd.model.hf",
    "load_hf": "herd.model.hf",
    "save_hf": "herd.model.hf",
    "vllm_issues": "herd.model.hf",
    "RouterStats": "herd.model.moe",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'herd.model' has no attribute {name!r}")


__all__ = [
    "CheckpointError",
    "Llama4",
    "Llama4Output",
    "ModelConfig",
    "RopeParameters",
    "RouterStats",
    "VisionConfig",
    "load_hf",
    "save_hf",
    "vllm_issues",
]
