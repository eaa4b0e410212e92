"""Post-training math against hand-computed values: GRPO advantages and loss, the zero-variance filter, the
ledger's update / tier / curriculum logic, the DPO loss, and sampler-vs-trainer log-prob agreement (fp32)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from herd.model import Llama4, ModelConfig
from herd.posttrain.config import CurriculumConfig
from herd.posttrain.dpo import DPOObjective, dpo_loss
from herd.posttrain.grpo import GRPOObjective, group_advantages, policy_loss, zero_variance
from herd.posttrain.ledger import Ledger, tier_mix, tier_of
from herd.posttrain.rollout import sample, sample_engine, token_logprobs
from herd.train.losses import Batch


def test_group_advantages_by_hand() -> None:
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
    # group 0: mean .5, Bessel std sqrt(((.5^2)*4)/3) = sqrt(1/3)
    s0 = math.sqrt(1 / 3)
    # group 1: mean .75, deviations .25,.25,.25,-.75 -> var (3*.0625 + .5625)/3 = .25, std .5
    want = torch.tensor([[.5 / (s0 + 1e-4), -.5 / (s0 + 1e-4), -.5 / (s0 + 1e-4), .5 / (s0 + 1e-4)],
                         [.25 / (.5 + 1e-4)] * 3 + [-.75 / (.5 + 1e-4)]])
    torch.testing.assert_close(group_advantages(r, "group"), want, rtol=0, atol=1e-6)
    torch.testing.assert_close(group_advantages(r, "none"), torch.tensor([[.5, -.5, -.5, .5],
                                                                        [.25, .25, .25, -.75]]))
    with pytest.raises(ValueError, match="G >= 2"):
        group_advantages(torch.ones(3, 1))


def test_filter_drops_exactly_zero_variance_groups() -> None:
    r = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.1, 0.1, 0.1 + 1e-9],
                      [1.1, 1.0, 1.1]])
    assert zero_variance(r).tolist() == [True, True, False, True, False]
    # a zero-variance group has zero advantage everywhere: nothing to learn from it
    assert group_advantages(r[:2], "group").abs().max() == 0


def test_policy_loss_by_hand() -> None:
    logp = torch.tensor([[-1.0, -2.0, -0.5]])
    old = torch.tensor([[-1.2, -1.5, -0.5]])
    adv = torch.tensor([[1.0, 1.0, -2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third token is not a target
    # token 0: rho = e^.2 = 1.2214 > 1.28? no -> -min(1.2214, 1.2214) = -1.2214
    # token 1: rho = e^-.5 = .6065, clip low .8 -> -min(.6065*1, .8*1) = -.6065
    loss, m = policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28)
    assert float(loss) == pytest.approx((-math.exp(0.2) - math.exp(-0.5)) / 2, abs=1e-6)
    assert m["clip_frac"] == pytest.approx(0.5)
    # token 0 clipped above at 1.28 when rho = e^.3 = 1.35 and A > 0
    loss2, _ = policy_loss(torch.tensor([[0.3]]), torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1),
                           clip_low=0.2, clip_high=0.28)
    assert float(loss2) == pytest.approx(-1.28, abs=1e-6)
    # k3 KL: d = ref - logp = .5 -> e^.5 - .5 - 1
    ref = torch.tensor([[-0.5]])
    loss3, m3 = policy_loss(torch.tensor([[-1.0]]), torch.tensor([[-1.0]]), torch.zeros(1, 1), torch.ones(1, 1),
                            clip_low=0.2, clip_high=0.28, ref_logp=ref, kl_coef=0.1)
    assert m3["kl"] == pytest.approx(math.exp(0.5) - 1.5, abs=1e-6)
    assert float(loss3) == pytest.approx(0.1 * (math.exp(0.5) - 1.5), abs=1e-6)


def test_on_policy_gradient_is_advantage_weighted_logp() -> None:
    """With old = logp.detach(), d loss / d logp_t = -A_t / n (the REINFORCE form)."""
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    adv = torch.tensor([[2.0, -1.0]])
    loss, _ = policy_loss(logp, logp.detach(), adv, torch.ones(1, 2), clip_low=0.2, clip_high=0.28)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.0, 0.5]]))


def test_ledger_update_tiers_and_curriculum() -> None:
    cfg = CurriculumConfig(ema=0.5, easy_above=0.8, hard_below=0.3, unsolved_after=8)
    led = Ledger()
    for i in range(4):
        led.add(f"a{i}", "arithmetic")
    led.add("k0", "knowledge")
    assert tier_of(led.entries["a0"], cfg) == "unseen"
    e = led.update("a0", successes=4, attempts=4, step=0, cfg=cfg)
    assert (e.ema, e.tier, e.attempts, e.successes) == (1.0, "easy", 4, 4)
    e = led.update("a0", successes=0, attempts=4, step=1, cfg=cfg)  # ema .5*1 + .5*0 = .5
    assert (e.ema, e.tier, e.attempts, e.successes, e.last_step) == (0.5, "medium", 8, 4, 1)
    e = led.update("a1", successes=0, attempts=4, step=0, cfg=cfg)
    assert e.tier == "hard"  # 4 attempts < unsolved_after
    e = led.update("a1", successes=0, attempts=4, step=1, cfg=cfg)
    assert e.tier == "unsolved"
    led.update("a2", 1, 4, 0, cfg)  # .25 -> hard
    with pytest.raises(ValueError, match="successes"):
        led.update("a3", 5, 4, 0, cfg)
    # tier mix moves linearly from start to end
    mix0, mix1 = tier_mix(cfg, 0.0), tier_mix(cfg, 1.0)
    assert mix0["medium"] > mix0["hard"] and mix1["hard"] > mix1["medium"]
    assert sum(tier_mix(cfg, 0.5).values()) == pytest.approx(1.0)
    # sampling: distinct ids, capability quotas respected, deterministic under the same rng
    picks = led.sample(4, np.random.default_rng(0), progress=0.0, cfg=cfg,
                       capabilities={"arithmetic": 0.75, "knowledge": 0.25})
    assert len(picks) == len(set(picks)) == 4
    assert sum(p.startswith("k") for p in picks) == 1
    assert picks == led.sample(4, np.random.default_rng(0), progress=0.0, cfg=cfg,
                               capabilities={"arithmetic": 0.75, "knowledge": 0.25})
    s = led.summary(cfg)
    assert s["rollout.ledger.unsolved"] == pytest.approx(0.2) and s["rollout.ledger.hard"] == pytest.approx(0.2)


def test_curriculum_rests_a_prompt_for_cooldown_steps() -> None:
    """A tier of one prompt no longer fills its share with that prompt every step: drawn at step s, it rests
    until s + cooldown while the capability has enough others (0: drawn every step, as before)."""
    def draws(cooldown: int) -> list[int]:
        cfg = CurriculumConfig(start={"medium": 0.5, "hard": 0.5}, end={"medium": 0.5, "hard": 0.5},
                               cooldown=cooldown)
        led = Ledger()
        led.add("m0", "arithmetic")
        led.update("m0", 2, 4, -1, cfg)  # ema .5: the only medium prompt
        for i in range(12):
            led.add(f"h{i}", "arithmetic")
            led.update(f"h{i}", 0, 2, -1, cfg)  # hard
        steps = []
        for step in range(8):
            picks = led.sample(2, np.random.default_rng(step), progress=0.0, cfg=cfg, step=step)
            assert len(set(picks)) == 2
            for p in picks:
                led.update(p, 1 if p == "m0" else 0, 2, step, cfg)
            steps += [step] if "m0" in picks else []
        return steps

    assert draws(0) == list(range(8))
    assert draws(3) == [0, 3, 6]


def test_curriculum_shifts_toward_hard() -> None:
    cfg = CurriculumConfig(start={"medium": 1.0}, end={"hard": 1.0})
    led = Ledger()
    for i in range(20):
        led.add(f"m{i}", "arithmetic")
        led.update(f"m{i}", 2, 4, 0, cfg)  # ema .5: medium
        led.add(f"h{i}", "arithmetic")
        led.update(f"h{i}", 1, 8, 0, cfg)  # ema .125: hard
    rng = np.random.default_rng(1)
    early = led.sample(10, rng, progress=0.0, cfg=cfg)
    late = led.sample(10, rng, progress=1.0, cfg=cfg)
    assert all(p.startswith("m") for p in early) and all(p.startswith("h") for p in late)


def test_ledger_roundtrip(tmp_path) -> None:
    cfg = CurriculumConfig()
    led = Ledger()
    led.add("x", "arithmetic", judge_pass=0.25, kept=True)
    led.update("x", 1, 4, 3, cfg)
    back = Ledger.read(led.write(tmp_path / "ledger.jsonl"))
    assert back.state_dict() == led.state_dict()
    other = Ledger()
    other.load_state_dict(led.state_dict())
    assert other.entries["x"].extra == {"judge_pass": 0.25, "kept": True}


def test_dpo_loss_by_hand() -> None:
    pol_c, pol_r = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -4.0])
    ref_c, ref_r = torch.tensor([-3.5, -4.5]), torch.tensor([-3.5, -4.5])
    # pair 0: beta*((-3+3.5) - (-4+3.5)) = .1*1 = .1; pair 1: .1*((-.5) - (.5)) = -.1
    loss, rc, _rr = dpo_loss(pol_c, pol_r, ref_c, ref_r, beta=0.1)
    want = (-math.log(1 / (1 + math.exp(-0.1))) - math.log(1 / (1 + math.exp(0.1)))) / 2
    assert float(loss) == pytest.approx(want, abs=1e-6)
    torch.testing.assert_close(rc, torch.tensor([0.05, -0.05]))


@pytest.fixture(scope="module")
def model() -> Llama4:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, hidden_size=64, intermediate_size=96, intermediate_size_mlp=128,
                      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                      num_experts_per_tok=1, attention_chunk_size=8, no_rope_layer_interval=2, floor_scale=4,
                      initializer_range=0.1, eos_token_id=[5], pad_token_id=12, bos_token_id=0)
    return Llama4(cfg)


@pytest.mark.parametrize("sampler", [sample, sample_engine], ids=["static", "engine"])
def test_sampler_and_trainer_logprobs_agree(model: Llama4, sampler) -> None:
    """The rollout's log-probs equal the trainer's forward on prompt+completion (fp32, 1e-5), across chunk
    boundaries (prompts + completions > chunk 8), several prompt lengths, temperature 0.7 and MoE routing;
    the stop token is part of the completion when it fires. Both samplers (static KV cache and herd's
    continuous-batching engine) keep this contract."""
    g = torch.Generator().manual_seed(0)
    prompts = [[0] + torch.randint(13, 64, (n,), generator=g).tolist() for n in (3, 9, 5, 14)] * 2
    model.train()  # the sampler switches to eval() itself and restores the mode
    outs = sampler(model, prompts, temperature=0.7, max_new_tokens=12, stop=[5], seed=3)
    assert model.training
    assert [len(o.tokens) for o in outs] == [len(o.logprobs) for o in outs]
    for p, o in zip(prompts, outs, strict=True):
        if o.stopped:
            assert o.tokens[-1] == 5 and 5 not in o.tokens[:-1]
        ids = torch.tensor([p + o.tokens])
        with torch.no_grad():
            lp = token_logprobs(model, ids, temperature=0.7)[0, len(p) - 1:]
        torch.testing.assert_close(lp, torch.tensor(o.logprobs), rtol=0, atol=1e-5)
    # the same seed and prompts give the same samples (resume reproducibility)
    again = sampler(model, prompts, temperature=0.7, max_new_tokens=12, stop=[5], seed=3)
    assert [o.tokens for o in again] == [o.tokens for o in outs]
    assert any(o.stopped for o in outs) and any(not o.stopped for o in outs)  # both endings were exercised


@pytest.mark.parametrize("sampler", [sample, sample_engine], ids=["static", "engine"])
def test_grpo_objective_reports_zero_gap_on_its_own_samples(model: Llama4, sampler) -> None:
    prompt = [0, 20, 21, 22]
    outs = sampler(model, [prompt] * 2, temperature=1.0, max_new_tokens=6, stop=[5], seed=1)
    L = max(len(prompt) + len(o.tokens) for o in outs)
    ids = torch.full((2, L), 12)
    mask, adv, slp = torch.zeros(2, L), torch.zeros(2, L), torch.zeros(2, L)
    for b, o in enumerate(outs):
        n = len(prompt) + len(o.tokens)
        ids[b, :n] = torch.tensor(prompt + o.tokens)
        mask[b, len(prompt):n] = 1
        adv[b, len(prompt):n] = 1.0 if b == 0 else -1.0
        slp[b, len(prompt):n] = torch.tensor(o.logprobs)
    batch = Batch.from_rows(ids, mask, {"advantages": adv, "sampler_logp": slp})
    model.train()
    out = GRPOObjective(temperature=1.0, clip_low=0.2, clip_high=0.28)(model, batch)
    assert out.metrics["rollout.logp_gap.max"] < 1e-5
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.zero_grad()


def test_dpo_objective_starts_at_log2(model: Llama4) -> None:
    """At the reference itself every margin is 0 and the loss is log 2."""
    ids = torch.tensor([[0, 20, 21, 30, 31, 5], [0, 20, 21, 40, 5, 12]])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 0]]).float()
    b = Batch.from_rows(ids, mask)
    with torch.no_grad():
        from herd.posttrain.dpo import sequence_logps
        ref = sequence_logps(model(b.x).logits, b.y, b.mask)
    b.extras["ref_logp"] = ref
    out = DPOObjective(beta=0.1)(model, b)
    assert out.metrics["dpo_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert out.metrics["margin"] == pytest.approx(0.0, abs=1e-6)


def test_arithmetic_format_is_the_worked_answer() -> None:
    """The format bonus goes to a worked answer (expression, its result, the same number as the answer), never to
    a bare guess: the tiny student's RL collapsed into "9 = 5. The answer is 5." under 'The answer is N.' alone."""
    from herd.posttrain.rewards import Prompt, format_ok, reward

    p = Prompt("a", [], "15", "arithmetic")
    assert reward(p, "12 + 3 = 15. The answer is 15.", stopped=True, format_weight=0.1) == (1.1, 1.0)
    assert reward(p, "20 + 30 - 35 = 15. The answer is 15.", stopped=True, format_weight=0.1) == (1.1, 1.0)
    assert reward(p, "12 + 3 = 16. The answer is 16.", stopped=True, format_weight=0.1) == (0.1, 0.0)
    assert reward(p, "12 + 3 = 15. The answer is 15.", stopped=False, format_weight=0.1) == (1.0, 1.0)
    for guess in ("9 = 15. The answer is 15.", "The answer is 15.", "12 + 3 = 14. The answer is 15.", "15"):
        assert not format_ok(p, guess, stopped=True), guess
    assert format_ok(Prompt("k", [], "Paris", "knowledge"), "Paris", stopped=True)
    # with the question at hand, the operands must be its numbers in order: the bonus rewards copying them
    q = Prompt("g", [{"role": "system", "content": "Reply in 2 lines."}, {"role": "user", "content":
               "Theo has 26 stickers. Theo gets 47 more. How many stickers does Theo have now?"}], "73", "arithmetic")
    assert reward(q, "26 + 47 = 73. The answer is 73.", stopped=True, format_weight=0.1) == (1.1, 1.0)
    assert reward(q, "26 + 47 = 72. The answer is 72.", stopped=True, format_weight=0.1) == (0.1, 0.0)
    assert reward(q, "19 + 54 = 73. The answer is 73.", stopped=True, format_weight=0.1) == (1.0, 1.0)
    # requiring the work, a right number on made-up operands is a guess and earns nothing
    assert reward(q, "19 + 54 = 73. The answer is 73.", stopped=True, format_weight=0.1, require_work=True) == (0, 0)
    assert reward(q, "26 + 47 = 73. The answer is 73.", stopped=True, format_weight=0.1, require_work=True) == \
        (1.1, 1.0)
    assert reward(q, "26 + 47 = 73. The answer is 73.", stopped=False, format_weight=0.1, require_work=True) == \
        (1.0, 1.0)  # unfinished (no stop token): solved, no format bonus
    for made_up in ("19 + 28 = 47. The answer is 47.", "47 + 26 = 73. The answer is 73.",
                    "26 + 47 + 2 = 75. The answer is 75.", "19 + 54 = 60 + 13 = 73. The answer is 73."):
        assert not format_ok(q, made_up, stopped=True), made_up
    # the stepped answers the training data teaches (herd.data.synthetic.arithmetic.stepped) are worked answers
    assert reward(q, "26 + 47 = 60 + 13 = 73. The answer is 73.", stopped=True, format_weight=0.1,
                  require_work=True) == (1.1, 1.0)
    assert not format_ok(q, "26 + 47 = 60 + 13 = 73 = 73. The answer is 73.", stopped=True)  # a step is an expression


def test_format_bonus_only_for_correct_answers_leaves_wrong_groups_to_the_filter() -> None:
    """With format_needs_correct, a group of wrong answers that differ only in format has zero reward variance (the
    filter drops it); without, its 0.1 vs 0 becomes advantages of +-0.97 after the group's std, as big as a correct
    answer's would be, on well-formatted wrong results."""
    from herd.posttrain.rewards import Prompt, reward

    q = Prompt("g", [{"role": "user", "content":
               "Theo has 26 stickers. Theo gets 47 more. How many stickers does Theo have now?"}], "73", "arithmetic")
    answers = ["26 + 47 = 60 + 13 = 83. The answer is 83.", "26 + 47 = 74. The answer is 74.",
               "The answer is 70.", "20 + 40 = 60. The answer is 60."]  # wrong: two worked, two not
    kw = {"stopped": True, "format_weight": 0.1, "require_work": True}
    loose = torch.tensor([[reward(q, a, **kw)[0] for a in answers]])
    strict = torch.tensor([[reward(q, a, **kw, format_needs_correct=True)[0] for a in answers]])
    assert loose.tolist() == [[pytest.approx(0.1), pytest.approx(0.1), 0.0, 0.0]] and not zero_variance(loose).item()
    assert group_advantages(loose)[0, 0].item() == pytest.approx(0.05 / (0.1 / math.sqrt(3) + 1e-4), rel=1e-4)
    assert strict.tolist() == [[0.0, 0.0, 0.0, 0.0]] and zero_variance(strict).item()
    # a correct answer still earns it: right and stopped 1.1, right and cut off 1.0
    assert reward(q, "26 + 47 = 73. The answer is 73.", **kw, format_needs_correct=True) == (1.1, 1.0)
    assert reward(q, "26 + 47 = 73. The answer is 73.", stopped=False, format_weight=0.1,
                  format_needs_correct=True) == (1.0, 1.0)


def test_onpolicy_pairs_choose_what_rl_rewards_never_a_lucky_guess():
    """The DPO pair of one prompt: chosen is solved the way RL's reward counts it (with require_work, the worked
    answer on the question's numbers), format first, then the shortest; rejected is the longest unsolved one."""
    from herd.posttrain.config import RLConfig
    from herd.posttrain.rewards import Prompt
    from herd.posttrain.stage import pick_pair

    q = Prompt("g", [{"role": "user", "content": "Jack shares 21 apples equally among 7 friends. How many apples "
                                                 "does each get?"}], "3", "arithmetic")
    guess, work, wrong = "45 / 15 = 3. The answer is 3.", "21 / 7 = 3. The answer is 3.", "21 / 7 = 4. The answer is 4."
    answers = [(guess, True, 12), (wrong, True, 12), (work, True, 12), ("21 / 7 = 4", False, 24)]
    assert pick_pair(q, answers, RLConfig()) == (work, "21 / 7 = 4")
    # a lucky guess is no solution when RL requires the work: no pair without a solved answer
    assert pick_pair(q, [(guess, True, 12), (wrong, True, 12)], RLConfig()) is None
    assert pick_pair(q, [(guess, True, 12), (wrong, True, 12)], RLConfig(require_work=False)) == (guess, wrong)
