"""Tokenizer: fixed special-token ids, exact vocab size, HF loading, chat template and loss mask parity."""

from __future__ import annotations

import json

import pytest

from herd.data.config import TokenizerConfig
from herd.data.tokenizer import (
    SPECIAL_TOKENS,
    encode_chat_batch,
    image_token_block,
    load_tokenizer,
    render_chat,
    save_tokenizer,
    train_tokenizer,
)

TEXTS = [
    f"Ada Lovelace was born on May {i % 28 + 1}, {1900 + i}. She counted {i * 7} stars and {i} moons.\n\nThe end."
    for i in range(400)
]
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "How many stars did Ada count?"},
    {"role": "assistant", "content": "She counted 21 stars."},
    {"role": "user", "content": "And moons?"},
    {"role": "assistant", "content": "3 moons."},
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    cfg = TokenizerConfig(vocab_size=600, model_max_length=512)
    tok = train_tokenizer(TEXTS, cfg)
    return save_tokenizer(tok, tmp_path_factory.mktemp("tok"), cfg), tok


def test_special_tokens_first_and_vocab_exact(tok_dir):
    path, tok = tok_dir
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(13))
    assert tok.get_vocab_size() == 600  # learned merges + reserved special tokens fill the recipe's size
    assert load_tokenizer(path).get_vocab_size() == 600
    # digits split one per token (arithmetic stays learnable with a tiny vocabulary)
    assert [tok.id_to_token(i) for i in tok.encode("1234", add_special_tokens=False).ids] == list("1234")


def test_transformers_loads_and_renders_the_template(tok_dir):
    transformers = pytest.importorskip("transformers")
    path, tok = tok_dir
    hf = transformers.AutoTokenizer.from_pretrained(str(path))
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (0, 5, 12)
    assert hf.model_max_length == 512 and hf.padding_side == "left"
    assert len(hf) == 600
    text = hf.apply_chat_template(CHAT, tokenize=False)
    assert text == render_chat(CHAT)
    assert text.startswith("<|begin_of_text|><|header_start|>system<|header_end|>\n\nBe brief.<|eot|>")
    prompt = hf.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|header_start|>assistant<|header_end|>\n\n")
    ids = hf.apply_chat_template(CHAT, tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    mine, mask = encode_chat_batch(tok, [CHAT])[0]
    assert mine == list(ids)  # piecewise encoding (for the mask) equals HF's whole-string encoding
    trained = hf.decode([i for i, m in zip(mine, mask, strict=True) if m])
    assert trained == "She counted 21 stars.<|eot|>3 moons.<|eot|>"
    # plain encoding prepends <|begin_of_text|> like Llama's tokenizer
    assert hf("hello").input_ids[0] == 0
    cfg = json.loads((path / "tokenizer_config.json").read_text())
    assert cfg["added_tokens_decoder"]["9"]["content"] == "<|patch|>"


def test_image_placeholder_expands_and_never_trains(tok_dir):
    _, tok = tok_dir
    conv = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What digit?"}]},
        {"role": "assistant", "content": "7"},
    ]
    ids, mask = encode_chat_batch(tok, [conv], tokens_per_tile=4)[0]
    block = tok.encode(image_token_block(4), add_special_tokens=False).ids
    assert block == [6, 8, 9, 9, 9, 9, 7]
    start = ids.index(6)
    assert ids[start : start + 7] == block and not any(mask[start : start + 7])
    assert ids.count(9) == 4


def test_bad_inputs_have_clear_errors(tmp_path):
    from herd.data.tokenizer import TokenizerError

    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(TokenizerError, match="needs 'role' and 'content'"):
        render_chat([{"content": "x"}])
