"""SFT, RL and DPO as objectives on herd's one Trainer (in-process, no Ray): data sources, the judge and its
ledger, the RL rollout source (filter, curriculum, ledger updates) and RL's exact resume from a checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from herd.data.config import TokenizerConfig
from herd.data.synthetic import arithmetic
from herd.data.tokenizer import EOT_ID, train_tokenizer
from herd.model import Llama4, ModelConfig
from herd.posttrain.config import DPOConfig, JudgeConfig, RLConfig, SFTConfig
from herd.posttrain.data import Example, PairSource, RowSource, classify, encode_sft, pad_rows, stable_id
from herd.posttrain.dpo import DPOObjective
from herd.posttrain.grpo import GRPOObjective
from herd.posttrain.judge import judge_examples, select_hard
from herd.posttrain.ledger import Ledger
from herd.posttrain.rewards import Prompt
from herd.posttrain.rl_source import RolloutSource
from herd.train.loop import DirectoryReporter, Trainer
from herd.train.losses import CrossEntropyObjective


@pytest.fixture(scope="module")
def tok():
    rng = np.random.default_rng(0)
    probs = arithmetic.make_problems(300, rng)
    texts = [arithmetic.worked_example(p) for p in probs] + ["Paris. London. Hello! You are welcome."] * 20
    return train_tokenizer(texts, TokenizerConfig(vocab_size=512, max_train_chars=200_000))


def _model(seed: int = 0) -> Llama4:
    torch.manual_seed(seed)
    return Llama4(ModelConfig(vocab_size=512, hidden_size=64, intermediate_size=96, intermediate_size_mlp=128,
                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                              num_local_experts=2, attention_chunk_size=16, initializer_range=0.05))


def _chats(n: int) -> list[Example]:
    rng = np.random.default_rng(1)
    out = []
    for p in arithmetic.make_problems(n, rng):
        msgs = [{"role": "user", "content": p.question}, {"role": "assistant", "content": p.solution()}]
        cap, ans = classify(msgs)
        out.append(Example(stable_id("sft", msgs), msgs, cap, ans))
    small = [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hello! How can I help?"}]
    out.append(Example(stable_id("sft", small), small, *classify(small)))
    return out


def test_classify_and_assistant_only_mask(tok) -> None:
    ex = _chats(3)
    assert [e.capability for e in ex] == ["arithmetic"] * 3 + ["chat"]
    assert ex[0].answer == ex[0].reference.split()[-1].rstrip(".")
    ids, mask = encode_sft(tok, [ex[0].messages], 512)[0]
    trained = [t for t, m in zip(ids, mask, strict=True) if m]
    assert trained[-1] == EOT_ID  # the end-of-turn token is trained
    assert tok.decode(trained[:-1]).strip() == ex[0].reference  # and nothing of the user's turn is
    batch = pad_rows(encode_sft(tok, [e.messages for e in ex], 512))
    assert batch["input_ids"].shape[0] == 4 and batch["loss_mask"].sum() > 0


def test_judge_ranks_by_loss_when_it_solves_nothing(tok) -> None:
    """pass@k first; where it ties (a weak judge solves nothing) the reference loss ranks, never chance. The
    easiest share of each capability is dropped; a capability is never dropped whole."""
    ex = _chats(12)
    judged = judge_examples(_model(), tok, ex, JudgeConfig(k=2, max_new_tokens=4, batch_size=16))
    arith = [j for j in judged if j.capability == "arithmetic"]
    assert all(j.passes is not None and 0 <= j.passes <= 2 for j in arith)
    assert len({round(j.loss, 6) for j in judged}) == len(judged)  # every example gets its own loss
    assert [j.passes for j in judged if j.capability == "chat"] == [None]  # not verifiable: loss only
    from herd.posttrain.judge import Judgment

    none_solved = [Judgment(j.prompt_id, j.capability, 0, 2, j.loss) for j in judged]
    keep = select_hard(none_solved, 0.5)
    kept_arith = [j for j in none_solved if j.capability == "arithmetic" and j.prompt_id in keep]
    dropped_arith = [j for j in none_solved if j.capability == "arithmetic" and j.prompt_id not in keep]
    assert len(kept_arith) == 6 and min(j.loss for j in kept_arith) >= max(j.loss for j in dropped_arith)
    assert any(j.prompt_id in keep for j in none_solved if j.capability == "chat")
    # a solved example is easier than any unsolved one, whatever its loss
    mixed = [Judgment("a", "arithmetic", 2, 2, 9.0), Judgment("b", "arithmetic", 0, 2, 0.1)]
    assert select_hard(mixed, 0.5) == {"b"}


def test_judge_answers_end_at_their_first_newline(tok):
    """A base-model judge never says <|eot|> in the chat format: its answers end at the first newline (the next
    "Question:" it would go on with is neither paid for nor read as the answer)."""
    from herd.data.tokenizer import newline_ids
    from herd.posttrain.rollout import sample_engine

    nl = newline_ids(tok)
    assert set(tok.encode("7\n\nQuestion:").ids) & set(nl)
    assert all("\n" in tok.decode([i], skip_special_tokens=False) for i in nl)
    assert not set(tok.encode("12 + 30 = 42. The answer is 42.").ids) & set(nl)
    prompts = [tok.encode("Question: 3 + 4").ids] * 24
    outs = sample_engine(_model(), prompts, temperature=1.0, max_new_tokens=24, stop=[EOT_ID, *nl], seed=0,
                         logprobs=False)
    ended = [o for o in outs if o.stopped]
    assert ended and all(o.tokens[-1] in nl + [EOT_ID] for o in ended)
    assert all(t not in nl for o in outs for t in o.tokens[:-1])


def test_judge_threads_hold_for_the_judge_only() -> None:
    """The judge runs in the driver beside distillation's workers with `JudgeConfig.threads` torch threads and
    leaves the driver's setting as it was, also when judging fails; 0 leaves torch's setting."""
    from herd.posttrain.stage import torch_threads

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match="judge failed"), torch_threads(1):
            raise RuntimeError("judge failed")
        assert torch.get_num_threads() == 2
        with torch_threads(0):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def _rl_cfg(**kw: object) -> RLConfig:
    base: dict[str, object] = {
        "steps": 4, "log_every": 1, "prompts_per_step": 3, "group_size": 4, "max_new_tokens": 8, "grad_accum": 2,
        "max_refill_rounds": 2, "schedule": {"warmup_steps": 0}, "checkpoint": {"every_steps": 2},
        "capabilities": {"arithmetic": 1.0}, "precision": "fp32"}
    return RLConfig(**{**base, **kw})


def _prompts() -> list[Prompt]:
    # answers in {0, 1}: the random policy gets some right, so groups have variance to learn from
    return [Prompt(f"p{i}", [{"role": "user", "content": f"Say {i % 2}."}], str(i % 2), "arithmetic")
            for i in range(10)]


def _rl_trainer(tok, cfg: RLConfig, seed_model: int = 0) -> tuple[Trainer, RolloutSource]:
    model = _model(seed_model)
    led = Ledger()
    for p in _prompts():
        led.add(p.prompt_id, p.capability)
    src = RolloutSource(model, _prompts(), led, tok, cfg, rank=0, world=1)
    obj = GRPOObjective(cfg.temperature, cfg.clip_low, cfg.clip_high, cfg.kl_coef)
    return Trainer(model, obj, src, cfg, device=torch.device("cpu"), config_hash="rl-test"), src


def test_rl_rollouts_filter_and_ledger(tok) -> None:
    cfg = _rl_cfg(steps=2)
    trainer, src = _rl_trainer(tok, cfg)
    res = trainer.train_step()
    m = res["metrics"]
    assert m["rollout.gen_rounds"] >= 1 and 0 <= m["rollout.zero_var_frac"] <= 1
    assert m["rollout.logp_gap.max"] < 1e-4  # sampler and trainer agree on the same tokens
    attempted = [e for e in src.ledger.entries.values() if e.attempts]
    assert attempted and all(e.attempts % cfg.group_size == 0 for e in attempted)
    # every group seen is in the ledger; the kept ones number at most prompts_per_step
    assert sum(e.attempts for e in attempted) == m["rollout.groups_seen"] * cfg.group_size
    assert m["rollout.groups_kept"] <= cfg.prompts_per_step


def test_rl_oversampling_fills_the_batch_in_fewer_rounds(tok) -> None:
    """oversample=3 draws three times the missing prompts per round: more groups are seen (and ledgered) in the
    first round, every one that survives the filter is trained, and the static sampler gives the same structure."""
    base = _rl_cfg(steps=1, max_refill_rounds=0)
    _, one = _rl_trainer(tok, base)
    m1 = one._rollout_batch()[0]["stats"]
    _, three = _rl_trainer(tok, base.model_copy(update={"oversample": 3.0}))
    m3 = three._rollout_batch()[0]["stats"]
    assert m1["rollout.groups_seen"] == base.prompts_per_step
    assert m3["rollout.groups_seen"] == 3 * base.prompts_per_step
    assert sum(e.attempts for e in three.ledger.entries.values()) == 3 * base.prompts_per_step * base.group_size
    assert m3["rollout.groups_kept"] == pytest.approx(m3["rollout.groups_seen"] * (1 - m3["rollout.zero_var_frac"]))
    _, static = _rl_trainer(tok, base.model_copy(update={"sampler": "static"}))
    assert static._rollout_batch()[0]["stats"]["rollout.groups_seen"] == base.prompts_per_step


@pytest.mark.slow  # 8 RL steps with refills: ~10 s idle, minutes on a loaded box
def test_rl_resume_is_exact(tok, tmp_path) -> None:
    """4 steps straight == 2 steps, checkpoint, a fresh process state restored from it, 2 more steps: same
    weights and the same ledger (rollout seeds derive from the step; the ledger and buffer are checkpointed)."""
    cfg = _rl_cfg()
    straight, s_src = _rl_trainer(tok, cfg)
    straight.fit(DirectoryReporter(tmp_path / "a"))

    first, _ = _rl_trainer(tok, cfg.model_copy(update={"steps": 4}))
    rep = DirectoryReporter(tmp_path / "b")
    while first.step < 2:
        first.train_step()
    first.write_checkpoint(tmp_path / "b" / "step_2")
    resumed, r_src = _rl_trainer(tok, cfg, seed_model=123)  # different init: everything must come from the ckpt
    assert resumed.restore(tmp_path / "b" / "step_2") == 2
    resumed.fit(rep)
    for (k, a), b in zip(straight.raw_model.state_dict().items(), resumed.raw_model.state_dict().values(),
                         strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    assert json.dumps(s_src.ledger.state_dict(), sort_keys=True) == \
        json.dumps(r_src.ledger.state_dict(), sort_keys=True)


def test_sft_and_dpo_on_the_one_trainer(tok, tmp_path) -> None:
    ex = _chats(16)
    rows = encode_sft(tok, [e.messages for e in ex], 256)
    cfg = SFTConfig(steps=6, micro_batch_size=4, log_every=3, schedule={"warmup_steps": 1},
                    checkpoint={"every_steps": 6}, precision="fp32", optim={"lr": 3e-3})
    sft = Trainer(_model(), CrossEntropyObjective(), RowSource(rows, 4, rank=0, world=1, seed=0), cfg,
                  device=torch.device("cpu"), config_hash="sft")
    rep = DirectoryReporter(tmp_path / "sft")
    sft.fit(rep)
    assert rep.history[-1]["loss"] < rep.history[0]["loss"]

    from herd.posttrain.stage import dpo_rows

    pairs = [{"prompt": e.prompt, "chosen": e.reference, "rejected": e.reference.replace("answer", "reply") +
              " Also more words."} for e in ex[:8]]
    model = sft.raw_model
    prow = dpo_rows(model, tok, pairs, 256)
    dcfg = DPOConfig(steps=4, micro_batch_size=4, log_every=1, schedule={"warmup_steps": 0}, precision="fp32",
                     checkpoint={"every_steps": 4}, optim={"lr": 1e-3})
    dpo = Trainer(model, DPOObjective(dcfg.beta, dcfg.nll_coef), PairSource(prow, 4, rank=0, world=1, seed=0),
                  dcfg, device=torch.device("cpu"), config_hash="dpo")
    drep = DirectoryReporter(tmp_path / "dpo")
    dpo.fit(drep)
    assert drep.history[0]["dpo_loss"] == pytest.approx(np.log(2), abs=0.05)  # starts at the reference
    assert drep.history[-1]["margin"] > drep.history[0]["margin"]
    assert drep.history[-1]["accuracy"] >= 0.5
