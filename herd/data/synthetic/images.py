"""Handwritten digit images (scikit-learn's 8x8 digits, no download) upscaled to vision tiles.

`digit_tile` turns an 8x8 image (values 0..16) into one (3, tile, tile) float32 tile normalized like Llama 4's
image processor (rescale to [0, 1], then mean = std = 0.5, so pixels lie in [-1, 1]); bilinear upscaling as
the processor does. The samples are chats: an image with a question or a caption request, and the answer.
"""

from __future__ import annotations

import numpy as np

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
QUESTIONS = [
    "What digit is shown?",
    "Which number is written in this image?",
    "Read the digit in the picture.",
]


def load_digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as (N, 8, 8) uint8 in 0..16 and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.uint8), d.target.astype(np.int64)


def digit_tile(pixels: np.ndarray | list[int], tile_size: int) -> np.ndarray:
    """An 8x8 digit (0..16) as a normalized (3, tile_size, tile_size) float32 tile."""
    import torch

    img = torch.as_tensor(np.asarray(pixels, dtype=np.float32).reshape(1, 1, 8, 8)) / 16.0
    up = torch.nn.functional.interpolate(
        img, size=(tile_size, tile_size), mode="bilinear", align_corners=False
    )
    x = (up.clamp(0, 1) - 0.5) / 0.5
    return x.expand(1, 3, tile_size, tile_size).reshape(3, tile_size, tile_size).numpy().astype(np.float32)


def image_sample(pixels: np.ndarray, label: int, rng: np.random.Generator) -> dict[str, object]:
    """A chat sample about one digit: a question or a caption request, and its answer."""
    if rng.random() < 0.5:
        prompt = QUESTIONS[int(rng.integers(len(QUESTIONS)))]
        answer = f"The digit is {label}."
    else:
        prompt = "Describe the image."
        answer = f"A handwritten digit {WORDS[label]} ({label})."
    return {
        "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]},
            {"role": "assistant", "content": answer},
        ],
        "image": pixels.reshape(-1).astype(int).tolist(),
        "label": int(label),
    }
