"""DataConfig validation: errors name the field; a missing local source fails before anything runs."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from herd.data.config import DataConfig, PackingConfig


def test_defaults_are_the_tiny_recipe():
    cfg = DataConfig()
    assert [s.uri for s in cfg.sources] == ["synthetic"]
    assert cfg.tokenizer.vocab_size == 4096
    assert cfg.packing.image_tokens_per_tile == (32 // 8) ** 2 // 4


def test_missing_local_source_fails_at_validation(tmp_path):
    with pytest.raises(ValidationError) as e:
        DataConfig(sources=[str(tmp_path / "nope.jsonl")])
    text = str(e.value)
    assert "sources.0.uri" in text and "does not exist" in text and "nope.jsonl" in text


def test_string_sources_and_weights(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text('{"text": "hello"}\n')
    cfg = DataConfig(sources=["synthetic", {"uri": str(f), "weight": 2.5}])
    assert cfg.sources[1].weight == 2.5 and cfg.sources[1].display_name == "a.jsonl"
    with pytest.raises(ValidationError, match=r"sources\.1\.weight"):
        DataConfig(sources=["synthetic", {"uri": str(f), "weight": 0}])


def test_duplicate_names_and_unknown_fields(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text("\n")
    with pytest.raises(ValidationError, match="duplicate source names"):
        DataConfig(sources=[str(f), f"file://{f}"])
    with pytest.raises(ValidationError, match=r"tokenizer\.vocab_sise"):
        DataConfig(tokenizer={"vocab_sise": 10})


def test_cleaning_and_packing_cross_checks():
    with pytest.raises(ValidationError, match=r"cleaning.bands=7 must divide cleaning.num_perm=128"):
        DataConfig(cleaning={"bands": 7})
    with pytest.raises(ValidationError, match="multiple of packing.patch_size"):
        PackingConfig(tile_size=30, patch_size=8)
    with pytest.raises(ValidationError, match="must be even"):
        PackingConfig(tile_size=24, patch_size=8)
    with pytest.raises(ValidationError, match="unsupported scheme"):
        DataConfig(sources=["ftp2://x/y"])
