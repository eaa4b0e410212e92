"""``EngineConfig``: the continuous-batching engine's knobs (a serving deploy section maps onto it)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class EngineConfig(BaseModel):
    """Sizes of the slot pool and of one step. Memory: every slot holds ``max_model_len`` keys/values on NoPE
    (full-attention) layers and one chunk on chunked layers, allocated up front."""

    model_config = ConfigDict(extra="forbid")

    max_num_seqs: int = Field(32, ge=1, description="KV-cache slots: sequences decoded together.")
    max_model_len: int | None = Field(
        None,
        ge=2,
        description="Longest prompt + completion in tokens; None: the model's max_position_embeddings.",
    )
    max_num_batched_tokens: int = Field(
        512,
        ge=1,
        description="Token budget of one step (decode tokens + prefill chunks); bounds step latency.",
    )
    max_waiting: int = Field(4096, ge=1, description="Queued requests beyond which new ones are refused.")
    seed: int = Field(0, description="Seed of the generator shared by sampled requests that set no seed.")
    kv_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="KV-cache and attention dtype; auto: float32 on CPU (CPU attention over these small heads is "
        "about 2x slower in bf16, while bf16 weights still speed up the batched matmuls), the weights' dtype "
        "elsewhere.",
    )
    num_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads (CPU); None: leave torch's setting alone."
    )

    @model_validator(mode="after")
    def _check(self) -> EngineConfig:
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_num_seqs "
                f"({self.max_num_seqs}): every live sequence decodes one token per step"
            )
        return self
