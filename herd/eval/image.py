"""Image QA suite: held-out handwritten digits through the vision tower, "What digit is shown?".

    r = evaluate_image(lm, read_items(evalset, "image"))
    r.skipped                     # "model has no vision tower ..." for text-only recipes (tiny), else None

Each 8x8 digit becomes one tile (``herd.data.synthetic.images.digit_tile``, the packer's preprocessing), the
prompt is the chat template with the image block (``<|image_start|><|image|><|patch|>*n<|image_end|>``) and
the question, and the answer counts when its last integer is the digit. Chance is 0.1.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from herd.eval.lm import HerdLM
from herd.eval.result import SuiteResult
from herd.eval.stats import wilson

NO_VISION = "model has no vision tower (ModelConfig.vision is None): image QA needs a recipe with vision"


def evaluate_image(lm: HerdLM, items: Sequence[dict[str, Any]], *, max_new_tokens: int = 12,
                   confidence: float = 0.95) -> SuiteResult:
    if not lm.has_vision:
        return SuiteResult("image", skipped=NO_VISION)
    if not items:
        return SuiteResult("image", skipped="the eval set holds no images (data.synthetic.n_images is 0)")
    import torch

    from herd.data.synthetic.arithmetic import check_answer
    from herd.data.synthetic.images import digit_tile

    t0 = time.perf_counter()
    vision = lm.model.config.vision
    convs = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": it["question"]}]}]
             for it in items]
    tiles = [torch.from_numpy(digit_tile(it["image"], vision.image_size))[None] for it in items]
    gens = lm.generate(lm.encode_chat(convs, vision.tokens_per_tile), max_new_tokens=max_new_tokens,
                       pixel_values=tiles)
    samples, right = [], 0
    for it, g in zip(items, gens, strict=True):
        pred = lm.decode(g).strip()
        ok = int(check_answer(pred, it["label"]))
        right += ok
        samples.append({"id": it["id"], "label": it["label"], "prediction": pred, "correct": ok})
    return SuiteResult("image", {"acc": wilson(right, len(items), confidence)}, primary="acc", samples=samples,
                       seconds=time.perf_counter() - t0, extra={"chance": 0.1})


__all__ = ["NO_VISION", "evaluate_image"]
