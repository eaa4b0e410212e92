"""Llama4: the Llama 4 decoder (plus the early-fusion vision tower when ``cfg.vision`` is set).

Module and parameter names mirror transformers' ``Llama4ForCausalLM`` exactly (``model.embed_tokens``,
``model.layers.{i}.self_attn.q_proj``, ``...feed_forward.experts.gate_up_proj``, ``model.norm``, ``lm_head``), so
``state_dict()`` keys ARE the Hugging Face keys; the multimodal model adds ``vision_model.*`` and
``multi_modal_projector.*``. Single device; parallelism, activation checkpointing and compile are applied from
outside.

    model = Llama4(ModelConfig())
    out = model(input_ids)                      # (B, S) long
    out.logits, out.aux_loss, out.router_stats  # (B, S, V), scalar, [RouterStats per MoE layer]
    model.update_router_bias()                  # aux-free balancing: call after each optimizer step
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from herd.model.attention import Attention, KVStore
from herd.model.config import ModelConfig
from herd.model.moe import MLP, MoE, RouterStats
from herd.model.rope import rope_freqs, rope_inv_freq


@dataclass
class Llama4Output:
    """``logits`` (B, S, V); ``aux_loss`` () the load-balancing loss summed over MoE layers (0 unless
    router_balance="aux_loss"); ``router_stats`` one RouterStats per MoE layer."""

    logits: torch.Tensor
    aux_loss: torch.Tensor
    router_stats: list[RouterStats] = field(default_factory=list)


class RMSNorm(nn.Module):
    """y = (x / rms(x)) · w, normalised in fp32 and cast back before the weight multiply (transformers' numerics)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).type_as(x) * self.weight


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.self_attn = Attention(cfg, layer_idx)
        self.is_moe = cfg.is_moe_layer(layer_idx)
        self.feed_forward: MoE | MLP = (
            MoE(cfg, layer_idx) if self.is_moe else MLP(cfg.hidden_size, cfg.intermediate_size_mlp)
        )
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self, x: torch.Tensor, freqs: torch.Tensor, positions: torch.Tensor, kv: KVStore | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, RouterStats | None]:
        x = x + self.self_attn(self.input_layernorm(x), freqs, positions, kv)
        h = self.post_attention_layernorm(x)
        if self.is_moe:
            y, aux, stats = self.feed_forward(h)
            return x + y, aux, stats
        return x + self.feed_forward(h), None, None


class TextModel(nn.Module):
    """``model.*``: embeddings, decoder layers, final norm."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Llama4(nn.Module):
    """Llama 4 causal LM (text, or text + image when ``cfg.vision`` is set)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = TextModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        if cfg.vision is not None:
            from herd.model.vision import MultiModalProjector, VisionModel

            self.vision_model = VisionModel(cfg.vision)
            self.multi_modal_projector = MultiModalProjector(cfg.vision, cfg.hidden_size)
        # fp32 RoPE frequencies; recomputed after dtype casts (model.to(bf16) would round them, reference §7)
        self.register_buffer("rope_inv_freq", rope_inv_freq(cfg), persistent=False)
        self.init_weights()

    # --- init -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self, std: float | None = None) -> None:
        """Normal(0, initializer_range) for every matrix, ones for norms, zero pad row (transformers' init).
        ``herd.model.metap`` rescales per layer on top of this."""
        std = self.config.initializer_range if std is None else std
        for name, p in self.named_parameters():
            if name.startswith("vision_model."):
                continue  # the vision tower initialises itself (VisionModel.reset_parameters)
            if p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, std)
        pad = self.config.pad_token_id
        if pad is not None:
            self.model.embed_tokens.weight[pad].zero_()
        for m in self.modules():
            if isinstance(m, MoE):
                m.expert_bias.zero_()
        self.rope_inv_freq.copy_(rope_inv_freq(self.config))

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        # keep RoPE inverse frequencies in fp32 across .to(dtype)/.half(): rounding them shifts long-range angles
        super()._apply(fn, recurse)
        self.rope_inv_freq = rope_inv_freq(self.config).to(self.rope_inv_freq.device)
        return self

    # --- forward ----------------------------------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings, with image features scattered into the ``<|patch|>`` positions (early fusion)."""
        x = self.model.embed_tokens(input_ids)
        if pixel_values is None:
            return x
        if self.config.vision is None:
            raise ValueError(
                "pixel_values given to a text-only model: set ModelConfig.vision to add a vision tower"
            )
        from herd.model.vision import merge_image_features

        feats = self.multi_modal_projector(self.vision_model(pixel_values))
        return merge_image_features(x, input_ids, feats, self.config.image_token_index)

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        *,
        positions: torch.Tensor | None = None,
        kv: KVStore | None = None,
        inputs_embeds: torch.Tensor | None = None,
        logits_at: torch.Tensor | None = None,
    ) -> Llama4Output:
        """``input_ids`` (B, S). ``positions`` (B, S) defaults to 0..S-1 (a KV cache passes its own).
        ``logits_at`` (B,) computes logits (B, 1, V) at one position per row only (generation: the last real
        token of each right-padded prompt), skipping the vocabulary matmul everywhere else."""
        if inputs_embeds is None and (input_ids.dim() != 2 or input_ids.is_floating_point()):
            raise ValueError(
                f"input_ids must be integer token ids of shape (batch, seq), got {input_ids.dtype} "
                f"{tuple(input_ids.shape)}; add a batch dimension with input_ids[None]"
            )
        x = self.embed(input_ids, pixel_values) if inputs_embeds is None else inputs_embeds
        B, S = x.shape[:2]
        if positions is None:
            positions = torch.arange(S, device=x.device)[None]
        freqs = rope_freqs(self.rope_inv_freq, positions)
        aux = x.new_zeros((), dtype=torch.float32)
        stats: list[RouterStats] = []
        for layer in self.model.layers:
            x, layer_aux, layer_stats = layer(x, freqs, positions, kv)
            if layer_stats is not None:
                aux = aux + layer_aux
                stats.append(layer_stats)
        if logits_at is not None:
            x = x[torch.arange(B, device=x.device), logits_at][:, None]
        logits = self.lm_head(self.model.norm(x))
        return Llama4Output(logits, aux, stats)

    # --- training hooks ---------------------------------------------------------------------------------------
    def update_router_bias(self) -> None:
        """Aux-free load balancing: apply the bias update of every MoE layer (no-op for other modes)."""
        for m in self.modules():
            if isinstance(m, MoE):
                m.update_router_bias()

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
