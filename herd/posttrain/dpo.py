"""DPO on herd's one trainer: the sigmoid loss with beta, reference log-probs computed once and cached with the
pairs, and an optional NLL on the chosen answer (Llama 3 sec. 4.1.4: beta 0.1, NLL 0.2).

    L = -log sigmoid(beta * [(logp(y+) - ref(y+)) - (logp(y-) - ref(y-))]) + nll_coef * NLL(y+)/|y+|

Log-probs are SUMMED over each answer's tokens (TRL dpo_trainer L1349). A micro-batch holds B whole pairs as
2B rows, chosen rows first, so a pair is never split across micro-batches or ranks. Logged: the implicit
rewards' margin and accuracy (share of pairs with chosen > rejected), and the chosen log-prob drift from the
reference (DPO can push both answers down, TRL #800).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from herd.train.losses import Batch, ObjectiveOutput, _forward


def sequence_logps(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over masked target tokens of log p(y), (B,), fp32."""
    logp = F.log_softmax(logits.float(), -1).gather(-1, y[..., None])[..., 0]
    return (logp * mask).sum(-1)


def dpo_loss(pol_c: torch.Tensor, pol_r: torch.Tensor, ref_c: torch.Tensor, ref_r: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, chosen implicit rewards, rejected implicit rewards) for (B,) summed log-probs."""
    rc, rr = beta * (pol_c - ref_c), beta * (pol_r - ref_r)
    return -F.logsigmoid(rc - rr).mean(), rc.detach(), rr.detach()


class DPOObjective:
    """Batch rows: [chosen_1..B, rejected_1..B]; extras `ref_logp` (2B,) summed reference log-probs."""

    def __init__(self, beta: float, nll_coef: float = 0.0) -> None:
        self.beta, self.nll_coef = beta, nll_coef

    def __call__(self, model: nn.Module, batch: Batch) -> ObjectiveOutput:
        logits, aux, stats = _forward(model, batch.x)
        B = batch.x.shape[0] // 2
        seq = sequence_logps(logits, batch.y, batch.mask)
        ref = batch.extras["ref_logp"]
        loss, rc, rr = dpo_loss(seq[:B], seq[B:], ref[:B], ref[B:], self.beta)
        n_c = batch.mask[:B].sum(-1).clamp_min(1.0)
        nll = (-seq[:B] / n_c).mean()
        total = loss + self.nll_coef * nll + aux
        return ObjectiveOutput(total, {
            "loss": float(total.detach()), "dpo_loss": float(loss.detach()), "nll_chosen": float(nll.detach()),
            "margin": float((rc - rr).mean()), "accuracy": float((rc > rr).float().mean()),
            "chosen_drift": float((seq[:B].detach() - ref[:B]).mean()), "aux_loss": float(aux.detach())}, stats)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


__all__ = ["DPOObjective", "dpo_loss", "sequence_logps"]
