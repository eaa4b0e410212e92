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


@pytest.fixture(scope="session")
def eval_set(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real eval set (herd.eval.build_evalset) and BPE tokenizer of vocab 512 from a small synthetic corpus, for
    the gate's paired mini-evaluation through herd.eval's suites (a second or two to build)."""
    from herd.data.config import SyntheticConfig, TokenizerConfig
    from herd.data.synthetic import build_synthetic, write_synthetic
    from herd.data.tokenizer import save_tokenizer, train_tokenizer
    from herd.eval.config import EvaluateConfig
    from herd.eval.evalset import build_evalset

    root = tmp_path_factory.mktemp("evalset")
    corpus = build_synthetic(SyntheticConfig(n_entities=20, n_arithmetic_train=40, n_arithmetic_eval=20,
                                             n_rl_prompts=10, n_needle_docs=4, n_needle_eval=4, n_filler_docs=40,
                                             n_chat=20, n_preferences=5, n_images=10))
    write_synthetic(corpus, root / "raw", root / "tasks")
    tok_cfg = TokenizerConfig(vocab_size=CFG.vocab_size)
    save_tokenizer(train_tokenizer([d["text"] for d in corpus.documents], tok_cfg), root / "tokenizer", tok_cfg)
    cfg = EvaluateConfig(knowledge_items=12, arithmetic={"n_items": 24, "max_new_tokens": 8},
                         needle={"context_lengths": [64], "depths": [0.5], "samples_per_cell": 1})
    build_evalset(root / "tasks", root / "tokenizer", root / "evalset", cfg, seq_len=64)
    return {"tokenizer": root / "tokenizer", "evalset": root / "evalset", "tasks": root / "tasks"}
