"""The data flow's step graph (no Ray): wiring, and a changed source file changes the clean step's cache key."""

from __future__ import annotations

import json
import os

from herd.flows.data import build
from herd.platform.config import load_recipe


def _steps(src):
    recipe = load_recipe(None, [f"data.sources={json.dumps(['synthetic', str(src)])}"])
    return {s.name: s for s in build(recipe)}


def test_graph_and_source_change_detection(tmp_path):
    src = tmp_path / "corpus.jsonl"
    src.write_text('{"text": "The quiet river watches the old mill at dusk."}\n')
    steps = _steps(src)
    assert list(steps) == ["data.synthetic", "data.clean", "data.tokenizer", "data.pack"]
    assert steps["data.pack"].in_driver and not steps["data.clean"].in_driver
    assert steps["data.pack"].inputs == {
        "corpus": "data.clean.corpus",
        "tokenizer": "data.tokenizer.tokenizer",
    }
    assert set(steps["data.pack"].outputs) == {"pretrain", "pretrain_val", "sft", "images"}
    before = steps["data.clean"].config_json()

    src.write_text('{"text": "The quiet river watches the old mill at dawn, slowly."}\n')
    os.utime(src, (1, 1))  # a new size and mtime: the listing in the cache key must change
    after = _steps(src)["data.clean"].config_json()
    assert before["data.sources"] == after["data.sources"]
    assert before["data.sources.listing"] != after["data.sources.listing"]
    # the tokenizer step's key depends on its own section only (and its input digest)
    assert _steps(src)["data.tokenizer"].config_json() == steps["data.tokenizer"].config_json()
