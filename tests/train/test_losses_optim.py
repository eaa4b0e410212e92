"""Objectives (CE, codistillation, the alpha controller) and the lr schedules, on one process."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from herd.train.config import AlphaConfig, DistillConfig, PretrainConfig, ScheduleConfig
from herd.train.losses import AlphaController, Batch, CodistillObjective, CrossEntropyObjective, masked_ce
from herd.train.optim import lr_factor


class Fixed(torch.nn.Module):
    """A 'model' that returns given logits (the teacher or the student of a hand-checked example)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(logits.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits


def _batch(B=2, S=5, V=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, S + 1), generator=g)
    mask = torch.ones(B, S + 1)
    mask[0, -2:] = 0
    return Batch.from_rows(ids, mask), torch.randn(B, S, V, generator=g), torch.randn(B, S, V, generator=g)


def test_masked_ce_ignores_masked_tokens():
    b, s_logits, _ = _batch()
    ce_all = F.cross_entropy(s_logits.flatten(0, 1), b.y.flatten(), reduction="none").view_as(b.mask)
    assert math.isclose(float(masked_ce(s_logits, b.y, b.mask)), float(ce_all[b.mask.bool()].mean()), rel_tol=1e-6)


def test_codistill_matches_the_formula_for_fixed_alpha():
    b, s_logits, t_logits = _batch()
    T, a = 2.0, 0.3
    obj = CodistillObjective(Fixed(t_logits), T, AlphaConfig(rule="fixed", value=a))
    out = obj(Fixed(s_logits), b)
    m = b.mask.bool()
    ce = F.cross_entropy(s_logits[m], b.y[m])
    kl = F.kl_div(F.log_softmax(s_logits[m] / T, -1), F.log_softmax(t_logits[m] / T, -1), log_target=True,
                  reduction="batchmean")
    assert torch.allclose(out.loss, a * T * T * kl + (1 - a) * ce, atol=1e-5)
    assert math.isclose(out.metrics["alpha"], a, rel_tol=1e-6)


def test_hard_rule_equals_cross_entropy_and_skips_the_teacher():
    b, s_logits, _ = _batch()

    class Exploding(torch.nn.Module):
        def forward(self, x):
            raise AssertionError("the hard-label baseline must not run the teacher")

    out = CodistillObjective(Exploding(), 2.0, AlphaConfig(rule="hard"))(Fixed(s_logits), b)
    ref = CrossEntropyObjective()(Fixed(s_logits), b)
    assert torch.equal(out.loss, ref.loss)


def test_kl_term_vanishes_when_student_equals_teacher():
    b, s_logits, _ = _batch()
    obj = CodistillObjective(Fixed(s_logits), 2.0, AlphaConfig(rule="fixed", value=1.0))
    out = obj(Fixed(s_logits), b)
    assert out.metrics["kl"] < 1e-6 and float(out.loss.detach()) < 1e-5


def test_dynamic_alpha_follows_the_student_teacher_gap_and_checkpoints():
    ctl = AlphaController(AlphaConfig(rule="dynamic", min=0.1, max=0.9, ema=0.0, per_token=False))
    assert ctl.global_alpha() == 0.1  # nothing measured yet: the student is as far behind as it gets
    ctl.update(ce_student=8.0, ce_teacher=2.0)
    far = ctl.global_alpha()
    ctl.update(ce_student=2.2, ce_teacher=2.0)
    near = ctl.global_alpha()
    ctl.update(ce_student=2.0, ce_teacher=2.0)  # caught up: the teacher's distribution is what is left
    level = ctl.global_alpha()
    ctl.update(ce_student=1.5, ce_teacher=2.0)  # overtook its teacher: the teacher would pull it back
    assert far == pytest.approx(0.1 + 0.8 * 0.25) and far < near < level == pytest.approx(0.9)
    assert ctl.global_alpha() == pytest.approx(0.1 + 0.8 * (1 - 0.5 / 1.5))
    state = ctl.state_dict()
    other = AlphaController(ctl.cfg)
    other.load_state_dict(state)
    assert other.global_alpha() == ctl.global_alpha()


def test_dynamic_per_token_alpha_trusts_the_teacher_where_it_is_right():
    ctl = AlphaController(AlphaConfig(rule="dynamic", min=0.5, max=0.5, per_token=True))
    p_true = torch.tensor([[0.9, 0.1, 0.5, 0.3]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    a = ctl.token_alpha(p_true, mask)
    assert a[0, 0] > a[0, 2] > a[0, 1]  # ordered by the teacher's probability of the true token
    assert float((a * mask).sum() / mask.sum()) == pytest.approx(0.5, abs=0.07)  # mean ~ global alpha (clipped)
    assert float(a.max()) <= 1.0


@pytest.mark.parametrize("kind", ["cosine", "wsd"])
def test_schedules_warm_up_then_decay_to_min(kind):
    cfg = ScheduleConfig(kind=kind, warmup_steps=10, min_lr_ratio=0.1, decay_fraction=0.2)
    f = [lr_factor(s, cfg, 100) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in pairwise(f[:10]))  # warmup rises
    assert f[-1] == pytest.approx(0.1, abs=0.01)
    if kind == "wsd":
        assert f[50] == 1.0 and f[79] == 1.0 and f[90] < 1.0  # stable, then the last 20% decays
    else:
        assert 0.1 < f[50] < 1.0


def test_configs_reject_bad_values_with_the_fix():
    with pytest.raises(ValidationError, match="warmup_steps"):
        PretrainConfig(steps=10, schedule={"warmup_steps": 10})
    with pytest.raises(ValidationError, match="alpha.min"):
        DistillConfig(alpha={"min": 0.9, "max": 0.1})
    with pytest.raises(ValidationError, match="extra"):
        PretrainConfig(stepz=3)


def test_teacher_every_k_runs_the_teacher_on_every_kth_batch_and_resumes_the_count():
    """teacher_every = 3: soft targets (and the teacher's forward) on micro-batches 0, 3, 6, ...; the batches
    between are exactly the hard-label loss; the count is checkpointed, so a resumed run keeps the same rhythm."""
    b, s_logits, t_logits = _batch()

    class Counting(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return Fixed(t_logits)(x)

    teacher = Counting()
    obj = CodistillObjective(teacher, 2.0, AlphaConfig(rule="fixed", value=0.5), teacher_every=3)
    ref = CrossEntropyObjective()(Fixed(s_logits), b)
    outs = [obj(Fixed(s_logits), b) for _ in range(4)]
    assert teacher.calls == 2  # batches 0 and 3
    assert [o.metrics["alpha"] for o in outs] == [0.5, 0.0, 0.0, 0.5]
    assert torch.equal(outs[1].loss, ref.loss) and not torch.equal(outs[0].loss, ref.loss)
    resumed = CodistillObjective(teacher, 2.0, AlphaConfig(rule="fixed", value=0.5), teacher_every=3)
    resumed.load_state_dict(obj.state_dict())  # 4 batches seen: the next soft batch is the 7th (index 6)
    assert [resumed(Fixed(s_logits), b).metrics["alpha"] for _ in range(3)] == [0.0, 0.0, 0.5]
