"""ModelConfig: validation errors, derived layer patterns, parameter counts, config.json round trips."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from herd.model import Llama4, ModelConfig

TINY = {
    "vocab_size": 300,
    "hidden_size": 32,
    "intermediate_size": 48,
    "intermediate_size_mlp": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_local_experts": 4,
    "attention_chunk_size": 8,
}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"num_attention_heads": 5}, "num_attention_heads"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"head_dim": 7}, "head_dim"),
        ({"num_experts_per_tok": 5}, "num_experts_per_tok"),
        ({"interleave_moe_layer_step": 0}, "interleave_moe_layer_step"),
        ({"moe_layers": [0, 9]}, "moe_layers"),
        ({"no_rope_layers": [1, 0]}, "no_rope_layers"),
        ({"pad_token_id": 300}, "pad_token_id"),
        ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0}}, "low_freq_factor"),
        ({"hidden_sizes": 3}, "hidden_sizes"),
    ],
)
def test_invalid_shapes_raise_errors_naming_the_field(change: dict, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        ModelConfig(**{**TINY, **change})


def test_layer_patterns_follow_transformers_rules() -> None:
    cfg = ModelConfig(
        **{**TINY, "num_hidden_layers": 8, "interleave_moe_layer_step": 2, "no_rope_layer_interval": 4}
    )
    assert cfg.moe_layer_ids == [1, 3, 5, 7]
    assert cfg.rope_layer_flags == [1, 1, 1, 0, 1, 1, 1, 0]
    assert ModelConfig(**{**TINY, "interleave_moe_layer_step": 1}).moe_layer_ids == [0, 1, 2, 3]
    assert ModelConfig(**TINY).head_dim == 8  # derived from hidden/heads, never transformers' 128 default


@pytest.mark.parametrize("tied", [False, True])
def test_param_counts_match_the_module(tied: bool) -> None:
    cfg = ModelConfig(**{**TINY, "tie_word_embeddings": tied, "num_experts_per_tok": 2})
    model = Llama4(cfg)
    assert cfg.num_params() == sum(p.numel() for p in model.parameters())
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    per_expert = experts // (cfg.num_local_experts * len(cfg.moe_layer_ids))
    inactive = (cfg.num_local_experts - 2) * per_expert * len(cfg.moe_layer_ids)
    assert cfg.num_active_params() == cfg.num_params() - inactive


def test_hf_dict_round_trip_and_legacy_keys() -> None:
    from transformers import Llama4TextConfig

    cfg = ModelConfig(
        **{
            **TINY,
            "rope_parameters": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
            },
        }
    )
    d = cfg.to_hf_dict()
    assert d["architectures"] == ["Llama4ForCausalLM"] and d["attn_temperature_tuning"] is True
    hf = Llama4TextConfig(**{k: v for k, v in d.items() if k != "architectures"})
    assert hf.head_dim == cfg.head_dim and hf.moe_layers == cfg.moe_layer_ids
    assert ModelConfig.from_hf_dict(hf.to_dict()).model_dump() == {
        **cfg.model_dump(),
        "rope_parameters": {
            **cfg.rope_parameters.model_dump(),
            "original_max_position_embeddings": cfg.max_position_embeddings,
        },
    }
    # Meta's original config.json: legacy rope keys, attn_temperature_tuning as an int
    legacy = {k: v for k, v in d.items() if k != "rope_parameters"}
    legacy.update(rope_theta=10000.0, rope_scaling=None, attn_temperature_tuning=4)
    back = ModelConfig.from_hf_dict(legacy)
    assert back.rope_parameters.rope_theta == 10000.0 and back.attn_temperature_tuning is True
    with pytest.raises(ValueError, match="silu"):
        ModelConfig.from_hf_dict({**d, "hidden_act": "gelu"})
    with pytest.raises(ValueError, match="does not know"):
        ModelConfig.from_hf_dict({**d, "frobnicate": 1})
