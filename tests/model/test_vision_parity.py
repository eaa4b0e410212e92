"""Text+image parity with transformers 5.24 Llama4ForConditionalGeneration on random weights (fp32,
max |Δlogit| <= 1e-4), both ways: herd -> save_hf -> from_pretrained, and save_pretrained -> load_hf -> herd.

5.24's `Llama4ForConditionalGeneration.forward` raises on every call (reference §7.8), so the HF logits are
computed the way its forward would: embeddings -> get_image_features -> multi_modal_projector ->
masked_scatter at <|patch|> -> language_model(inputs_embeds=...)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from herd.model import Llama4, ModelConfig, load_hf, save_hf
from herd.model.vision_config import VisionConfig

transformers = pytest.importorskip("transformers")

TOL = 1e-4
PATCH = 9  # <|patch|> in herd's tokenizer
VISION = VisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                      image_size=56, patch_size=14, projector_input_dim=48, projector_output_dim=48,
                      vision_output_dim=48)
TEXT = {"vocab_size": 128, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "intermediate_size": 96, "intermediate_size_mlp": 128, "num_local_experts": 4,
        "attention_chunk_size": 16, "floor_scale": 4, "router_balance": "aux_loss"}
CONFIGS = {
    # interleaved MoE, top-1, GQA 2, untied; 4 layers: NoPE layer 3 with temperature active
    "interleaved_top1": dict(TEXT, num_hidden_layers=4, interleave_moe_layer_step=2, num_experts_per_tok=1),
    # all-MoE, top-2, tied embeddings, no qk-norm
    "all_moe_top2_tied": dict(TEXT, num_hidden_layers=3, interleave_moe_layer_step=1, num_experts_per_tok=2,
                              tie_word_embeddings=True, use_qk_norm=False, no_rope_layer_interval=3),
}


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Two prompts in the Llama 4 processor layout (4 <|patch|> per 56-px tile) longer than the chunk (16):
    row 0 holds a 1x2-tile image (two tiles + the global tile), row 1 a single-tile image late in the
    sequence."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(13, 128, (2, 40), generator=g)
    p = [PATCH] * 4
    # <|image_start|> tile <|tile_x|> tile <|tile_y|> <|image|> global-tile <|image_end|>
    row0 = [0, 6, *p, 10, *p, 11, 8, *p, 7]
    row1 = [6, 8, *p, 7]
    ids[0, : len(row0)] = torch.tensor(row0)
    ids[1, 25 : 25 + len(row1)] = torch.tensor(row1)
    pixel_values = torch.randn(4, 3, 56, 56, generator=g)  # tiles in prompt order
    return ids, pixel_values


def _hf_logits(hf, ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        embeds = hf.get_input_embeddings()(ids)
        feats = hf.get_image_features(pixel_values=pixel_values, return_dict=True).last_hidden_state
        feats = hf.multi_modal_projector(feats.view(-1, feats.size(-1)))
        mask = (ids == hf.config.image_token_index).unsqueeze(-1)
        return hf.language_model(inputs_embeds=embeds.masked_scatter(mask, feats)).logits


def _randomize(model: torch.nn.Module) -> None:
    with torch.no_grad():  # larger than init, non-unit norms: every op and weight must matter
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.1)


@pytest.fixture(scope="module", params=list(CONFIGS))
def cfg(request: pytest.FixtureRequest) -> ModelConfig:
    return ModelConfig(**CONFIGS[request.param], vision=VISION)


def test_save_hf_loads_as_conditional_generation_with_equal_logits(cfg: ModelConfig, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Llama4(cfg).eval()
    _randomize(model)
    save_hf(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["Llama4ForConditionalGeneration"] and config["model_type"] == "llama4"
    assert config["image_token_index"] == PATCH
    hf = transformers.AutoModelForImageTextToText.from_pretrained(tmp_path, attn_implementation="eager")
    hf.eval()
    assert type(hf).__name__ == "Llama4ForConditionalGeneration"
    ids, px = _inputs()
    with torch.no_grad():
        ours = model(ids, pixel_values=px).logits
    ref = _hf_logits(hf, ids, px)
    assert ref.abs().mean() > 0.1
    diff = (ours - ref).abs().max().item()
    assert diff <= TOL, diff


def test_transformers_save_pretrained_loads_in_herd(cfg: ModelConfig, tmp_path: Path) -> None:
    hf_dict = cfg.to_hf_dict()
    hf_cfg = transformers.Llama4Config(
        text_config=hf_dict["text_config"], vision_config=hf_dict["vision_config"],
        image_token_index=PATCH, boi_token_index=6, eoi_token_index=7,
    )
    torch.manual_seed(1)
    hf = transformers.Llama4ForConditionalGeneration(hf_cfg).eval()
    _randomize(hf)
    if cfg.tie_word_embeddings:
        hf.tie_weights()
    hf.save_pretrained(tmp_path)
    model = load_hf(tmp_path)
    assert model.config.vision == VISION and model.config.image_token_index == PATCH
    ids, px = _inputs()
    ref = _hf_logits(transformers.Llama4ForConditionalGeneration.from_pretrained(
        tmp_path, attn_implementation="sdpa").eval(), ids, px)
    with torch.no_grad():
        ours = model(ids, pixel_values=px).logits
    diff = (ours - ref).abs().max().item()
    assert diff <= TOL, diff


def test_images_change_the_logits_only_from_the_first_patch_on(cfg: ModelConfig) -> None:
    torch.manual_seed(0)
    model = Llama4(cfg).eval()
    _randomize(model)
    ids, px = _inputs()
    with torch.no_grad():
        a = model(ids, pixel_values=px).logits
        b = model(ids, pixel_values=px.flip(0)).logits  # same prompt, tiles in another order
    first = int((ids[1] == PATCH).nonzero()[0])
    # causal: nothing before the image sees it (not bit-equal: the MoE batches row 1 with a changed row 0)
    assert (a[1, :first] - b[1, :first]).abs().max() < 1e-5
    assert (a[1, first:] - b[1, first:]).abs().max() > 1e-3


def test_multimodal_checkpoint_carries_processor_configs_transformers_reads(tmp_path: Path) -> None:
    import inspect

    from transformers.image_processing_base import ImageProcessingMixin

    cfg = ModelConfig(**CONFIGS["interleaved_top1"], vision=VISION)
    save_hf(Llama4(cfg), tmp_path)
    image, _ = ImageProcessingMixin.get_image_processor_dict(str(tmp_path))
    assert image["image_processor_type"] == "Llama4ImageProcessorFast"
    assert image["size"] == {"height": VISION.image_size, "width": VISION.image_size}
    processor, _ = transformers.Llama4Processor.get_processor_dict(str(tmp_path))
    accepted = set(inspect.signature(transformers.Llama4Processor.__init__).parameters)
    assert set(processor) - {"processor_class"} <= accepted
    # the processor's <|patch|> count per tile equals what the tower emits
    downsample = round(1 / processor["pixel_shuffle_ratio"] ** 2)
    per_tile = (VISION.image_size // processor["patch_size"]) ** 2 // downsample
    assert per_tile == VISION.tokens_per_tile
