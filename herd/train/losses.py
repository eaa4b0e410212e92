"""Training objectives for the one loop in herd.train.loop: masked cross-entropy and codistillation.

An objective maps (model, batch) to a scalar loss plus metrics; the loop owns everything else (accumulation,
clipping, autocast, checkpoints). Objectives with state (the alpha controller) expose state_dict /
load_state_dict so a resumed run continues exactly.

Codistillation (Llama 4 trained Scout and Maverick "codistilling" from Behemoth with a loss that "dynamically
weights the soft and hard targets through training"):

    loss_i = alpha_i * T^2 * KL(p_teacher^T || p_student^T)_i + (1 - alpha_i) * CE(student, y_i)

T^2 keeps the soft-target gradient on the same scale as the hard one when T changes (Hinton et al. 2015,
"Distilling the Knowledge in a Neural Network", sec. 2). alpha_i comes from AlphaController, see its docstring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from herd.train.config import AlphaConfig


@dataclass
class Batch:
    """One micro-batch: inputs x, targets y and the loss mask (1 where y is a target), all (B, S)."""

    x: torch.Tensor
    y: torch.Tensor
    mask: torch.Tensor
    # objective-specific tensors from the data source (RL: per-token advantages and sampler log-probs aligned
    # with y; DPO: reference log-probs per row); a (B, seq_len+1) tensor is shifted like loss_mask
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def from_rows(cls, ids: torch.Tensor, loss_mask: torch.Tensor,
                  extras: dict[str, torch.Tensor] | None = None) -> Batch:
        """Rows of seq_len+1 tokens (the packed-shard contract): x = ids[:-1], y = ids[1:], mask = mask[1:]."""
        ex = {k: (v[:, 1:] if v.dim() == 2 and v.shape == ids.shape else v) for k, v in (extras or {}).items()}
        return cls(ids[:, :-1].long(), ids[:, 1:].long(), loss_mask[:, 1:].float(), ex)

    def to(self, device: torch.device) -> Batch:
        return Batch(self.x.to(device), self.y.to(device), self.mask.to(device),
                     {k: v.to(device) for k, v in self.extras.items()})

    @property
    def n_targets(self) -> int:
        return int(self.mask.sum().item())


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor  # the scalar to backpropagate (already includes the MoE aux loss)
    metrics: dict[str, float] = field(default_factory=dict)  # summed over micro-batches by the loop, / n_micro
    router_stats: Any = None  # the model's per-MoE-layer stats of this micro-batch (for expert-load metrics)


class Objective(Protocol):
    def __call__(self, model: nn.Module, batch: Batch) -> ObjectiveOutput: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def masked_ce(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over target tokens (mask == 1); fp32 softmax regardless of autocast."""
    ce = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none").view_as(mask)
    return (ce * mask).sum() / mask.sum().clamp_min(1.0)


def _forward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Any]:
    out = model(x)
    aux = getattr(out, "aux_loss", None)
    logits = out.logits if hasattr(out, "logits") else out
    aux = aux if aux is not None else logits.new_zeros(())
    return logits, aux, getattr(out, "router_stats", None)


class CrossEntropyObjective:
    """Next-token prediction on hard labels (pretraining), plus the MoE load-balancing aux loss.

    The model's aux_loss already carries its config's router_aux_loss_coef (0 unless router_balance is
    "aux_loss"), so `aux_weight` stays 1 unless an objective wants to rescale it."""

    def __init__(self, aux_weight: float = 1.0) -> None:
        self.aux_weight = aux_weight

    def __call__(self, model: nn.Module, batch: Batch) -> ObjectiveOutput:
        logits, aux, stats = _forward(model, batch.x)
        ce = masked_ce(logits, batch.y, batch.mask)
        loss = ce + self.aux_weight * aux
        return ObjectiveOutput(loss, {"loss": float(loss.detach()), "ce": float(ce.detach()),
                                      "aux_loss": float(aux.detach())}, stats)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class AlphaController:
    """Chooses the soft-target weight alpha per token; stateful (EMAs), so it is checkpointed.

    hard / fixed: alpha = 0 / cfg.value everywhere.

    dynamic = global(t) * token_i, clipped to [0, 1]:

    * global(t) = min + (max - min) * (1 - r_t), where r_t = clip(|CE_s - CE_t| / CE_s, 0, 1) is the share
      of the student's current hard-label loss it still lags its teacher by (CE_s, CE_t: EMAs over training
      batches of the student's and the teacher's CE); a student that has overtaken its teacher also gets a
      lower alpha, since the teacher would pull it back. While the student is far behind, the labels carry the
      strong, simple signal and alpha stays near `min`; as the student approaches its teacher, the teacher's
      full distribution (the relative probabilities of the wrong tokens) is what is left to learn, and alpha
      rises toward `max`. This is Llama 4's "dynamically weighting the soft and hard targets through
      training" (Meta, 2025) driven by measured progress instead of a hand-tuned step schedule; online
      codistillation (Anil et al. 2018, "Large scale distributed neural network training through online
      distillation", sec. 3) turns the teacher term on only after a burn-in for the same reason. Measured
      here (docs/benchmarks.md, "train"): early in training a strong soft term slows the student, and the
      first version of this rule (alpha high while far behind) was the slowest of the three rules.
    * token_i = p_teacher(y_i) / mean_batch(p_teacher(y)): the teacher's probability of the true next token,
      normalized to mean 1 over the batch's target tokens. Tokens the teacher gets right take more soft
      weight, tokens it gets wrong lean on the label: the per-sample weighting of soft labels of Zhou et al.
      2021 ("Rethinking Soft Labels for Knowledge Distillation: A Bias-Variance Tradeoff", ICLR), which
      down-weights soft targets where the teacher is unreliable. Normalizing keeps the batch's mean alpha equal
      to global(t), so the two parts do not compound.
    """

    def __init__(self, cfg: AlphaConfig) -> None:
        self.cfg = cfg
        self.ce_student: float | None = None
        self.ce_teacher: float | None = None

    def global_alpha(self) -> float:
        c = self.cfg
        if c.rule == "hard":
            return 0.0
        if c.rule == "fixed":
            return c.value
        if self.ce_student is None or self.ce_teacher is None or self.ce_student <= 0:
            return c.min  # before any measurement the student is as far behind as it will ever be
        r = min(abs(self.ce_student - self.ce_teacher) / self.ce_student, 1.0)
        return c.min + (c.max - c.min) * (1.0 - r)

    def token_alpha(self, p_true_teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """alpha per token, (B, S). p_true_teacher: teacher's (T=1) probability of each target token."""
        a = self.global_alpha()
        if self.cfg.rule != "dynamic" or not self.cfg.per_token:
            return torch.full_like(mask, a)
        mean_p = (p_true_teacher * mask).sum() / mask.sum().clamp_min(1.0)
        w = p_true_teacher / mean_p.clamp_min(1e-8)
        return (a * w).clamp(0.0, 1.0)

    def update(self, ce_student: float, ce_teacher: float) -> None:
        """Feed one micro-batch's measured CEs (called after the loss is built, so alpha lags one step)."""
        if not (math.isfinite(ce_student) and math.isfinite(ce_teacher)):
            return
        d = self.cfg.ema
        self.ce_student = ce_student if self.ce_student is None else d * self.ce_student + (1 - d) * ce_student
        self.ce_teacher = ce_teacher if self.ce_teacher is None else d * self.ce_teacher + (1 - d) * ce_teacher

    def state_dict(self) -> dict[str, Any]:
        return {"ce_student": self.ce_student, "ce_teacher": self.ce_teacher}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ce_student, self.ce_teacher = state["ce_student"], state["ce_teacher"]


class CodistillObjective:
    """Student vs a frozen teacher computed on the fly: alpha*T^2*KL(teacher_T||student_T) + (1-alpha)*CE."""

    def __init__(self, teacher: nn.Module, temperature: float, alpha: AlphaConfig,
                 aux_weight: float = 1.0, teacher_every: int = 1) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.temperature = temperature
        self.alpha = AlphaController(alpha)
        self.aux_weight = aux_weight
        # the teacher's forward costs about as much as the student's forward + backward (0.45x tokens/s on the
        # tiny pair); with teacher_every = k only every k-th micro-batch pays it and the others train on hard
        # labels, so a fixed budget buys the student ~1.7x the tokens at k = 4 (DistillConfig.teacher_every)
        self.teacher_every = teacher_every
        self.calls = 0  # micro-batches seen: which ones get soft targets (checkpointed: exact resume)

    def __call__(self, model: nn.Module, batch: Batch) -> ObjectiveOutput:
        T = self.temperature
        logits, aux, stats = _forward(model, batch.x)
        s_logits = logits.float()
        ce_tok = F.cross_entropy(s_logits.flatten(0, 1), batch.y.flatten(), reduction="none").view_as(batch.mask)
        n = batch.mask.sum().clamp_min(1.0)
        ce = (ce_tok * batch.mask).sum() / n
        soft = self.alpha.cfg.rule != "hard" and self.calls % self.teacher_every == 0
        self.calls += 1
        if not soft:  # the hard-label baseline, and the batches between teacher batches, pay no teacher forward
            loss = ce + self.aux_weight * aux
            return ObjectiveOutput(loss, {"loss": float(loss.detach()), "ce": float(ce.detach()),
                                          "aux_loss": float(aux.detach()), "alpha": 0.0}, stats)
        with torch.no_grad():
            t_logits, _, _ = _forward(self.teacher, batch.x)
            t_logits = t_logits.float()
            t_logp1 = F.log_softmax(t_logits, -1)
            p_true = t_logp1.gather(-1, batch.y.unsqueeze(-1)).squeeze(-1).exp()
            t_ce = ((-p_true.clamp_min(1e-30).log()) * batch.mask).sum() / n
            t_logp = F.log_softmax(t_logits / T, -1)
            alpha_tok = self.alpha.token_alpha(p_true, batch.mask)
        s_logp = F.log_softmax(s_logits / T, -1)
        kl_tok = (t_logp.exp() * (t_logp - s_logp)).sum(-1)  # KL(teacher_T || student_T) per token
        per_tok = alpha_tok * (T * T) * kl_tok + (1.0 - alpha_tok) * ce_tok
        distill = (per_tok * batch.mask).sum() / n
        loss = distill + self.aux_weight * aux
        kl = (kl_tok.detach() * batch.mask).sum() / n
        mean_alpha = (alpha_tok * batch.mask).sum() / n
        self.alpha.update(float(ce.detach()), float(t_ce))
        return ObjectiveOutput(loss, {"loss": float(loss.detach()), "ce": float(ce.detach()),
                                      "kl": float(kl), "teacher_ce": float(t_ce),
                                      "aux_loss": float(aux.detach()), "alpha": float(mean_alpha)}, stats)

    def state_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha.state_dict(), "calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.alpha.load_state_dict(state["alpha"])
        self.calls = int(state.get("calls", 0))  # checkpoints written before teacher_every existed: 0
