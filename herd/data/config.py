"""DataConfig: the `data` section of a herd recipe (sources, synthetic corpus, cleaning, tokenizer, packing).

The defaults are the `tiny` recipe: a seeded synthetic corpus of roughly a million tokens, a 4096-token
byte-level BPE and 256-token packed sequences, sized so `herd flow data` finishes on a 2-core laptop in
well under two minutes while still giving pretraining enough text for its loss to fall visibly.

Every library function receives only its own sub-section (`cfg.cleaning`, `cfg.tokenizer`, ...), never the
whole recipe. Validation errors name the offending field; a local source that does not exist fails here, at
recipe validation, before any step runs.

    from herd.data.config import DataConfig
    cfg = DataConfig(sources=[{"uri": "data/corpus.jsonl", "weight": 2.0}, {"uri": "synthetic"}])
"""

from __future__ import annotations

import os
from typing import Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SYNTHETIC = "synthetic"
SourceFormat = Literal["auto", "jsonl", "parquet", "text"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceConfig(_Section):
    """One corpus source: a file or directory under any fsspec URL, or the built-in synthetic corpus."""

    uri: str = Field(
        description="'synthetic', a local path, file://..., or s3://bucket/prefix (a file or a directory)."
    )
    format: SourceFormat = Field(
        "auto", description="jsonl, parquet or text (one document per file); auto picks by file extension."
    )
    weight: float = Field(
        1.0,
        gt=0,
        le=100,
        description="Mixing weight: how many times each cleaned document of this source enters the pretraining "
        "text on average (2.0 doubles it, 0.5 keeps a seeded half).",
    )
    text_field: str = Field(
        "text", min_length=1, description="Field holding the document text (jsonl/parquet)."
    )
    messages_field: str = Field(
        "messages",
        min_length=1,
        description="Field holding a chat conversation as a list of {role, content} (jsonl/parquet); "
        "rows with it become SFT samples.",
    )
    name: str | None = Field(
        None, description="Short name used in lineage and reject reports (default: derived)."
    )

    @field_validator("uri")
    @classmethod
    def _local_source_exists(cls, uri: str) -> str:
        uri = uri.strip()
        if not uri:
            raise ValueError("empty source uri: give a path, file://..., s3://... or 'synthetic'")
        if uri == SYNTHETIC:
            return uri
        parsed = urlparse(uri)
        if parsed.scheme in ("", "file"):
            path = parsed.path if parsed.scheme == "file" else uri
            path = os.path.expanduser(path)
            if not os.path.exists(path):
                raise ValueError(
                    f"source {uri!r} does not exist (resolved to {os.path.abspath(path)!r}); "
                    "fix the path or remove the source from data.sources"
                )
        elif parsed.scheme not in ("s3", "gs", "gcs", "az", "abfs", "memory", "http", "https"):
            raise ValueError(
                f"source {uri!r} has an unsupported scheme {parsed.scheme!r}; use a path, file://, s3:// "
                "(or another fsspec protocol) or 'synthetic'"
            )
        return uri

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        if self.uri == SYNTHETIC:
            return SYNTHETIC
        base = self.uri.rstrip("/").rsplit("/", 1)[-1]
        return base or self.uri


class SyntheticConfig(_Section):
    """Sizes of the built-in synthetic corpus. Everything is generated from `seed`, deterministically."""

    seed: int = Field(0, description="Seed of the generated world, problems, needles and images.")
    n_entities: int = Field(
        240, ge=4, le=1_000_000, description="People in the knowledge world (each has 5 facts)."
    )
    paraphrases: int = Field(
        4, ge=1, le=256, description="Pretraining documents stating each entity's facts, each with its own templates "
        "and fact order. A fact is learned only after ~100 readings of its person's biographies "
        "(benchmarks/knowledge_probe.py: multiple choice 0.39 after 63, 0.90 after 182); at 4 paraphrases and ~2 "
        "passes a person is read ~8 times, and tiny's and small's knowledge stays at chance."
    )
    knowledge_qa: bool = Field(
        False, description="Also write the training entities' questions and answers into the pretraining text "
        "('Question: ... Answer: ...' pairs, one document per entity; 'mixed training' in Physics of Language Models "
        "3.1), so facts read in biographies become answerable by questions. The held-out entities' questions stay "
        "out. Probe (benchmarks/knowledge_probe.py, 16 paraphrases, ~150 readings): held-out multiple choice "
        "0.87 with it, 0.43 without; exact match 0.50 vs 0.00."
    )
    heldout_entity_fraction: float = Field(
        0.25,
        gt=0,
        lt=1,
        description="Entities whose closed-book questions are only in the held-out eval set (never in SFT chats).",
    )
    n_arithmetic_train: int = Field(
        # ~3/4 of the pretraining tokens: the tiny models learn arithmetic only from these (issue 11's
        # calibration run learned it from worked examples alone); 4,000 left the teacher at ~3%.
        12000, ge=0, description="Worked arithmetic word problems in the training text."
    )
    arithmetic_steps: bool = Field(
        False, description="Work the solutions in steps ('26 + 47 = 60 + 13 = 73. The answer is 73.') instead of "
        "one ('26 + 47 = 73.'). Trained alone on the same tokens for 6 minutes, the tiny student solved 0.335 of "
        "held-out problems with steps vs 0.217 without (benchmarks/arith_probe.py). In the tiny pipeline with 560 "
        "distill steps the student rose to 0.116 (one-step work: 0.049); with RL at lr 1e-4 the final model kept "
        "0.107 (one-step work's: 0.058-0.070). On in tiny, off in small (measured there with one step); "
        "docs/benchmarks.md \"posttrain\".")
    n_arithmetic_eval: int = Field(200, ge=1, description="Held-out arithmetic problems for evaluation.")
    n_rl_prompts: int = Field(
        400, ge=1, description="Held-out arithmetic prompts with verifiable answers for RL."
    )
    n_needle_docs: int = Field(
        120, ge=0, description="Long filler documents with a key -> value needle (training)."
    )
    n_needle_eval: int = Field(
        40, ge=1, description="Held-out needle-in-a-haystack documents with a question."
    )
    needle_doc_words: int = Field(300, ge=20, le=200_000, description="Words of filler per needle document.")
    n_filler_docs: int = Field(
        400, ge=0, description="Plain generated prose documents for general language."
    )
    n_chat: int = Field(
        1500, ge=0, description="SFT conversations (knowledge questions, arithmetic, small talk)."
    )
    n_preferences: int = Field(400, ge=0, description="DPO preference pairs (correct answer chosen).")
    n_images: int = Field(
        600, ge=0, le=1797, description="Digit images (of sklearn's 1797) in the image set."
    )
    image_eval_fraction: float = Field(
        0.2, ge=0, lt=1, description="Share of digit images held out for eval."
    )


class CleaningConfig(_Section):
    """Normalization, filters and deduplication applied to every source."""

    normalization: Literal["NFC", "NFKC", "NFD", "NFKD", "none"] = Field(
        "NFKC", description="Unicode normalization form applied before everything else."
    )
    min_chars: int = Field(
        16, ge=1, description="Documents shorter than this (after normalization) are rejected."
    )
    max_chars: int = Field(
        200_000, ge=100, description="Documents longer than this are rejected as absurd (e.g. a 5 MB line)."
    )
    max_line_bytes: int = Field(
        8_000_000,
        ge=1024,
        description="Raw jsonl/text lines above this many bytes are rejected without being parsed.",
    )
    min_alpha_fraction: float = Field(
        0.5, ge=0, le=1, description="Minimum share of letters+spaces among characters (quality filter)."
    )
    max_repeat_line_fraction: float = Field(
        0.5, ge=0, le=1, description="Maximum share of duplicated lines inside one document (quality filter)."
    )
    min_words: int = Field(3, ge=0, description="Minimum number of whitespace-separated words.")
    exact_dedupe: bool = Field(
        True, description="Drop documents whose normalized text hash was already seen."
    )
    near_dedupe: bool = Field(True, description="Drop near-duplicates found with MinHash LSH.")
    near_dup_threshold: float = Field(
        0.8,
        gt=0,
        le=1,
        description="Estimated Jaccard similarity of word shingles above which a doc is a near dup.",
    )
    shingle_words: int = Field(5, ge=1, le=32, description="Words per shingle for MinHash.")
    num_perm: int = Field(128, ge=8, le=1024, description="MinHash permutations.")
    bands: int = Field(
        16, ge=1, description="LSH bands; must divide num_perm (rows per band = num_perm / bands)."
    )

    @model_validator(mode="after")
    def _check(self) -> CleaningConfig:
        if self.num_perm % self.bands:
            raise ValueError(
                f"cleaning.bands={self.bands} must divide cleaning.num_perm={self.num_perm} "
                "(rows per band = num_perm / bands)"
            )
        if self.min_chars >= self.max_chars:
            raise ValueError(
                f"cleaning.min_chars={self.min_chars} must be < cleaning.max_chars={self.max_chars}"
            )
        return self


class TokenizerConfig(_Section):
    """Byte-level BPE trained on the cleaned corpus; special tokens first with fixed ids."""

    vocab_size: int = Field(
        4096, ge=512, le=1_048_576, description="Vocabulary size, special tokens included."
    )
    min_frequency: int = Field(2, ge=1, description="Minimum pair frequency for a BPE merge.")
    max_train_chars: int = Field(
        50_000_000, ge=10_000, description="Cap on characters of cleaned text used to train the tokenizer."
    )
    model_max_length: int = Field(
        8192, ge=16, description="model_max_length written to tokenizer_config.json."
    )


class PackingConfig(_Section):
    """Fixed-length packing: rows of seq_len + 1 tokens; image tiles sized for the vision encoder."""

    seq_len: int = Field(
        256, ge=8, le=1_048_576, description="Tokens per training sequence (rows hold seq_len+1)."
    )
    tile_size: int = Field(32, ge=8, le=1024, description="Image tile side in pixels (vision image_size).")
    patch_size: int = Field(8, ge=1, le=64, description="Vision patch side in pixels (vision patch_size).")
    rows_per_shard: int = Field(2048, ge=1, description="Packed rows per parquet shard.")
    batch_docs: int = Field(1024, ge=1, description="Documents per Ray Data batch in tokenize-and-pack.")
    val_fraction: float = Field(
        0.02,
        ge=0,
        lt=0.5,
        description="Share of pretraining documents packed into a separate validation set.",
    )
    seed: int = Field(0, description="Seed of the train/validation split and mixing.")

    @model_validator(mode="after")
    def _check(self) -> PackingConfig:
        if self.tile_size % self.patch_size:
            raise ValueError(
                f"packing.tile_size={self.tile_size} must be a multiple of packing.patch_size={self.patch_size}"
            )
        if (self.tile_size // self.patch_size) % 2:
            raise ValueError(
                f"packing.tile_size/patch_size = {self.tile_size // self.patch_size} must be even: the vision "
                "pixel shuffle merges 2x2 patches (ratio 0.5)"
            )
        if self.image_tokens_per_tile + 4 > self.seq_len:
            raise ValueError(
                f"packing.seq_len={self.seq_len} cannot hold one image of {self.image_tokens_per_tile} patch "
                "tokens plus its text; raise seq_len or tile/patch ratio"
            )
        return self

    @property
    def image_tokens_per_tile(self) -> int:
        """`<|patch|>` tokens per tile: (tile/patch)^2 patches, merged 2x2 by the pixel shuffle (ratio 0.5)."""
        return (self.tile_size // self.patch_size) ** 2 // 4


class DataConfig(_Section):
    """The `data` section of a recipe."""

    sources: list[SourceConfig] = Field(
        default_factory=lambda: [SourceConfig(uri=SYNTHETIC)],
        min_length=1,
        description="Corpus sources mixed by weight; 'synthetic' is the built-in corpus.",
    )
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    cleaning: CleaningConfig = Field(default_factory=CleaningConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    packing: PackingConfig = Field(default_factory=PackingConfig)

    @field_validator("sources", mode="before")
    @classmethod
    def _coerce_strings(cls, value: object) -> object:
        # `sources: [synthetic, data/x.jsonl]` is the common short form in YAML and on --set.
        if isinstance(value, list):
            return [{"uri": v} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> DataConfig:
        names = [s.display_name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(
                f"data.sources has duplicate source names {dupes}; set a distinct `name` on each"
            )
        return self

    @property
    def uses_synthetic(self) -> bool:
        return any(s.uri == SYNTHETIC for s in self.sources)
