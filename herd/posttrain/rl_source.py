"""The RL data source: each trainer step's micro-batches are rollouts of the current policy, graded, filtered and
turned into rows with per-token advantages. The trainer sees an ordinary resumable data source.

    src = RolloutSource(model, prompts, ledger, tok, cfg, rank=0, world=1)
    for rows in src: ...        # grad_accum micro-batches per rollout batch; rows carry advantages, sampler_logp

Per rollout batch (one optimizer step):
1. Curriculum: draw prompts from the ledger by capability share and tier mix at this step's progress (the same
   draw on every rank from a seed of (seed, step, round); rank r takes every world-th prompt).
2. Roll out `group_size` completions per prompt with herd's KV-cache sampler at `temperature`, each with a
   system instruction drawn from the pool (or none); the stop token ends and is part of the completion.
3. Reward = correctness (check_answer / exact match / user callable) + format bonus; group-relative advantages.
4. The ledger records every group (all ranks exchange their groups' outcomes, so ledgers stay identical).
5. Adaptive filtering: zero-variance groups are dropped and refilled with new prompts, at most
   `max_refill_rounds` extra rounds (verl's max_num_gen_batches); the batch trains on what it has then.
6. Truncated completions (no stop token within max_new_tokens) keep their reward in the group statistics but
   are masked out of the loss (DAPO overlong filtering).
State (the checkpoint): steps done, the ledger and the unconsumed micro-batches of the current rollout batch;
the sampler's seeds derive from (seed, step, round, rank), so a resumed run draws exactly the same rollouts.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from herd.data.tokenizer import EOT_ID
from herd.posttrain.config import RLConfig
from herd.posttrain.data import encode_prompt, pad_rows
from herd.posttrain.grpo import group_advantages, zero_variance
from herd.posttrain.ledger import Ledger
from herd.posttrain.rewards import Prompt, format_ok, reward
from herd.posttrain.rollout import sample, sample_engine


def _gather(obj: Any, world: int) -> list[Any]:
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


class RolloutSource:
    def __init__(self, model: nn.Module, prompts: list[Prompt], ledger: Ledger, tok: Any, cfg: RLConfig, *,
                 rank: int, world: int, bf16: bool = False) -> None:
        self.model, self.tok, self.cfg, self.rank, self.world = model, tok, cfg, rank, world
        # sample under the trainer's autocast, so both sides compute the same (bf16) log-probs; the remaining
        # gap (different matmul shapes round differently) is what `rollout.logp_gap.*` reports
        self.bf16 = bf16
        self.prompts = {p.prompt_id: p for p in prompts}
        # the ledger may also hold the SFT judge's rows: the RL pool is the prompts this step was given
        ledger.entries = {k: v for k, v in ledger.entries.items() if k in self.prompts}
        missing = [p.prompt_id for p in prompts if p.prompt_id not in ledger.entries]
        for pid in missing:  # prompts the judge never saw start unseen
            ledger.add(pid, self.prompts[pid].capability)
        self.ledger = ledger
        self.step = 0  # rollout batches produced
        self.buffer: list[dict[str, Any]] = []  # micro-batches of the current rollout batch, not yet trained
        # KL reference: the policy as it starts (the parent), frozen; only built when the KL term is on
        self.ref = copy.deepcopy(model).eval().requires_grad_(False) if cfg.kl_coef > 0 else None

    # ---- one rollout batch -------------------------------------------------------------------------------
    def _render(self, p: Prompt, rng: np.random.Generator) -> list[int]:
        msgs = list(p.messages)
        pool = [s for s in self.cfg.system_prompts if s]
        if pool and rng.random() < self.cfg.system_prompt_prob and msgs and msgs[0]["role"] != "system":
            msgs = [{"role": "system", "content": pool[int(rng.integers(len(pool)))]}] + msgs
        return encode_prompt(self.tok, msgs)

    def _groups(self, pids: list[str], rnd: int) -> list[dict[str, Any]]:
        cfg, G = self.cfg, self.cfg.group_size
        rng = np.random.default_rng([cfg.seed, self.step, rnd, self.rank, 1])
        prompt_ids = [self._render(self.prompts[pid], rng) for pid in pids for _ in range(G)]
        if not prompt_ids:
            return []
        seed = int(np.random.default_rng([cfg.seed, self.step, rnd, self.rank, 2]).integers(2**62))
        device = next(self.model.parameters()).device
        sampler = sample_engine if cfg.sampler == "engine" else sample
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16):
            outs = sampler(self.model, prompt_ids, temperature=cfg.temperature,
                           max_new_tokens=cfg.max_new_tokens, stop=[EOT_ID], seed=seed)
        groups = []
        for i, pid in enumerate(pids):
            p, members = self.prompts[pid], []
            for j in range(G):
                o, ids = outs[i * G + j], prompt_ids[i * G + j]
                text = self.tok.decode([t for t in o.tokens if t != EOT_ID], skip_special_tokens=True)
                r, correct = reward(p, text, stopped=o.stopped, format_weight=cfg.format_reward,
                                    require_work=cfg.require_work, format_needs_correct=cfg.format_needs_correct)
                members.append({"prompt": ids, "tokens": o.tokens, "logprobs": o.logprobs, "stopped": o.stopped,
                                "reward": r, "correct": correct, "format": format_ok(p, text, o.stopped)})
            groups.append({"prompt_id": pid, "capability": p.capability, "members": members})
        return groups

    def _rollout_batch(self) -> list[dict[str, Any]]:
        cfg = self.cfg
        progress = self.step / max(cfg.steps - 1, 1)
        kept: list[dict[str, Any]] = []
        seen_members: list[dict[str, Any]] = []  # every rollout of the batch, kept or filtered (the metrics)
        seen = dropped = rounds = 0
        caps: dict[str, list[float]] = {}
        fmts: dict[str, list[bool]] = {}
        t0 = time.perf_counter()
        for rnd in range(1 + (cfg.max_refill_rounds if cfg.filter_zero_variance else 0)):
            need = cfg.prompts_per_step - len(kept)
            if max(_gather(need, self.world)) <= 0:
                break
            rng = np.random.default_rng([cfg.seed, self.step, rnd])
            per_rank = math.ceil(cfg.prompts_per_step * cfg.oversample)
            draw = self.ledger.sample(per_rank * self.world, rng, progress=progress, cfg=cfg.tiers,
                                      capabilities=cfg.capabilities, curriculum=cfg.curriculum, step=self.step)
            draw = [draw[i] for i in rng.permutation(len(draw))]  # the draw is grouped by capability: mix it
            mine = draw[self.rank::self.world][:math.ceil(max(need, 0) * cfg.oversample)]
            groups = self._groups(mine, rnd)
            rounds += 1
            outcome = [(g["prompt_id"], int(sum(m["correct"] >= 0.5 for m in g["members"])), len(g["members"]))
                       for g in groups]
            for rank_outcome in _gather(outcome, self.world):  # every rank applies every rank's groups, in order
                for pid, succ, att in rank_outcome:
                    self.ledger.update(pid, succ, att, self.step, cfg.tiers)
            for g in groups:
                seen += 1
                seen_members += g["members"]
                r = torch.tensor([[m["reward"] for m in g["members"]]])
                caps.setdefault(g["capability"], []).extend(m["correct"] for m in g["members"])
                fmts.setdefault(g["capability"], []).extend(m["format"] for m in g["members"])
                if cfg.filter_zero_variance and bool(zero_variance(r)[0]):
                    dropped += 1
                    continue
                g["adv"] = group_advantages(r, cfg.scale_rewards)[0].tolist()
                kept.append(g)
        every = seen_members
        # MLflow's run page draws named sections (the key before its last "/") ahead of the ungrouped "Model
        # metrics" and sorts charts by key: only the reward, RL's headline, keeps a "/" and leads the page; the
        # diagnostics are dotted, so they follow loss and lr (tests/ui/test_ui_charts.py)
        stats = {"rollout.groups_kept": float(len(kept)), "rollout.zero_var_frac": dropped / max(seen, 1),
                 "rollout.gen_rounds": float(rounds), "rollout.groups_seen": float(seen),
                 "rollout/reward": float(np.mean([m["reward"] for m in every])) if every else 0.0,
                 "rollout.mean_len": float(np.mean([len(m["tokens"]) for m in every])) if every else 0.0,
                 "rollout.truncated": float(np.mean([not m["stopped"] for m in every])) if every else 0.0,
                 "rollout.seconds": time.perf_counter() - t0}  # generation + grading: the step's share of it
        for cap, vals in caps.items():
            stats[f"rollout.pass_rate.{cap}"] = float(np.mean(vals))
            # arithmetic: worked answers whose operands are the question's numbers (copying comes before the sums)
            stats[f"rollout.format_rate.{cap}"] = float(np.mean(fmts[cap]))
        stats.update(self.ledger.summary(cfg.tiers))
        self.step += 1
        return self._micro_batches(kept, stats)

    def _micro_batches(self, kept: list[dict[str, Any]], stats: dict[str, float]) -> list[dict[str, Any]]:
        """Split the kept groups' sequences into grad_accum micro-batches of plain lists (checkpointable)."""
        seqs = []
        for g in kept:
            for m, a in zip(g["members"], g["adv"], strict=True):
                n_p, n_c = len(m["prompt"]), len(m["tokens"])
                train = 1.0 if m["stopped"] else 0.0  # truncated: in the group stats, not in the loss
                seqs.append({"ids": m["prompt"] + m["tokens"], "mask": [0.0] * n_p + [train] * n_c,
                             "adv": [0.0] * n_p + [a] * n_c, "logp": [0.0] * n_p + m["logprobs"]})
        k = self.cfg.grad_accum
        if not seqs:  # nothing survived the filter: zero-mask rows keep every rank's step in lockstep
            seqs = [{"ids": [0, EOT_ID], "mask": [0.0, 0.0], "adv": [0.0, 0.0], "logp": [0.0, 0.0]}]
        parts = [seqs[i::k] or seqs[:1] for i in range(k)]
        return [{"seqs": p, "stats": stats} for p in parts]

    def _rows(self, mb: dict[str, Any]) -> dict[str, torch.Tensor]:
        seqs = mb["seqs"]
        rows = pad_rows([(s["ids"], s["mask"]) for s in seqs])
        L = rows["input_ids"].shape[1]
        for key, name in (("adv", "advantages"), ("logp", "sampler_logp")):
            t = torch.zeros(len(seqs), L)
            for b, s in enumerate(seqs):
                t[b, : len(s[key])] = torch.tensor(s[key])
            rows[name] = t
        if self.ref is not None:
            from herd.posttrain.rollout import token_logprobs

            with torch.no_grad():
                ref = token_logprobs(self.ref, rows["input_ids"], self.cfg.temperature)
            rows["ref_logp"] = torch.cat([torch.zeros(len(seqs), 1), ref], 1)  # aligned with ids like the mask
        for k, v in mb["stats"].items():
            rows[f"stat/{k}"] = torch.tensor(v)
        return rows

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            if not self.buffer:
                self.buffer = self._rollout_batch()
            yield self._rows(self.buffer.pop(0))

    # ---- state -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "ledger": self.ledger.state_dict(), "buffer": copy.deepcopy(self.buffer)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.ledger.load_state_dict(state["ledger"])
        self.buffer = copy.deepcopy(state["buffer"])


__all__ = ["RolloutSource"]
