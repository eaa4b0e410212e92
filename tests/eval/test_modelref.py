"""herd.platform.modelref: digests, prefixes, LoggedModel ids and checkpoint directories resolve to a model + role."""

from __future__ import annotations

from pathlib import Path

import pytest

from herd.model import Llama4, ModelConfig, save_hf
from herd.platform.modelref import ModelRefError, resolve_model, role_of, step_roles
from herd.platform.store import ArtifactStore

CFG = {"vocab_size": 300, "hidden_size": 32, "intermediate_size": 48, "intermediate_size_mlp": 64,
       "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "num_local_experts": 4}


def test_import_dir_then_resolve_by_prefix(tmp_path: Path) -> None:
    save_hf(Llama4(ModelConfig(**CFG)), tmp_path / "ck")
    (tmp_path / "ck" / "optimizer.pt").write_bytes(b"not part of the model")
    store = ArtifactStore(tmp_path / "store")
    ref = resolve_model(str(tmp_path / "ck"), store)
    assert ref.role == "external" and ref.step == "import"
    files = {p.name for p in ref.artifact.local_path().iterdir()}
    assert "config.json" in files and "optimizer.pt" not in files
    again = resolve_model(ref.digest[:10], store)
    assert again.digest == ref.digest and again.role == "external"
    assert resolve_model(str(tmp_path / "ck"), store).digest == ref.digest  # re-import: same artifact


def test_role_from_producing_step(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    save_hf(Llama4(ModelConfig(**CFG)), tmp_path / "m")
    art = store.put_dir(tmp_path / "m", kind="model", format="hf-safetensors", producer_step="distill.train",
                        meta={"output": "model"})
    assert step_roles()["pretrain.train.model"] == "teacher"
    assert role_of(art) == "student"
    assert resolve_model(art.digest, store).role == "student"


@pytest.mark.parametrize("bad, words", [("xyz", "not a model reference"), ("deadbeefdeadbeef", "matches 0"),
                                        ("", "empty")])
def test_bad_references_say_what_to_pass(tmp_path: Path, bad: str, words: str) -> None:
    with pytest.raises(ModelRefError, match=words):
        resolve_model(bad, ArtifactStore(tmp_path / "store"))


def test_non_model_artifact_and_non_checkpoint_dir(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.txt").write_text("hi")
    art = store.put_dir(tmp_path / "d", kind="dataset", format="text")
    with pytest.raises(ModelRefError, match="dataset artifact"):
        resolve_model(art.digest, store)
    with pytest.raises(ModelRefError, match="no config.json"):
        resolve_model(str(tmp_path / "d"), store)
