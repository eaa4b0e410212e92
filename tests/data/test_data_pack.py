"""The packing actor's logic, called directly (the Ray Data pipeline around it runs in test_data_flow)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from data_corpora import good_docs

from herd.data.config import PackingConfig, TokenizerConfig
from herd.data.pack import Packer, _as_unified, copies, is_validation
from herd.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, PATCH_ID, train_tokenizer

DOCS = good_docs(40, seed=9)


@pytest.fixture(scope="module")
def tok_json():
    return train_tokenizer(DOCS, TokenizerConfig(vocab_size=700)).to_str()


def rows(table, name):
    sel = [i for i, s in enumerate(table.column("set").to_pylist()) if s == name]
    return [table.column("input_ids")[i].as_py() for i in sel], [
        table.column("loss_mask")[i].as_py() for i in sel
    ]


def test_documents_are_joined_cut_and_padded(tok_json):
    cfg = PackingConfig(seq_len=64, val_fraction=0.0)
    packer = Packer(tok_json, cfg.model_dump(), {}, ["pretrain"])
    batch = _as_unified("document")(
        pa.table({"text": DOCS, "source": ["s"] * 40, "origin": [f"s:{i}" for i in range(40)]})
    )
    ids, mask = rows(packer(batch), "pretrain")
    assert all(len(r) == 65 for r in ids)
    flat, m = [t for r in ids for t in r], [k for r in mask for k in r]
    expect = []
    for d in DOCS:
        expect += [BOS_ID, *packer.tok.encode(d, add_special_tokens=False).ids, EOS_ID]
    assert flat[: len(expect)] == expect and set(flat[len(expect) :]) <= {PAD_ID}  # nothing dropped
    assert [x for x, k in zip(flat, m, strict=True) if not k] == [BOS_ID] * 40 + [PAD_ID] * (
        len(flat) - len(expect)
    )


def test_validation_split_and_mixing_weights(tok_json):
    cfg = PackingConfig(seq_len=64, val_fraction=0.25, seed=3)
    origins = [f"s:{i}" for i in range(40)]
    val = [o for o in origins if is_validation(o, 0.25, 3)]
    assert 2 < len(val) < 20
    packer = Packer(tok_json, cfg.model_dump(), {"s": 2.5}, ["pretrain", "pretrain_val"])
    out = packer(_as_unified("document")(pa.table({"text": DOCS, "source": ["s"] * 40, "origin": origins})))
    train_ids, _ = rows(out, "pretrain")
    val_ids, _ = rows(out, "pretrain_val")
    n_train_docs = sum(r.count(BOS_ID) for r in train_ids)
    assert n_train_docs == sum(copies(o, 2.5, 3) for o in origins if o not in val)
    assert sum(r.count(BOS_ID) for r in val_ids) == len(val)
    assert {copies(o, 2.5, 3) for o in origins} == {2, 3}


def test_chats_mask_only_assistant_and_images_attach_tiles(tok_json):
    cfg = PackingConfig(seq_len=160, tile_size=16, patch_size=4)  # 4x4 patches -> 4 tokens per tile
    packer = Packer(tok_json, cfg.model_dump(), {}, ["sft", "images"])
    chat = [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}]
    img = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which digit?"}]},
        {"role": "assistant", "content": "3"},
    ]
    chats = _as_unified("chat")(
        pa.table({"messages": [json.dumps(chat)] * 3, "source": ["s"] * 3, "origin": ["a", "b", "c"]})
    )
    images = _as_unified("image")(
        pa.table({"messages": [json.dumps(img)] * 2, "image": [[16] * 64, [0] * 64]})
    )
    out = packer(pa.concat_tables([chats, images]))
    ids, mask = rows(out, "sft")
    trained = packer.tok.decode(
        [t for r, k in zip(ids, mask, strict=True) for t, b in zip(r, k, strict=True) if b],
        skip_special_tokens=False,
    )
    assert trained == "hi<|eot|>" * 3
    img_rows = [i for i, s in enumerate(out.column("set").to_pylist()) if s == "images"]
    assert len(img_rows) == 1  # two short samples share one row
    row = out.column("input_ids")[img_rows[0]].as_py()
    assert row.count(PATCH_ID) == 8 and out.column("n_tiles")[img_rows[0]].as_py() == 2
    pixels = np.array(out.column("pixel_values")[img_rows[0]].as_py()).reshape(2, 3, 16, 16)
    assert np.allclose(pixels[0], 1.0) and np.allclose(pixels[1], -1.0)  # tiles follow sample order
