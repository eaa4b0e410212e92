"""GRPO-family math: group-relative advantages, the zero-variance filter, and the token-level policy loss as an
objective of herd's one trainer.

    A = group_advantages(rewards, scale="group")        # rewards (N groups, G samples) -> (N, G)
    keep = ~zero_variance(rewards)                      # DAPO dynamic sampling: these groups carry no signal
    obj = GRPOObjective(temperature=1.0, clip_low=0.2, clip_high=0.28, kl_coef=0.0)

Advantage (TRL `scale_rewards="group"`, verl GRPO): A_i = (r_i - mean_g r) / (std_g r + 1e-4), std with Bessel's
correction; `scale="none"` is Dr. GRPO's r_i - mean (no per-question difficulty bias).

Loss per token (PPO clip with DAPO's clip-higher): l_t = -min(rho_t A, clip(rho_t, 1-eps_low, 1+eps_high) A)
+ beta * k3_t, with k3 = exp(ref - logp) - (ref - logp) - 1 (Schulman's estimator, TRL), aggregated over the
micro-batch's completion tokens: sum(l * M) / sum(M) (token-level, DAPO sec. 3.3: long answers are not
under-weighted). On-policy with one update per rollout, rho = exp(logp - logp.detach()) = 1 and only its
gradient survives (TRL, nanochat), so the sampler's log-probs are not needed for the loss; they are compared
with the trainer's to log the sampler/trainer gap (`rollout.logp_gap.*`), which catches position, temperature and
MoE-routing mismatches (posttrain notes sec. 6.2).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from herd.train.losses import Batch, ObjectiveOutput, _forward

STD_EPS = 1e-4  # TRL's epsilon in the group std normalization
ZERO_STD = 1e-6  # NeMo-RL #4158: an FP32 std of a constant group can be ~1e-8, not 0


def group_advantages(rewards: torch.Tensor, scale: str = "group") -> torch.Tensor:
    """(N, G) rewards -> (N, G) advantages relative to each group's mean (divided by its std for "group")."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be (groups, G >= 2), got shape {tuple(rewards.shape)}")
    r = rewards.double()
    a = r - r.mean(1, keepdim=True)
    if scale == "group":
        a = a / (r.std(1, keepdim=True) + STD_EPS)
    elif scale != "none":
        raise ValueError(f"scale {scale!r} must be 'group' or 'none'")
    return a.to(rewards.dtype)


def zero_variance(rewards: torch.Tensor) -> torch.Tensor:
    """(N,) True for groups whose rewards are all (numerically) equal: zero advantage, no gradient."""
    return (rewards.max(1).values - rewards.min(1).values).abs() <= ZERO_STD


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, *,
                clip_low: float, clip_high: float, ref_logp: torch.Tensor | None = None,
                kl_coef: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Token-level clipped policy loss; all tensors (B, S), adv per token (the sequence's advantage)."""
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high) * adv
    per_tok = -torch.minimum(unclipped, clipped)
    n = mask.sum().clamp_min(1.0)
    metrics: dict[str, float] = {}
    if ref_logp is not None and kl_coef > 0:
        d = ref_logp - logp
        k3 = torch.exp(d) - d - 1
        per_tok = per_tok + kl_coef * k3
        metrics["kl"] = float((k3.detach() * mask).sum() / n)
    loss = (per_tok * mask).sum() / n
    metrics["clip_frac"] = float((((ratio < 1 - clip_low) | (ratio > 1 + clip_high)).float() * mask).sum() / n)
    return loss, metrics


class GRPOObjective:
    """The RL objective on herd's trainer. The batch's extras: `advantages` (B, S) per target token,
    `sampler_logp` (B, S) (the rollout's log-probs, for the gap metric), optionally `ref_logp` (B, S)."""

    def __init__(self, temperature: float, clip_low: float, clip_high: float, kl_coef: float = 0.0) -> None:
        self.temperature, self.clip_low, self.clip_high, self.kl_coef = temperature, clip_low, clip_high, kl_coef

    def __call__(self, model: nn.Module, batch: Batch) -> ObjectiveOutput:
        logits, aux, stats = _forward(model, batch.x)
        logp = F.log_softmax(logits.float() / self.temperature, -1).gather(-1, batch.y[..., None])[..., 0]
        ex = batch.extras
        loss, m = policy_loss(logp, logp.detach(), ex["advantages"], batch.mask, clip_low=self.clip_low,
                              clip_high=self.clip_high, ref_logp=ex.get("ref_logp"), kl_coef=self.kl_coef)
        loss = loss + aux
        n = batch.mask.sum().clamp_min(1.0)
        gap = (logp.detach() - ex["sampler_logp"]).abs() * batch.mask
        m.update({"loss": float(loss.detach()), "rollout.logp_gap.mean": float(gap.sum() / n),
                  "rollout.logp_gap.max": float(gap.max()), "aux_loss": float(aux.detach()),
                  "entropy_proxy": float((-logp.detach() * batch.mask).sum() / n)})
        # rollout statistics the data source attached (reward, pass rates, filter, ledger tiers): the trainer
        # averages metrics over micro-batches, and every micro-batch of a rollout batch carries the same values
        m.update({k.removeprefix("stat/"): float(v) for k, v in ex.items() if k.startswith("stat/")})
        return ObjectiveOutput(loss, m, stats)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


__all__ = ["GRPOObjective", "group_advantages", "policy_loss", "zero_variance"]
