"""Fixtures of the quantize tests: one tiny random Llama 4 (a dense layer and an MoE layer with 4 experts) and its
compressed-tensors exports, built once per session (each takes well under a second)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from herd.model import Llama4, ModelConfig
from herd.quantize import QuantScheme

CFG = ModelConfig(vocab_size=512, hidden_size=128, intermediate_size=256, intermediate_size_mlp=512,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                  initializer_range=0.06)  # wider init than 0.02: peakier logits, so top-1 is meaningful

SCHEMES = {
    "int8": QuantScheme(scheme="int8"),
    "int4": QuantScheme(scheme="int4", group_size=32),
    "fp8": QuantScheme(scheme="fp8"),
}


@pytest.fixture(scope="session")
def tiny_model() -> Llama4:
    torch.manual_seed(0)
    return Llama4(CFG).eval()


@pytest.fixture(scope="session")
def exports(tiny_model: Llama4, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """scheme name -> export directory (RTN; fp32 high-precision tensors and scales)."""
    from herd.quantize.export import export_compressed
    from herd.quantize.targets import quantize_weights

    root = tmp_path_factory.mktemp("exports")
    out = {}
    for name, scheme in SCHEMES.items():
        out[name] = export_compressed(tiny_model, quantize_weights(tiny_model, scheme), scheme, root / name)
    return out


@pytest.fixture(scope="session")
def ids() -> torch.Tensor:
    return torch.randint(0, CFG.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
