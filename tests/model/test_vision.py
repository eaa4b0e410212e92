"""Vision tower unit tests: config validation, 2-D RoPE, pixel shuffle, bit parity of the tower with
transformers' Llama4VisionModel, the <|patch|> merge, dtype casts."""

from __future__ import annotations

import pytest
import torch

from herd.model.vision import (
    MultiModalProjector,
    VisionModel,
    merge_image_features,
    pixel_shuffle,
    vision_rope_table,
)
from herd.model.vision_config import VisionConfig

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
        "image_size": 56, "patch_size": 14, "projector_input_dim": 48, "projector_output_dim": 48,
        "vision_output_dim": 48}


def tiny(**kw) -> VisionConfig:
    return VisionConfig(**{**TINY, **kw})


@pytest.mark.parametrize("kw, field", [
    ({"num_attention_heads": 3}, "num_attention_heads"),
    ({"hidden_size": 24, "num_attention_heads": 4, "intermediate_size": 96}, "divisible by 4"),
    ({"intermediate_size": 100}, "intermediate_size"),
    ({"projector_output_dim": 64}, "projector_output_dim"),
    ({"vision_output_dim": 64}, "vision_output_dim"),
    ({"image_size": 42}, "1/pixel_shuffle_ratio"),  # 3 patches per side, not divisible by 2
    ({"image_size": 50}, "patch_size"),
    ({"pixel_shuffle_ratio": 0.4}, "pixel_shuffle_ratio"),
    ({"multi_modal_projector_bias": True}, "multi_modal_projector_bias"),
])
def test_config_rejects_bad_shapes_naming_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        tiny(**kw)


def test_config_defaults_are_the_released_tower_and_derive_token_counts():
    cfg = VisionConfig()
    assert (cfg.hidden_size, cfg.head_dim, cfg.num_patches, cfg.tokens_per_tile) == (1408, 88, 576, 144)
    assert tiny().tokens_per_tile == 4


def test_config_round_trips_through_transformers():
    transformers = pytest.importorskip("transformers")
    cfg = tiny(rope_theta=1234.0)
    hf = transformers.Llama4VisionConfig(**cfg.to_hf_dict())
    assert hf.rope_parameters["rope_theta"] == 1234.0
    assert VisionConfig.from_hf_dict(hf.to_dict()) == cfg


def test_num_params_matches_the_module():
    cfg = tiny()
    assert cfg.num_params() == sum(p.numel() for p in VisionModel(cfg).parameters())


def test_rope_table_equals_transformers_and_leaves_cls_unrotated():
    pytest.importorskip("transformers")
    from transformers import Llama4VisionConfig
    from transformers.models.llama4.modeling_llama4 import Llama4VisionRotaryEmbedding

    cfg = tiny()
    ours = vision_rope_table(cfg)
    theirs = Llama4VisionRotaryEmbedding._compute_freqs_ci(Llama4VisionConfig(**cfg.to_hf_dict())).squeeze(1)
    assert ours.dtype == torch.complex64 and torch.equal(ours, theirs)
    assert torch.equal(ours[-1], torch.ones_like(ours[-1]))  # CLS: angle 0
    # patch 5 in a 4x4 grid: col 1, row 1 -> x pairs rotate by 2*w_j, y pairs too
    w0 = 1.0
    assert torch.allclose(torch.angle(ours[5, 0]), torch.tensor(2 * w0))
    assert torch.allclose(torch.angle(ours[4, cfg.head_dim // 4]), torch.tensor(2 * w0))  # row 1 -> 2*w_0


def test_pixel_shuffle_channel_order_and_hf_equivalence():
    t, n, c = 2, 4, 3
    x = torch.randn(t, n * n, c)
    y = pixel_shuffle(x, 0.5)
    assert y.shape == (t, 4, 4 * c)
    grid = x.view(t, n, n, c)
    for i in range(2):
        for j in range(2):
            for a in range(2):
                for b in range(2):
                    # output token (i, j), channel block a*2+b holds patch (row 2i+a, col 2j+b)
                    block = slice((a * 2 + b) * c, (a * 2 + b + 1) * c)
                    assert torch.equal(y[:, i * 2 + j, block], grid[:, 2 * i + a, 2 * j + b])
    pytest.importorskip("transformers")
    from transformers.models.llama4.modeling_llama4 import pixel_shuffle as hf_pixel_shuffle

    assert torch.equal(y, hf_pixel_shuffle(x, 0.5))


def _hf_tower(cfg: VisionConfig):
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama4.modeling_llama4 import Llama4VisionModel

    torch.manual_seed(0)
    hf = Llama4VisionModel(transformers.Llama4VisionConfig(**cfg.to_hf_dict())).eval()
    with torch.no_grad():  # larger than init so every op (attention, GELUs) matters
        for p in hf.parameters():
            p.normal_(0, 0.2)
    return hf


def test_tower_is_bit_identical_to_transformers():
    cfg = tiny()
    hf = _hf_tower(cfg)
    ours = VisionModel(cfg).eval()
    ours.load_state_dict(hf.state_dict())  # same names: vision_model.* keys without the prefix
    px = torch.randn(3, 3, 56, 56)
    with torch.no_grad():
        ref = hf(px).last_hidden_state
        out = ours(px)
    assert out.shape == (3, cfg.tokens_per_tile, cfg.projector_output_dim)
    assert ref.abs().mean() > 0.05
    assert (out - ref).abs().max().item() <= 1e-5


def test_bf16_cast_keeps_the_rope_rotation():
    cfg = tiny()
    hf = _hf_tower(cfg)
    ours = VisionModel(cfg).eval()
    ours.load_state_dict(hf.state_dict())
    px = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        ref = ours(px)
        ours.to(torch.bfloat16)  # HF's complex buffer would lose its imaginary part here (reference §7.7)
        low = ours(px.bfloat16()).float()
    assert ours.rope(torch.device("cpu")).dtype == torch.complex64
    rel = (low - ref).norm() / ref.norm()
    assert rel < 0.05, rel


def test_tower_rejects_wrong_tile_shape():
    with pytest.raises(ValueError, match=r"\(num_tiles, 3, 56, 56\)"):
        VisionModel(tiny())(torch.randn(1, 3, 64, 64))


def test_merge_scatters_rows_in_order_at_patch_positions_only():
    h, patch = 4, 9
    ids = torch.tensor([[1, patch, patch, 2], [patch, 3, 4, patch]])
    emb = torch.zeros(2, 4, h)
    feats = torch.arange(4 * h, dtype=torch.float32).view(2, 2, h)  # 2 tiles x 2 tokens
    out = merge_image_features(emb, ids, feats, patch)
    rows = feats.view(-1, h)
    assert torch.equal(out[0, 1], rows[0]) and torch.equal(out[0, 2], rows[1])
    assert torch.equal(out[1, 0], rows[2]) and torch.equal(out[1, 3], rows[3])
    assert torch.equal(out[ids != patch], emb[ids != patch])


def test_merge_errors_explain_the_mismatch():
    ids = torch.tensor([[9, 9, 1]])
    with pytest.raises(ValueError, match="2 <|patch|> tokens.*3 feature rows"):
        merge_image_features(torch.zeros(1, 3, 4), ids, torch.zeros(3, 4), 9)
    with pytest.raises(ValueError, match="MultiModalProjector"):
        merge_image_features(torch.zeros(1, 3, 4), ids, torch.zeros(2, 5), 9)


def test_gradients_reach_the_tower_and_projector_through_the_merge():
    cfg = tiny()
    tower, proj = VisionModel(cfg), MultiModalProjector(cfg, 16)
    ids = torch.full((1, 6), 9)
    ids[0, 0] = ids[0, 5] = 1
    emb = torch.randn(1, 6, 16, requires_grad=True)
    out = merge_image_features(emb, ids, proj(tower(torch.randn(1, 3, 56, 56))), 9)
    out.pow(2).sum().backward()
    assert tower.patch_embedding.linear.weight.grad.abs().sum() > 0
    assert proj.linear_1.weight.grad.abs().sum() > 0
    assert emb.grad[0, 0].abs().sum() > 0 and emb.grad[0, 1].abs().sum() == 0  # overwritten rows get no grad


def test_reads_the_released_scout_vision_config_with_legacy_keys():
    scout = {"attention_dropout": 0.0, "hidden_act": "gelu", "hidden_size": 1408, "image_size": 336,
             "initializer_range": 0.02, "intermediate_layers_indices": [], "intermediate_size": 5632,
             "model_type": "llama4_vision_model", "multi_modal_projector_bias": False, "norm_eps": 1e-05,
             "num_attention_heads": 16, "num_channels": 3, "num_hidden_layers": 34, "patch_size": 14,
             "pixel_shuffle_ratio": 0.5, "projector_dropout": 0.0, "projector_input_dim": 4096,
             "projector_output_dim": 4096, "rope_theta": 10000, "vision_feature_layer": -1,
             "vision_feature_select_strategy": "default", "vision_output_dim": 4096}
    assert VisionConfig.from_hf_dict(scout) == VisionConfig()
    with pytest.raises(ValueError, match="multi_modal_projector_bias"):
        VisionConfig.from_hf_dict({**scout, "multi_modal_projector_bias": True})
