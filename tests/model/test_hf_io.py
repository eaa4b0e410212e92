"""save_hf / load_hf file handling: sharding, dtype, tokenizer files, clear errors for bad directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from herd.model import CheckpointError, Llama4, ModelConfig, load_hf, save_hf

CFG = ModelConfig(
    vocab_size=300,
    hidden_size=32,
    intermediate_size=48,
    intermediate_size_mlp=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_local_experts=4,
)


def test_sharded_bf16_save_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Llama4(CFG).eval()
    save_hf(model, tmp_path, dtype=torch.bfloat16, max_shard_bytes=20_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and not (tmp_path / "model.safetensors").exists()
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    loaded = load_hf(tmp_path)
    assert loaded.lm_head.weight.dtype == torch.bfloat16
    assert loaded.rope_inv_freq.dtype == torch.float32  # RoPE frequencies are never rounded to bf16
    for k, v in model.state_dict().items():
        if k.endswith("expert_bias"):
            continue
        torch.testing.assert_close(loaded.state_dict()[k], v.to(torch.bfloat16), atol=0, rtol=0)
    save_hf(model, tmp_path)  # re-saving unsharded removes the stale shards
    assert sorted(p.name for p in tmp_path.glob("model*")) == ["model.safetensors"]


def test_tokenizer_directory_is_copied(tmp_path: Path) -> None:
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    (tok / "tokenizer_config.json").write_text('{"tokenizer_class": "PreTrainedTokenizerFast"}')
    save_hf(Llama4(CFG), tmp_path / "out", tokenizer=tok)
    assert (tmp_path / "out" / "tokenizer.json").exists() and (
        tmp_path / "out" / "tokenizer_config.json"
    ).exists()
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        save_hf(Llama4(CFG), tmp_path / "out2", tokenizer=tmp_path / "out2")


def test_bad_directories_get_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no config.json"):
        load_hf(tmp_path)
    save_hf(Llama4(CFG), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
    with pytest.raises(CheckpointError, match="no_rope_layers must hold 3 entries"):
        load_hf(tmp_path)
    derived = {"no_rope_layers", "moe_layers", "layer_types"}
    (tmp_path / "config.json").write_text(
        json.dumps({**{k: v for k, v in cfg.items() if k not in derived}, "num_hidden_layers": 3})
    )
    with pytest.raises(CheckpointError, match="missing"):
        load_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 40}))
    with pytest.raises(CheckpointError, match="shape"):
        load_hf(tmp_path)


def test_bf16_autocast_training_step() -> None:
    """The trainer runs forward/backward under bf16 autocast where the CPU has native bf16."""
    torch.manual_seed(0)
    model = Llama4(CFG.model_copy(update={"num_experts_per_tok": 2})).train()
    ids = torch.randint(13, 300, (2, 24))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids)
        loss = (
            torch.nn.functional.cross_entropy(out.logits.float().flatten(0, 1), ids.flatten()) + out.aux_loss
        )
    loss.backward()
    assert out.logits.dtype == torch.bfloat16
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad
    )


def test_vllm_issues_flag_what_vllm_cannot_serve() -> None:
    from herd.model import vllm_issues

    ok = CFG.model_copy(update={"head_dim": 64, "attention_chunk_size": 128})
    assert vllm_issues(ok) == []
    bad = ModelConfig(
        **{
            **CFG.model_dump(),
            "num_experts_per_tok": 2,
            "moe_layers": [0],
            "attention_chunk_size": 20,
            "head_dim": 12,
        }
    )
    found = " ".join(vllm_issues(bad))
    for what in ("num_experts_per_tok=2", "moe_layers [0]", "attention_chunk_size=20", "head_dim=12"):
        assert what in found


def test_malformed_input_ids_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"shape \(batch, seq\)"):
        Llama4(CFG)(torch.tensor([1, 2, 3]))
