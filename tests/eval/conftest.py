"""Fixtures of the eval tests: a real BPE tokenizer and eval set from the synthetic corpus, tiny random models.

Everything is small (vocab 512, 2-layer models of ~50k parameters, a few items per suite) so each suite runs
in about a second; the tokenizer, tasks and eval set are built once per session.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from herd.data.config import SyntheticConfig, TokenizerConfig
from herd.data.synthetic import build_synthetic, write_synthetic
from herd.data.tokenizer import save_tokenizer, train_tokenizer
from herd.eval.config import EvaluateConfig
from herd.eval.evalset import build_evalset
from herd.eval.lm import HerdLM
from herd.model import Llama4, ModelConfig, save_hf

VOCAB = 512
SEQ_LEN = 64
SMALL = {"hidden_size": 32, "intermediate_size": 48, "intermediate_size_mlp": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "num_local_experts": 2, "attention_chunk_size": 32}


def small_eval_config(**kw) -> EvaluateConfig:
    cfg = {"knowledge_items": 12, "perplexity_rows": 8, "image_items": 6, "batch_size": 16,
           "arithmetic": {"n_items": 40, "pass_k_items": 6, "samples": 4, "pass_k": [1, 2], "max_new_tokens": 8},
           "needle": {"length_multiples": [1.0, 2.0], "depths": [0.0, 0.5, 1.0], "samples_per_cell": 2}}
    cfg.update(kw)
    return EvaluateConfig(**cfg)


@pytest.fixture(scope="session")
def eval_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evaldata")
    corpus = build_synthetic(SyntheticConfig(n_entities=20, n_arithmetic_train=40, n_arithmetic_eval=20,
                                             n_rl_prompts=10, n_needle_docs=4, n_needle_eval=4, n_filler_docs=40,
                                             n_chat=20, n_preferences=5, n_images=30))
    write_synthetic(corpus, root / "raw", root / "tasks")
    texts = [d["text"] for d in corpus.documents]
    tok_cfg = TokenizerConfig(vocab_size=VOCAB)
    save_tokenizer(train_tokenizer(texts, tok_cfg), root / "tokenizer", tok_cfg)
    build_evalset(root / "tasks", root / "tokenizer", root / "evalset", small_eval_config(), seq_len=SEQ_LEN)
    return {"root": root, "tasks": root / "tasks", "tokenizer": root / "tokenizer", "evalset": root / "evalset"}


def random_model(seed: int = 0, **over) -> Llama4:
    torch.manual_seed(seed)
    return Llama4(ModelConfig(vocab_size=VOCAB, **{**SMALL, **over})).eval()


@pytest.fixture(scope="session")
def tiny_lm(eval_data: dict[str, Path]) -> HerdLM:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(eval_data["tokenizer"] / "tokenizer.json"))
    return HerdLM(random_model(), tok, batch_size=16)


@pytest.fixture(scope="session")
def tiny_model_dir(eval_data: dict[str, Path]) -> Path:
    out = eval_data["root"] / "model"
    save_hf(random_model(), out, tokenizer=str(eval_data["tokenizer"]))
    return out
