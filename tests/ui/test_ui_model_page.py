"""A model's MLflow page carries its architecture and parameter counts, read from the model's own config.json (the
transformers layout every herd model format keeps), so every stage's model gets them without flow code."""

from __future__ import annotations

import json

from herd.model.config import ModelConfig
from herd.platform.mlflow_views import model_architecture


def test_architecture_and_parameter_counts_from_config_json(tmp_path):
    cfg = ModelConfig(vocab_size=1024, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=128, intermediate_size_mlp=256, num_local_experts=2)
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_hf_dict()))
    arch = model_architecture(tmp_path)
    assert arch["total_params"] == cfg.num_params() and arch["active_params"] == cfg.num_active_params()
    assert arch["active_params"] < arch["total_params"]  # MoE: one of two experts per token
    assert arch["arch.hidden_size"] == 64 and arch["arch.num_local_experts"] == 2


def test_no_config_means_no_architecture(tmp_path):
    assert model_architecture(tmp_path) == {}
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert model_architecture(tmp_path) == {}
