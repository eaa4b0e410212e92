"""Llama 4 feed-forward blocks: the dense SwiGLU MLP and the mixture-of-experts layer.

MoE (``feed_forward`` on MoE layers), with transformers' parameter names and layouts:
  router            Linear(H -> E), sigmoid of the top-k logits (no softmax, no renormalisation)
  experts           gate_up_proj (E, H, 2I) = [gate | up], down_proj (E, I, H): right-multiplied, no ".weight"
  shared_expert     a SwiGLU MLP of width I that every token passes through
The router score multiplies the expert INPUT (silu is not homogeneous, so this differs from scaling the output).

Routed experts are computed sparsely: token copies are sorted by expert and each expert runs one matmul on its
contiguous slice (measured faster on CPU than ``torch._grouped_mm`` and a padded bmm in torch 2.13; see
docs/benchmarks.md). transformers runs every expert on every token instead.

Load balancing (``ModelConfig.router_balance``):
  aux_loss  switch-transformer loss  coef · E · Σ_e f_e · P_e  (f: dispatch fraction, P: mean normalised
            router probability; Fedus et al. 2021, arXiv:2101.03961)
  aux_free  a per-expert bias added to the logits for the top-k CHOICE only (the score uses the raw logit),
            nudged towards balance by ``update_router_bias()`` between optimizer steps
            (DeepSeek-V3, arXiv:2412.19437 §2.1.2)
  none      nothing
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from herd.model.config import ModelConfig


@dataclass
class RouterStats:
    """One MoE layer's routing in a forward pass (detached): for logging and aux-free balancing."""

    layer: int
    tokens_per_expert: torch.Tensor  # (E,) token copies dispatched to each expert
    entropy: torch.Tensor  # () mean entropy of the normalised sigmoid router distribution, in nats


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)). Dense layers use intermediate_size_mlp, the shared expert I."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Experts(nn.Module):
    """E routed SwiGLU experts in transformers' fused layout (plain Parameters, x @ W)."""

    def __init__(self, num_experts: int, hidden: int, intermediate: int):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, hidden, 2 * intermediate))
        self.down_proj = nn.Parameter(torch.empty(num_experts, intermediate, hidden))

    def forward(self, x_sorted: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """``x_sorted`` holds token copies grouped by expert, ``counts[e]`` rows for expert e."""
        outs, start = [], 0
        for e, n in enumerate(counts):
            if n == 0:  # never touch an expert that got no tokens
                continue
            gate, up = (x_sorted[start:start + n] @ self.gate_up_proj[e]).chunk(2, dim=-1)
            outs.append((F.silu(gate) * up) @ self.down_proj[e])
            start += n
        if not outs:
            return x_sorted.new_zeros(0, self.down_proj.shape[-1])
        return outs[0] if len(outs) == 1 else torch.cat(outs)


class MoE(nn.Module):
    """Sigmoid top-k routed experts + shared expert. ``forward`` returns (y, aux_loss, RouterStats)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_experts, self.top_k = cfg.num_local_experts, cfg.num_experts_per_tok
        self.balance, self.aux_coef = cfg.router_balance, cfg.router_aux_loss_coef
        self.bias_rate = cfg.router_bias_update_rate
        H, I = cfg.hidden_size, cfg.intermediate_size
        self.router = nn.Linear(H, self.num_experts, bias=False)
        self.experts = Experts(self.num_experts, H, I)
        self.shared_expert = MLP(H, I)
        # aux-free balancing state: the bias steers the top-k choice; it is part of the training checkpoint
        # (persistent) but not of the HF export, which has no such tensor
        self.register_buffer("expert_bias", torch.zeros(self.num_experts), persistent=True)
        self.register_buffer("_load", torch.zeros(self.num_experts), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, RouterStats]:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        T, K, E = x.shape[0], self.top_k, self.num_experts
        logits = self.router(x)  # (T, E)
        choice = logits + self.expert_bias.to(logits.dtype) if self.balance == "aux_free" else logits
        idx = torch.topk(choice, K, dim=-1).indices  # (T, K)
        scores = torch.sigmoid(logits.gather(1, idx).float()).to(x.dtype)  # raw logits: unselected experts get 0

        flat = idx.reshape(-1)
        order = torch.argsort(flat, stable=True)
        token = order // K
        counts_t = torch.bincount(flat, minlength=E)
        counts = counts_t.tolist()  # host sync, needed to slice groups; cheap next to the expert matmuls
        x_sorted = x[token] * scores.reshape(-1)[order, None]  # the score scales the expert INPUT
        routed = self.experts(x_sorted, counts)
        shared = self.shared_expert(x)  # under bf16 autocast this is bf16 while x (the residual) stays fp32
        y = shared.index_add(0, token, routed.to(shared.dtype))

        aux = logits.new_zeros((), dtype=torch.float32)
        probs = torch.sigmoid(logits.float())
        probs = probs / probs.sum(-1, keepdim=True)
        if self.balance == "aux_loss" and self.aux_coef > 0 and torch.is_grad_enabled():
            frac = counts_t.float() / (T * K)
            aux = self.aux_coef * E * (frac * probs.mean(0)).sum()
        with torch.no_grad():
            entropy = -(probs * probs.clamp_min(1e-20).log()).sum(-1).mean()
            if self.training and self.balance == "aux_free":
                self._load += counts_t.to(self._load.dtype)
        stats = RouterStats(self.layer_idx, counts_t.detach(), entropy.detach())
        return y.reshape(shape), aux, stats

    @torch.no_grad()
    def update_router_bias(self) -> None:
        """Aux-free balancing step: raise the bias of under-loaded experts, lower over-loaded ones, by a fixed
        rate (sign rule of DeepSeek-V3), using the loads counted since the last call; loads are summed across
        data-parallel ranks first so every rank applies the same update."""
        if self.balance != "aux_free":
            return
        load = self._load.clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(load)
        if load.sum() > 0:
            self.expert_bias += self.bias_rate * torch.sign(load.mean() - load)
        self._load.zero_()
