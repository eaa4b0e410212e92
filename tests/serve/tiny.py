"""A tiny random Llama 4 checkpoint (HF layout, herd tokenizer) for the serve tests and the serve benchmark.

    from tests.serve.tiny import write_tiny_model
    write_tiny_model(out_dir)          # config.json, model.safetensors, tokenizer files (~2 s)

Random weights: tests check the API and that both engines agree with transformers, not answer quality.
"""

from __future__ import annotations

from pathlib import Path

TEXTS = [
    "the quick brown fox jumps over the lazy dog. ",
    "herd serves tiny llama models on ray serve with vllm and its own engine. ",
    "1 + 2 = 3. 7 + 7 = 14. 12 + 30 = 42. ",
    "Jonas Kovacs lives in a small town by the sea and repairs old clocks. ",
] * 50


def write_tiny_model(out_dir: str | Path, *, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Save a random tiny Llama 4 (2 layers, 2 experts top-1, vocab 512) with herd's tokenizer into out_dir."""
    import torch

    from herd.data.config import TokenizerConfig
    from herd.data.tokenizer import save_tokenizer, train_tokenizer
    from herd.model import Llama4, ModelConfig, save_hf

    out = Path(out_dir)
    tcfg = TokenizerConfig(vocab_size=512, min_frequency=1, max_train_chars=10_000, model_max_length=512)
    tok_dir = save_tokenizer(train_tokenizer(TEXTS, tcfg), out / "_tok", tcfg)
    cfg = ModelConfig(vocab_size=512, hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=128, intermediate_size_mlp=256, num_local_experts=2,
                      max_position_embeddings=512)
    torch.manual_seed(seed)
    model = Llama4(cfg)
    save_hf(model, out, tokenizer=tok_dir)
    return out
