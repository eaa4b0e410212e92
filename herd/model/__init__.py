"""herd.model: Llama 4 (text decoder, early-fusion vision, MoE) in single-device PyTorch.

from herd.model import ModelConfig, Llama4, save_hf, load_hf
model = Llama4(ModelConfig())
out = model(input_ids)            # out.logits, out.aux_loss, out.router_stats
"""

from herd.model.config import ModelConfig, RopeParameters
from herd.model.decoder import Llama4, Llama4Output
from herd.model.hf import CheckpointError, load_hf, save_hf, vllm_issues
from herd.model.moe import RouterStats
from herd.model.vision_config import VisionConfig

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
