"""Users' own post-training data: SFT chats, RL prompts (with a `module:function` reward validated at recipe load)
and preference pairs from jsonl / parquet, local and on s3:// (moto)."""

from __future__ import annotations

import json

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from herd.platform.config import load_recipe
from herd.posttrain.config import UserSource
from herd.posttrain.rewards import is_correct
from herd.posttrain.sources import rl_user_prompts, sft_user_examples, user_pairs


def shouting_reward(completion: str, row: dict) -> float:
    """A user reward: 1 when the completion is the row's word in capitals."""
    return float(completion.strip() == str(row["word"]).upper())


def test_reward_callable_is_validated_when_the_recipe_loads() -> None:
    with pytest.raises(ValueError, match="module:function"):
        load_recipe("tiny", ["posttrain.rl.sources=[{uri: x.jsonl, reward: not_a_spec}]"])
    with pytest.raises(ValueError, match="cannot import module"):
        load_recipe("tiny", ["posttrain.rl.sources=[{uri: x.jsonl, reward: no_such_pkg_xyz:score}]"])
    with pytest.raises(ValidationError, match="no callable"):
        UserSource(uri="x.jsonl", reward="json:no_such_function")
    rec = load_recipe("tiny", [f"posttrain.rl.sources=[{{uri: x.jsonl, reward: '{__name__}:shouting_reward'}}]"])
    assert rec.posttrain.rl.sources[0].reward.endswith(":shouting_reward")


def test_local_jsonl_chats_and_pairs(tmp_path) -> None:
    chats = tmp_path / "chats.jsonl"
    chats.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                              {"role": "assistant", "content": "Hello."}]}) + "\n")
    ex = sft_user_examples(UserSource(uri=str(chats), capability="greeting"))
    assert [(e.capability, e.answer, e.reference) for e in ex] == [("greeting", None, "Hello.")]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "2+2?", "chosen": "4", "rejected": "5"}) + "\n")
    assert user_pairs(UserSource(uri=str(pairs)))[0]["prompt"] == [{"role": "user", "content": "2+2?"}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "2+2?"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl#0: row lacks \['chosen', 'rejected'\]"):
        user_pairs(UserSource(uri=str(bad)))
    with pytest.raises(FileNotFoundError, match="matches no file"):
        user_pairs(UserSource(uri=str(tmp_path / "none-*.jsonl")))


def test_s3_parquet_rl_prompts_with_user_reward(s3_uri) -> None:
    uri = f"{s3_uri}/prompts.parquet"
    with fsspec.open(uri, "wb") as f:
        pq.write_table(pa.table({"prompt": ["Shout the word cat.", "Shout the word dog."], "word": ["cat", "dog"]}), f)
    src = UserSource(uri=uri, capability="shout", reward=f"{__name__}:shouting_reward")
    prompts = rl_user_prompts(src)
    assert [p.capability for p in prompts] == ["shout", "shout"]
    assert is_correct(prompts[0], "CAT") == 1.0 and is_correct(prompts[1], "cat") == 0.0
