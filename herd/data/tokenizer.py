"""Byte-level BPE tokenizer with Llama 4's special tokens and chat template, saved in the HF layout.

    from herd.data.tokenizer import train_tokenizer, save_tokenizer, load_tokenizer, encode_chat_batch
    tok = train_tokenizer(texts, cfg.tokenizer)          # tokenizers.Tokenizer, special tokens at ids 0..12
    save_tokenizer(tok, out_dir, cfg.tokenizer)          # tokenizer.json + tokenizer_config.json + special_tokens_map.json
    transformers.AutoTokenizer.from_pretrained(out_dir)  # loads it (and vLLM does); apply_chat_template renders it
    encode_chat_batch(tok, [messages])                   # [(ids, loss mask)], the template built at the id level
    encode_plain(tok, [document])                        # [ids] of text; "<|eot|>" in it stays plain text

Special tokens come first in the vocabulary with the fixed ids of docs/architecture.md, so model configs can
hard-code bos 0, eos [1, 4, 5], pad 12 and image_token_index 9 whatever the vocabulary size. Digits are split
one per token (as Llama's pre-tokenizer splits numbers) so arithmetic stays learnable with a tiny vocabulary.
`transformers` is not needed here: the HF files are written by hand.

Every encoder herd owns builds its sequence at the id level: special tokens and image blocks are inserted by
id, and text (documents, message contents, roles) is encoded with special-token strings as plain text
(`encode_plain`). A user who types `<|eot|><|header_start|>assistant` or `<|image|>` gets those characters,
never a forged turn or an image block. The string template (`CHAT_TEMPLATE`, `render_chat`) stays for
transformers / vLLM interop.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from herd.data.config import TokenizerConfig

SPECIAL_TOKENS: list[str] = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|header_start|>",
    "<|header_end|>",
    "<|eom|>",
    "<|eot|>",
    "<|image_start|>",
    "<|image_end|>",
    "<|image|>",
    "<|patch|>",
    "<|tile_x_separator|>",
    "<|tile_y_separator|>",
    "<|finetune_right_pad|>",
]
TOKEN_ID = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
BOS_ID = TOKEN_ID["<|begin_of_text|>"]
EOS_ID = TOKEN_ID["<|end_of_text|>"]
EOT_ID = TOKEN_ID["<|eot|>"]
PAD_ID = TOKEN_ID["<|finetune_right_pad|>"]
IMAGE_ID = TOKEN_ID["<|image|>"]
PATCH_ID = TOKEN_ID["<|patch|>"]
IMAGE_START_ID = TOKEN_ID["<|image_start|>"]
IMAGE_END_ID = TOKEN_ID["<|image_end|>"]
IMAGE_PLACEHOLDER = "<|image|>"

# Llama 4's chat template, reduced to what herd produces: string or [{type: text|image}] contents, an optional
# generation prompt. `encode_chat` below renders exactly the same text; a test holds the two together.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|header_start|>' + message['role'] + '<|header_end|>\\n\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for item in message['content'] %}"
    "{%- if item['type'] == 'image' %}{{- '<|image|>' }}"
    "{%- elif item['type'] == 'text' %}{{- item['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|eot|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|header_start|>assistant<|header_end|>\\n\\n' }}{%- endif %}"
)


class TokenizerError(ValueError):
    """A tokenizer directory or chat sample herd cannot use."""


def train_tokenizer(texts: Iterable[str], cfg: TokenizerConfig) -> Any:
    """Train a byte-level BPE on `texts` (capped at cfg.max_train_chars) with SPECIAL_TOKENS at ids 0..12."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    # Like Llama's tokenizer: plain encode() prepends <|begin_of_text|>; chat rendering adds it itself.
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A",
        pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", BOS_ID)],
    )
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    def capped() -> Iterable[str]:
        budget = cfg.max_train_chars
        for text in texts:
            if budget <= 0:
                return
            yield text[:budget]
            budget -= len(text)

    tok.train_from_iterator(capped(), trainer=trainer)
    # A small or repetitive corpus runs out of merges before vocab_size; fill up with reserved special tokens
    # (as Llama's tokenizers do) so the vocabulary is exactly the size every model config declares.
    missing = cfg.vocab_size - tok.get_vocab_size()
    if missing > 0:
        tok.add_special_tokens([f"<|reserved_special_token_{i}|>" for i in range(missing)])
    got = [tok.token_to_id(t) for t in SPECIAL_TOKENS]
    if got != list(range(len(SPECIAL_TOKENS))):
        raise AssertionError(f"special tokens landed at ids {got}, expected 0..{len(SPECIAL_TOKENS) - 1}")
    return tok


def save_tokenizer(tok: Any, out_dir: str | Path, cfg: TokenizerConfig) -> Path:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json (the HF layout) to out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    special = {
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot|>",
        "pad_token": "<|finetune_right_pad|>",
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "add_bos_token": True,
        "add_eos_token": False,
        "model_max_length": cfg.model_max_length,
        "padding_side": "left",
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
        "chat_template": CHAT_TEMPLATE,
        "added_tokens_decoder": {
            str(i): {
                "content": t,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for i, t in enumerate(SPECIAL_TOKENS)
        },
        "extra_special_tokens": [],
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return out


def load_tokenizer(path: str | Path) -> Any:
    """Load tokenizer.json from a tokenizer directory (or the file itself) as a `tokenizers.Tokenizer`."""
    from tokenizers import Tokenizer

    p = Path(path)
    file = p / "tokenizer.json" if p.is_dir() else p
    if not file.exists():
        raise TokenizerError(
            f"no tokenizer.json at {path!s}: pass the output directory of the tokenizer step"
        )
    tok = Tokenizer.from_file(str(file))
    if [tok.token_to_id(t) for t in SPECIAL_TOKENS] != list(range(len(SPECIAL_TOKENS))):
        raise TokenizerError(f"{file} does not put herd's special tokens at ids 0..12; retrain it with herd")
    return tok


def image_token_block(tokens_per_tile: int) -> str:
    """The text one single-tile image expands to: `<|image_start|><|image|><|patch|>*n<|image_end|>`."""
    return "<|image_start|><|image|>" + "<|patch|>" * tokens_per_tile + "<|image_end|>"


def image_block_ids(tokens_per_tile: int) -> list[int]:
    """Ids of one single-tile image block (just `<|image|>` when `tokens_per_tile` is 0: no vision tiles)."""
    if not tokens_per_tile:
        return [IMAGE_ID]
    return [IMAGE_START_ID, IMAGE_ID, *[PATCH_ID] * tokens_per_tile, IMAGE_END_ID]


def newline_ids(tok: Any) -> list[int]:
    """Every token whose text holds a newline: where a base model's one-line answer ends (evaluation, the judge)."""
    return [i for i in range(tok.get_vocab_size()) if "\n" in tok.decode([i], skip_special_tokens=False)]


def encode_plain(tok: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of user or document text, with special-token strings inside it encoded as plain text.

    A document or chat message that contains `<|eot|>`, `<|header_start|>` or `<|image|>` must not become
    control tokens (end a turn, open a fake assistant header, pull in an image block): those ids are only ever
    inserted by id, by the templates below. `encode_special_tokens` makes the tokenizer treat added tokens as
    ordinary text for this call (restored afterwards, so a shared Tokenizer object is left as it was).
    """
    prev = tok.encode_special_tokens
    tok.encode_special_tokens = True
    try:
        return [e.ids for e in tok.encode_batch_fast(list(texts), add_special_tokens=False)]
    finally:
        tok.encode_special_tokens = prev


def _content_text(content: Any) -> str:
    """A message's text as the chat template renders it (images as `<|image|>`): for the HF template only."""
    return "".join(IMAGE_PLACEHOLDER if kind == "image" else text for kind, text in _content_items(content))


def _content_items(content: Any) -> list[tuple[str, str]]:
    """[(kind, text)] of a message content; adjacent text items merged (the template concatenates them)."""
    if isinstance(content, str):
        return [("text", content)]
    if not isinstance(content, list):
        raise TokenizerError(f"chat content must be a string or a list of items, got {type(content).__name__}")
    items: list[tuple[str, str]] = []
    for item in content:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "image":
            items.append(("image", ""))
        elif kind == "text":
            text = str(item.get("text", ""))
            if items and items[-1][0] == "text":
                items[-1] = ("text", items[-1][1] + text)
            else:
                items.append(("text", text))
        else:
            raise TokenizerError(f"chat content item {item!r} is neither {{type: text}} nor {{type: image}}")
    return items


def _check_messages(messages: Sequence[dict[str, Any]]) -> None:
    if not messages:
        raise TokenizerError("a chat sample needs at least one message")
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise TokenizerError(f"chat message {m!r} needs 'role' and 'content'")


def chat_segments(
    messages: Sequence[dict[str, Any]], add_generation_prompt: bool = False
) -> list[tuple[str, bool]]:
    """Split the rendered chat template into (text, trains) pieces; only assistant turns train (display only)."""
    _check_messages(messages)
    segs: list[tuple[str, bool]] = [("<|begin_of_text|>", False)]
    for m in messages:
        trains = m["role"] == "assistant"
        segs.append((f"<|header_start|>{m['role']}<|header_end|>\n\n", False))
        segs.append((_content_text(m["content"]), trains))
        segs.append(("<|eot|>", trains))
    if add_generation_prompt:
        segs.append(("<|header_start|>assistant<|header_end|>\n\n", False))
    return segs


def render_chat(messages: Sequence[dict[str, Any]], add_generation_prompt: bool = False) -> str:
    """The chat template's text for `messages` (same string as transformers' apply_chat_template).

    For display and for the HF chat_template's interop only: never tokenize this string to train on, since
    special-token strings inside message contents would be parsed as control tokens (use `encode_chat_batch`).
    """
    return "".join(text for text, _ in chat_segments(messages, add_generation_prompt))


# A template piece: ids inserted as they are (special tokens, image blocks) or text encoded with encode_plain.
_Piece = tuple[list[int] | str, bool]


def chat_pieces(
    messages: Sequence[dict[str, Any]], add_generation_prompt: bool = False, tokens_per_tile: int = 0
) -> list[_Piece]:
    """The chat template at the id level: special tokens and image blocks as ids, everything else as text.

    Same token sequence as encoding `render_chat(messages)` for contents without special-token strings; for
    contents that contain them, those strings stay text (the serving side rejects them; see docs).
    """
    _check_messages(messages)
    header_end = [TOKEN_ID["<|header_end|>"]]
    pieces: list[_Piece] = [([BOS_ID], False)]

    def header(role: str) -> None:
        pieces.extend([([TOKEN_ID["<|header_start|>"]], False), (role, False), (header_end, False),
                       ("\n\n", False)])

    for m in messages:
        trains = m["role"] == "assistant"
        header(str(m["role"]))
        for kind, text in _content_items(m["content"]):
            if kind == "image":
                pieces.append((image_block_ids(tokens_per_tile), False))  # the image block never trains
            elif text:
                pieces.append((text, trains))
        pieces.append(([EOT_ID], trains))
    if add_generation_prompt:
        header("assistant")
    return pieces


def encode_chat_batch(
    tok: Any, conversations: Sequence[Sequence[dict[str, Any]]], tokens_per_tile: int = 0,
    add_generation_prompt: bool = False,
) -> list[tuple[list[int], list[int]]]:
    """Token ids and a loss mask (1 on assistant tokens and their <|eot|>) for each conversation.

    Built at the id level (`chat_pieces`): `{type: image}` items become the image block for `tokens_per_tile`
    patch tokens (one tile per image), which never trains; text, including any special-token strings a user
    typed, goes through `encode_plain`. All text pieces go through one batched encode call.
    """
    convs = [chat_pieces(c, add_generation_prompt, tokens_per_tile) for c in conversations]
    texts = [p for pieces in convs for p, _ in pieces if isinstance(p, str)]
    encoded = iter(encode_plain(tok, texts))
    out: list[tuple[list[int], list[int]]] = []
    for pieces in convs:
        ids: list[int] = []
        mask: list[int] = []
        for piece, trains in pieces:
            piece_ids = next(encoded) if isinstance(piece, str) else piece
            ids.extend(piece_ids)
            mask.extend([int(trains)] * len(piece_ids))
        out.append((ids, mask))
    return out


def corpus_texts(corpus_dir: str | Path) -> Iterable[str]:
    """Training text for the tokenizer from a cleaned corpus: documents, then chat contents."""
    import pyarrow.parquet as pq

    corpus = Path(corpus_dir)
    docs, chats = corpus / "documents.parquet", corpus / "chats.parquet"
    if docs.exists():
        for batch in pq.ParquetFile(docs).iter_batches(columns=["text"], batch_size=4096):
            yield from batch.column("text").to_pylist()
    if chats.exists():
        for batch in pq.ParquetFile(chats).iter_batches(columns=["messages"], batch_size=4096):
            for messages in batch.column("messages").to_pylist():
                yield "\n".join(_content_text(m["content"]) for m in json.loads(messages))
