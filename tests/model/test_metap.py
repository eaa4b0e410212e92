"""MetaP rules: roles, per-parameter fan-in multipliers (experts included), depth-μP folding, AdamW groups,
init."""

from __future__ import annotations

import math

import pytest
import torch

from herd.model import Llama4, ModelConfig, metap
from herd.model.vision_config import VisionConfig

VISION = VisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                      image_size=56, patch_size=14, projector_input_dim=48, projector_output_dim=48,
                      vision_output_dim=48)


def shape(width: int, *, layers: int = 4, inter: int | None = None, vision: VisionConfig | None = None,
          **kw) -> ModelConfig:
    return ModelConfig(vocab_size=64, hidden_size=width, num_hidden_layers=layers,
                       num_attention_heads=width // 16, num_key_value_heads=width // 32, head_dim=16,
                       intermediate_size=inter or 2 * width,
                       intermediate_size_mlp=4 * width, num_local_experts=4, interleave_moe_layer_step=2,
                       vision=vision, **kw)


def by_name(model, base=None, **kw) -> dict[str, metap.ParamRule]:
    return {r.name: r for r in metap.rules(model, base=base, **kw)}


def test_at_the_base_shape_metap_is_the_transformers_parametrization():
    cfg = shape(64)
    rules = by_name(Llama4(cfg), base=cfg)
    assert {r.lr_mult for r in rules.values()} == {1.0}
    assert {r.init_std for r in rules.values() if r.role in ("hidden", "output")} == {cfg.initializer_range}
    assert {r.role for r in rules.values()} == {"embedding", "hidden", "output", "vector"}


def test_width_rules_follow_each_parameters_fan_in():
    # 2x wider, expert width fixed: experts.down_proj (fan-in I) must not scale, gate_up (fan-in H) must
    base, cfg = shape(64, inter=128), shape(128, inter=128)
    r = by_name(Llama4(cfg), base=base, depth_scaling=False)
    s = cfg.initializer_range
    q = r["model.layers.0.self_attn.q_proj.weight"]
    assert (q.role, q.lr_mult, q.init_std) == ("hidden", 0.5, pytest.approx(s / math.sqrt(2)))
    assert r["model.layers.1.feed_forward.experts.gate_up_proj"].lr_mult == 0.5
    assert r["model.layers.1.feed_forward.experts.down_proj"].lr_mult == 1.0
    assert r["model.layers.1.feed_forward.shared_expert.down_proj.weight"].lr_mult == 1.0
    assert r["model.layers.0.feed_forward.down_proj.weight"].lr_mult == 0.5  # dense MLP width 4H scales
    assert r["model.layers.0.self_attn.o_proj.weight"].lr_mult == 0.5  # heads x head_dim scales
    for name in ("lm_head.weight", "model.layers.1.feed_forward.router.weight"):  # readouts
        assert (r[name].role, r[name].lr_mult, r[name].init_std) == ("output", 0.5, pytest.approx(s / 2))
    emb = r["model.embed_tokens.weight"]
    assert (emb.role, emb.lr_mult, emb.init_std, emb.wd_mult) == ("embedding", 1.0, s, 0.0)
    norm = r["model.layers.0.input_layernorm.weight"]
    assert (norm.role, norm.lr_mult, norm.init_std, norm.wd_mult) == ("vector", 1.0, None, 0.0)
    # decay timescale lr x wd is kept; Adam eps follows the 1/width gradient scale except for readouts
    assert q.wd_mult * q.lr_mult == pytest.approx(1.0) and q.eps_mult == 0.5
    assert r["lm_head.weight"].eps_mult == 1.0


def test_vision_tower_scales_with_its_own_width():
    wide = VISION.model_copy(update={"hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 4})
    base, cfg = shape(64, vision=VISION), shape(64, vision=wide)
    r = by_name(Llama4(cfg), base=base)
    assert r["vision_model.model.layers.0.self_attn.q_proj.weight"].lr_mult == 0.5
    assert r["vision_model.model.layers.0.mlp.fc2.weight"].lr_mult == 0.5  # fan-in Iv doubles
    assert r["vision_model.vision_adapter.mlp.fc1.weight"].lr_mult == 0.5
    assert r["vision_model.vision_adapter.mlp.fc2.weight"].lr_mult == 1.0  # projector dim unchanged
    assert r["vision_model.patch_embedding.linear.weight"].role == "embedding"
    assert r["vision_model.positional_embedding_vlm"].init_std == pytest.approx(32**-0.5)  # base Cv, not 64
    assert r["model.layers.0.self_attn.q_proj.weight"].lr_mult == 1.0  # text unchanged


def test_depth_mup_folds_the_branch_multiplier_into_the_last_matrix():
    base, cfg = shape(64, layers=2), shape(64, layers=8)
    r = by_name(Llama4(cfg), base=base)
    d = 2 / 8
    assert r["model.layers.0.self_attn.q_proj.weight"].lr_mult == pytest.approx(math.sqrt(d))
    assert r["model.layers.0.input_layernorm.weight"].lr_mult == pytest.approx(math.sqrt(d))
    o = r["model.layers.0.self_attn.o_proj.weight"]
    assert o.lr_mult == pytest.approx(d) and o.init_std == pytest.approx(cfg.initializer_range * math.sqrt(d))
    assert r["model.layers.1.feed_forward.experts.down_proj"].lr_mult == pytest.approx(d)
    assert r["lm_head.weight"].lr_mult == 1.0 and r["model.embed_tokens.weight"].lr_mult == 1.0
    assert {x.lr_mult for x in by_name(Llama4(cfg), base=base, depth_scaling=False).values()} == {1.0}


def test_param_groups_cover_every_parameter_once_and_train():
    base, cfg = shape(64), shape(128, vision=VISION)
    model = Llama4(cfg)
    groups = metap.param_groups(model, base=base, lr=1e-3, weight_decay=0.1, eps=1e-8)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    for g in groups:
        if g["role"] in ("vector", "embedding"):
            assert g["weight_decay"] == 0.0
        else:
            assert g["lr"] * g["weight_decay"] == pytest.approx(1e-3 * 0.1)
        assert g["lr"] == pytest.approx(1e-3 * g["lr_mult"])
    opt = torch.optim.AdamW(groups)
    before = model.lm_head.weight.detach().clone()
    out = model(torch.randint(13, 64, (2, 8)))
    out.logits.logsumexp(-1).mean().backward()
    opt.step()
    assert not torch.equal(before, model.lm_head.weight)


def test_trainer_call_defaults_to_a_width_256_base():
    model = Llama4(shape(512, layers=2))
    groups = metap.param_groups(model, lr=1.0, weight_decay=0.0)  # how herd.train.optim calls it
    lrs = {g["role"]: g["lr"] for g in groups}
    assert lrs["hidden"] == pytest.approx(0.5) and lrs["output"] == pytest.approx(0.5)
    assert lrs["embedding"] == 1.0 and "eps" not in groups[0]


def test_init_weights_draws_the_rule_std():
    base, cfg = shape(64), shape(256, layers=2)
    model = Llama4(cfg)
    metap.init_weights(model, base=base, generator=torch.Generator().manual_seed(0))
    r = by_name(model, base=base)
    params = dict(model.named_parameters())
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.feed_forward.experts.gate_up_proj",
                 "lm_head.weight"):
        assert params[name].std().item() == pytest.approx(r[name].init_std, rel=0.05)
    assert torch.all(params["model.norm.weight"] == 1)
    assert torch.all(model.model.embed_tokens.weight[cfg.pad_token_id] == 0)


def test_tied_embeddings_warn_and_untyped_models_are_rejected():
    with pytest.warns(UserWarning, match="tie_word_embeddings"):
        metap.rules(Llama4(shape(128, tie_word_embeddings=True)), base=shape(64))
    with pytest.raises(TypeError, match="ModelConfig"):
        metap.rules(torch.nn.Linear(4, 4))


def test_describe_lists_every_parameter():
    model = Llama4(shape(64, layers=2))
    table = metap.describe(model, base=shape(32, layers=2))
    assert table.count("\n") == 1 + len(list(model.parameters()))
    assert "| lm_head.weight | output | 0.01 | 0.5 | 2 | 1 |" in table


def test_wrapped_models_keep_their_rules():
    base, cfg = shape(64), shape(128, layers=2)
    model = Llama4(cfg)
    wrapped = torch.nn.Module()
    wrapped.module = model  # what DistributedDataParallel looks like from outside
    inner = {r.name: r.lr_mult for r in metap.rules(model, base=base)}
    outer = {r.name.removeprefix("module."): r.lr_mult for r in metap.rules(wrapped, base=base)}
    assert inner == outer
