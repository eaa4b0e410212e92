"""Parity with transformers 5.24 Llama4ForCausalLM on random weights (fp32, max |Δlogit| <= 1e-4), both ways:
herd -> save_hf -> from_pretrained, and save_pretrained -> load_hf -> herd. Covers all-MoE and interleaved, top-1
and top-2, sequences longer than the chunk, NoPE temperature active (floor_scale 4), tied and untied, GQA > 1,
qk-norm on/off, llama3 and default RoPE, no chunking. Text+image parity is in test_vision_*.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from herd.model import Llama4, ModelConfig, load_hf, save_hf
from herd.model.generate import SamplingParams, generate

transformers = pytest.importorskip("transformers")

TOL = 1e-4
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}
BASE = {
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 96,
    "intermediate_size_mlp": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "num_local_experts": 4,
    "attention_chunk_size": 16,
    "floor_scale": 4,
    "max_position_embeddings": 256,
}
CONFIGS = {
    # all-MoE, top-1, GQA 2, qk-norm, llama3 RoPE, untied; NoPE layer 3 with temperature > 1 from t = 3
    "all_moe_top1": dict(
        BASE, num_hidden_layers=4, interleave_moe_layer_step=1, num_experts_per_tok=1, rope_parameters=LLAMA3
    ),
    # interleaved MoE (odd layers), top-2, GQA 4, tied embeddings, no qk-norm, two NoPE layers
    "interleaved_top2_tied": dict(
        BASE,
        num_hidden_layers=6,
        interleave_moe_layer_step=2,
        num_experts_per_tok=2,
        num_attention_heads=8,
        head_dim=8,
        tie_word_embeddings=True,
        use_qk_norm=False,
        no_rope_layer_interval=3,
    ),
    # full attention on every layer (no chunking), MHA, temperature tuning off
    "no_chunk_mha": dict(
        BASE,
        num_hidden_layers=3,
        num_key_value_heads=4,
        attention_chunk_size=None,
        attn_temperature_tuning=False,
        num_experts_per_tok=1,
    ),
}


def _ids(cfg: ModelConfig, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(13, cfg.vocab_size, (2, 45), generator=g)  # 45 > chunk 16: three chunks, ragged last


@pytest.fixture(scope="module", params=list(CONFIGS))
def herd_model(request: pytest.FixtureRequest) -> Llama4:
    torch.manual_seed(0)
    model = Llama4(ModelConfig(**CONFIGS[request.param])).eval()
    with torch.no_grad():  # non-unit norms so a swapped or ignored norm weight would show
        for n, p in model.named_parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_save_hf_loads_in_transformers_with_equal_logits(
    herd_model: Llama4, tmp_path: Path, attn: str
) -> None:
    save_hf(herd_model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation=attn).eval()
    assert type(hf).__name__ == "Llama4ForCausalLM"
    ids = _ids(herd_model.config, 1)
    with torch.no_grad():
        diff = (herd_model(ids).logits - hf(ids).logits).abs().max().item()
    assert diff <= TOL, diff
    cfg = json.loads((tmp_path / "config.json").read_text())
    gen = json.loads((tmp_path / "generation_config.json").read_text())
    assert cfg["attn_temperature_tuning"] is herd_model.config.attn_temperature_tuning  # a bool, for vLLM
    assert gen["attn_temperature_tuning"] is herd_model.config.attn_temperature_tuning
    assert ("lm_head.weight" in _keys(tmp_path)) is not herd_model.config.tie_word_embeddings


def _keys(path: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return set(f.keys())


def test_transformers_save_pretrained_loads_in_herd(herd_model: Llama4, tmp_path: Path) -> None:
    # build the HF model from herd's config only, with transformers' own random init, then go the other way
    hf_cfg = transformers.Llama4TextConfig(
        **{k: v for k, v in herd_model.config.to_hf_dict().items() if k != "architectures"}
    )
    torch.manual_seed(1)
    hf = transformers.Llama4ForCausalLM(hf_cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.05)
        if herd_model.config.tie_word_embeddings:
            assert hf.lm_head.weight is hf.model.embed_tokens.weight
    hf.save_pretrained(tmp_path)
    loaded = load_hf(tmp_path)
    ids = _ids(loaded.config, 2)
    with torch.no_grad():
        diff = (loaded(ids).logits - hf(ids).logits).abs().max().item()
    assert diff <= TOL, diff
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) == loaded.config.tie_word_embeddings


def test_greedy_generate_matches_transformers(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = Llama4(ModelConfig(**CONFIGS["all_moe_top1"], initializer_range=0.1)).eval()
    save_hf(model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    prompt = _ids(model.config, 4)[0, :13].tolist()
    want = hf.generate(
        torch.tensor([prompt]),
        max_new_tokens=24,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=model.config.pad_token_id,
    )[0, 13:].tolist()
    got = generate(model, [prompt], SamplingParams(max_new_tokens=24, stop_tokens=[]))[0].tokens
    assert got == want  # 13 + 24 tokens cross two chunk boundaries of 16 with the chunk-only cache


def test_per_expert_checkpoint_layout_is_fused_on_load(tmp_path: Path) -> None:
    """llm-compressor / ModelOpt exports write experts as per-expert Linear weights; load_hf fuses them."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    model = Llama4(ModelConfig(**CONFIGS["all_moe_top1"])).eval()
    save_hf(model, tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    for key in [k for k in tensors if k.endswith("experts.gate_up_proj")]:
        prefix, gate_up = key.removesuffix(".gate_up_proj"), tensors.pop(key)
        down = tensors.pop(prefix + ".down_proj")
        for e in range(gate_up.shape[0]):
            gate, up = gate_up[e].chunk(2, dim=1)
            tensors[f"{prefix}.{e}.gate_proj.weight"] = gate.T.contiguous()
            tensors[f"{prefix}.{e}.up_proj.weight"] = up.T.contiguous()
            tensors[f"{prefix}.{e}.down_proj.weight"] = down[e].T.contiguous()
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    loaded = load_hf(tmp_path)
    ids = _ids(model.config, 5)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
