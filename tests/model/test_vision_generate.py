"""Image prompts through the inference core: KV-cached greedy decoding with pixel_values equals greedy
decoding by repeated full forwards (prompts of different lengths, an image in each, decoding across chunk
boundaries)."""

from __future__ import annotations

import torch

from herd.model import Llama4, ModelConfig
from herd.model.generate import SamplingParams, generate
from herd.model.vision_config import VisionConfig

VISION = VisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128,
                      image_size=56, patch_size=14, projector_input_dim=48, projector_output_dim=48,
                      vision_output_dim=48)


def test_cached_generation_with_images_matches_full_forwards():
    cfg = ModelConfig(vocab_size=96, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, intermediate_size=64, intermediate_size_mlp=128,
                      attention_chunk_size=8, floor_scale=4, vision=VISION)
    torch.manual_seed(0)
    model = Llama4(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.15)
    patch = [cfg.image_token_index] * VISION.tokens_per_tile
    prompts = [[0, 6, 8, *patch, 7, 20, 21, 22], [0, 30, 31, 6, 8, *patch, 7, 40, 41, 42, 43, 44, 45]]
    pixel_values = torch.randn(2, 3, 56, 56)  # one tile per prompt, in prompt order
    params = SamplingParams(max_new_tokens=12, stop_tokens=[])
    cached = [g.tokens for g in generate(model, prompts, params, pixel_values=pixel_values)]

    for b, prompt in enumerate(prompts):
        ids = list(prompt)
        with torch.no_grad():
            for _ in range(params.max_new_tokens):
                logits = model(torch.tensor([ids]), pixel_values=pixel_values[b : b + 1]).logits
                ids.append(int(logits[0, -1].argmax()))
        assert cached[b] == ids[len(prompt):], b
    assert cached[0] != cached[1]
