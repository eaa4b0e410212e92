"""Handwritten digit images (scikit-learn's 8x8 digits, no download) upscaled to vision tiles.

`digit_tile` turns an 8x8 image (values 0..16) into one (3, tile, tile) float32 tile normalized like Llama 4's
image processor (rescale to [0, 1], then mean = std = 0.5, so pixels lie in [-1, 1]); bilinear upscaling as
the processor does (numpy, so packing actors never import torch). The samples are chats: an image with a question or a caption request, and the answer.
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


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of 1-D bilinear resizing with half-pixel centers (align_corners=False)."""
    x = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    x = np.clip(x, 0, n_in - 1)
    lo = np.floor(x).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    w = x - lo
    m = np.zeros((n_out, n_in), dtype=np.float64)
    m[np.arange(n_out), lo] += 1 - w
    m[np.arange(n_out), hi] += w
    return m


def digit_tile(pixels: np.ndarray | list[int], tile_size: int) -> np.ndarray:
    """An 8x8 digit (0..16) as a normalized (3, tile_size, tile_size) float32 tile (bilinear upscale)."""
    img = np.asarray(pixels, dtype=np.float64).reshape(8, 8) / 16.0
    r = _bilinear_matrix(8, tile_size)
    up = np.clip(r @ img @ r.T, 0.0, 1.0)
    x = ((up - 0.5) / 0.5).astype(np.float32)  # Llama 4 processor: rescale to [0, 1], mean = std = 0.5
    return np.broadcast_to(x, (3, tile_size, tile_size)).copy()


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
