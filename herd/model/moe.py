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


class _Permute(torch.autograd.Function):
    """rows -> rows[perm] whose backward is the inverse gather (``index_select`` both ways), instead of autograd's
    scatter-add for an indexed read: a permutation needs no accumulation."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, perm: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(inverse)
        return x.index_select(0, perm)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


def _permute(x: torch.Tensor, perm: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    return _Permute.apply(x, perm, inverse)


@dataclass
class RouterStats:
    """One MoE layer's routing in a forward pass (detached): for logging and aux-free balancing."""

    layer: int
    tokens_per_expert: torch.Tensor  # (E,) token copies dispatched to each expert
    router_logits: torch.Tensor  # (T, E)

    @property
    def entropy(self) -> torch.Tensor:
        """() mean entropy (nats) of the per-token router distribution sigmoid(logits) / Σ sigmoid(logits);
        computed on access, so decoding pays nothing for it."""
        probs = torch.sigmoid(self.router_logits.float())
        probs = probs / probs.sum(-1, keepdim=True)
        return -(probs * probs.clamp_min(1e-20).log()).sum(-1).mean()


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
    """E routed SwiGLU experts in transformers' fused layout (plain Parameters, x @ W).

    The quantization seam: MoE only calls ``forward(x_sorted, counts)`` and ``one(x, e)``, so any module with
    those two methods can replace ``MoE.experts`` from outside (``herd.quantize.modules.PackedExperts`` runs
    per-expert packed int8/int4 kernels this way)."""

    def __init__(self, num_experts: int, hidden: int, intermediate: int):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, hidden, 2 * intermediate))
        self.down_proj = nn.Parameter(torch.empty(num_experts, intermediate, hidden))

    def forward(self, x_sorted: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """``x_sorted`` holds token copies grouped by expert, ``counts[e]`` rows for expert e."""
        # with autograd, split/unbind (not x[a:b], W[e]): their backward writes every group's gradient in ONE
        # cat/stack, where per-expert slicing would materialise a full-size zero gradient per expert and add them
        # up; without autograd, plain indexing avoids creating E views per call (decoding)
        grad = torch.is_grad_enabled()
        groups = x_sorted.split(counts) if grad else None
        gate_up = self.gate_up_proj.unbind(0) if grad else self.gate_up_proj
        down = self.down_proj.unbind(0) if grad else self.down_proj
        outs, start = [], 0
        for e, n in enumerate(counts):
            if n == 0:  # never touch an expert that got no tokens
                continue
            xe = groups[e] if groups is not None else x_sorted[start : start + n]
            start += n
            gate, up = (xe @ gate_up[e]).chunk(2, dim=-1)
            outs.append((F.silu(gate) * up) @ down[e])
        if not outs:
            return x_sorted.new_zeros(0, self.down_proj.shape[-1])
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def one(self, x: torch.Tensor, e: int) -> torch.Tensor:
        """Expert ``e`` on ``x`` (decoding a single token)."""
        gate, up = (x @ self.gate_up_proj[e]).chunk(2, dim=-1)
        return (F.silu(gate) * up) @ self.down_proj[e]


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
        # tokens routed per expert since the last bias update: a plain tensor, not a buffer, so DDP's buffer
        # broadcast cannot overwrite a rank's local counts before update_router_bias() sums them over ranks
        self._load = torch.zeros(self.num_experts)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, RouterStats]:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        T, K, E = x.shape[0], self.top_k, self.num_experts
        logits = self.router(x)  # (T, E)
        choice = logits + self.expert_bias.to(logits.dtype) if self.balance == "aux_free" else logits
        idx = torch.topk(choice, K, dim=-1).indices  # (T, K)
        # sigmoid of the RAW top-k logits (the aux-free bias only steers the choice); unselected experts get 0
        scores = torch.sigmoid(logits.gather(1, idx).float()).to(x.dtype)

        counts_t = torch.bincount(idx.reshape(-1), minlength=E)
        if T * K == 1:  # one token, one expert (batch-1 decoding): no sorting or permuting
            routed = self.experts.one(x * scores, int(idx))
        else:
            routed = self._dispatch(x, idx, scores, counts_t)
        shared = self.shared_expert(x)  # under bf16 autocast this is bf16 while x (the residual) stays fp32
        y = shared + routed.to(shared.dtype)

        aux = logits.new_zeros((), dtype=torch.float32)
        if self.balance == "aux_loss" and self.aux_coef > 0 and torch.is_grad_enabled():
            probs = torch.sigmoid(logits.float())
            probs = probs / probs.sum(-1, keepdim=True)
            frac = counts_t.float() / (T * K)
            aux = self.aux_coef * E * (frac * probs.mean(0)).sum()
        if self.training and self.balance == "aux_free":
            with torch.no_grad():
                # the model moved (or was built on the meta device): count afresh
                if self._load.device != counts_t.device:
                    self._load = torch.zeros(E, device=counts_t.device)
                self._load += counts_t.to(self._load.dtype)
        stats = RouterStats(self.layer_idx, counts_t.detach(), logits.detach())
        return y.reshape(shape), aux, stats

    def _dispatch(
        self, x: torch.Tensor, idx: torch.Tensor, scores: torch.Tensor, counts_t: torch.Tensor
    ) -> torch.Tensor:
        """Sort token copies by expert, run each expert on its contiguous group, and sum back per token."""
        T, K = idx.shape
        order = torch.argsort(idx.reshape(-1), stable=True)  # copy order (token, k) -> grouped by expert
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        counts = counts_t.tolist()  # host sync, needed to slice groups; cheap next to the expert matmuls
        copies = x if K == 1 else x.repeat_interleave(K, dim=0)
        # the score scales the expert INPUT (silu is not homogeneous: scaling the output would differ)
        x_sorted = _permute(copies * scores.reshape(-1, 1), order, inverse)
        routed = _permute(self.experts(x_sorted, counts), inverse, order)
        return routed if K == 1 else routed.view(T, K, -1).sum(1)

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
