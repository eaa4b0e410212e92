"""Driver-side work of the post-training steps, on plain paths and configs (the flows translate their context).

    stats = judge_sft(corpus, tasks, tok_dir, judge_dir, judge_digest, judge_cfg, sft_cfg, data_out, ledger_out)
    prompts, ledger = rl_inputs(tasks, ledger_path, rl_cfg)              # the RL pool + its seeded ledger
    pairs = onpolicy_pairs(model, tok, prompts, rl_cfg, n=128)            # DPO pairs from the RL policy
    rows = dpo_rows(parent, tok, pairs, max_len)                          # tokenized + cached reference log-probs
    metrics = measure(model_dir, parent_dir, tok_dir, tasks, n=200)       # paired vs parent on held-out items
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from herd.data.tokenizer import EOT_ID
from herd.posttrain.config import JudgeConfig, RLConfig, SFTConfig
from herd.posttrain.data import encode_prompt, encode_sft, pad_rows, sft_examples, write_jsonl
from herd.posttrain.ledger import Ledger
from herd.posttrain.rewards import Prompt, format_ok, reward


def load_tokenizer(tok_dir: str | Path) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(tok_dir) / "tokenizer.json"))


def _tasks(tasks_dir: str | Path, name: str) -> list[dict[str, Any]]:
    path = Path(tasks_dir) / f"{name}.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def rl_pool(tasks_dir: str | Path, cfg: RLConfig, storage_options: dict[str, Any] | None = None) -> list[Prompt]:
    """RL prompts: held-out arithmetic (rl_prompts), knowledge QA about training entities, user sources."""
    from herd.posttrain.sources import rl_user_prompts

    pool = [Prompt(f"rl-arith-{i}", [{"role": "user", "content": r["prompt"]}], str(r["answer"]), "arithmetic")
            for i, r in enumerate(_tasks(tasks_dir, "rl_prompts"))]
    pool += [Prompt(f"rl-know-{i}", [{"role": "user", "content": r["question"]}], str(r["answer"]), "knowledge")
             for i, r in enumerate(_tasks(tasks_dir, "knowledge_train_qa"))]
    for src in cfg.sources:
        pool += rl_user_prompts(src, storage_options)
    return pool


def judge_sft(corpus_dir: str | Path, tasks_dir: str | Path, tok_dir: str | Path, judge_dir: str | Path,
              judge_digest: str, judge: JudgeConfig, sft: SFTConfig, rl: RLConfig, data_out: str | Path,
              ledger_out: str | Path, storage_options: dict[str, Any] | None = None) -> dict[str, float]:
    """Judge every SFT example (and the RL pool), keep the hard ones, write rows.jsonl and the ledger."""
    with torch_threads(judge.threads):  # beside distill's workers (JudgeConfig.threads)
        return _judge_sft(corpus_dir, tasks_dir, tok_dir, judge_dir, judge_digest, judge, sft, rl, data_out,
                          ledger_out, storage_options)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to `n` (0: left alone) inside the block, restored after it."""
    prev = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def _judge_sft(corpus_dir: str | Path, tasks_dir: str | Path, tok_dir: str | Path, judge_dir: str | Path,
               judge_digest: str, judge: JudgeConfig, sft: SFTConfig, rl: RLConfig, data_out: str | Path,
               ledger_out: str | Path, storage_options: dict[str, Any] | None) -> dict[str, float]:
    from herd.model import load_hf
    from herd.posttrain.judge import judge_examples, judge_prompts, select_hard
    from herd.posttrain.sources import sft_user_examples

    t0 = time.perf_counter()
    tok, model = load_tokenizer(tok_dir), load_hf(str(judge_dir)).eval()
    examples = sft_examples(corpus_dir)
    for src in sft.sources:
        examples += sft_user_examples(src, storage_options)
    t1 = time.perf_counter()
    judged = judge_examples(model, tok, examples, judge)
    keep = select_hard(judged, sft.easy_fraction)
    pool = rl_pool(tasks_dir, rl, storage_options)
    t2 = time.perf_counter()
    rl_judged = judge_prompts(model, tok, pool, judge)
    t3 = time.perf_counter()
    ledger = Ledger()
    for j in judged:  # the SFT judgments: auditable, never sampled by RL (RL keeps its own pool)
        ledger.add(j.prompt_id, j.capability, pool="sft", judge=judge_digest, pass_rate=j.pass_rate,
                   loss=j.loss, kept=j.prompt_id in keep)
    for j in rl_judged:  # the RL pool starts with the judge's pass@k: attempts k, successes c
        e = ledger.add(j.prompt_id, j.capability, pool="rl", judge=judge_digest, pass_rate=j.pass_rate)
        ledger.update(j.prompt_id, int(j.passes or 0), j.k, -1, rl.tiers)
        e.last_step = -1
    ledger.write(ledger_out)
    kept = [e for e in examples if e.example_id in keep]
    rows = encode_sft(tok, [e.messages for e in kept], sft.max_seq_len + 1)
    write_jsonl(Path(data_out) / "rows.jsonl", [{"id": e.example_id, "capability": e.capability, "ids": i,
                                                 "mask": m} for e, (i, m) in zip(kept, rows, strict=True)])
    stats: dict[str, float] = {"judge/examples": len(examples), "judge/kept": len(kept),
                               "judge/kept_fraction": len(kept) / max(len(examples), 1),
                               "judge/rl_prompts": len(pool), "judge/seconds": time.perf_counter() - t0,
                               # where the time goes: loading, the SFT examples (loss + pass@k), the RL pool
                               "judge/seconds_load": t1 - t0, "judge/seconds_sft": t2 - t1,
                               "judge/seconds_rl_pool": t3 - t2}
    for cap in sorted({j.capability for j in judged}):
        js = [j for j in judged if j.capability == cap]
        rates = [j.pass_rate for j in js if j.pass_rate is not None]
        stats[f"judge/{cap}/n"] = len(js)
        stats[f"judge/{cap}/kept"] = sum(j.prompt_id in keep for j in js)
        if rates:
            stats[f"judge/{cap}/pass_rate"] = float(np.mean(rates))
    for cap in sorted({j.capability for j in rl_judged}):
        stats[f"judge/rl/{cap}/pass_rate"] = float(np.mean([j.pass_rate for j in rl_judged
                                                            if j.capability == cap]))
    return stats


def rl_inputs(tasks_dir: str | Path, ledger_path: str | Path, cfg: RLConfig,
              storage_options: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(prompts, ledger entries) as plain data for the RL job."""
    from dataclasses import asdict

    pool = rl_pool(tasks_dir, cfg, storage_options)
    return [asdict(p) for p in pool], Ledger.read(ledger_path).state_dict()["entries"]


def onpolicy_pairs(model: torch.nn.Module, tok: Any, prompts: list[Prompt], cfg: RLConfig, n: int,
                   seed: int = 0) -> list[dict[str, Any]]:
    """DPO pairs from the policy's own rollouts: per prompt, a correct answer (chosen) and an incorrect one
    (rejected); ties among the correct ones go to the one with the right format, then the shortest, and among
    the incorrect ones to the longest (the most wasteful mistake)."""
    from herd.posttrain.rollout import sample, sample_engine

    rng = np.random.default_rng(seed)
    pick = [prompts[i] for i in rng.choice(len(prompts), size=min(n, len(prompts)), replace=False)]
    G, pairs = cfg.group_size, []
    sampler = sample_engine if cfg.sampler == "engine" else sample
    for i in range(0, len(pick), 64):
        chunk = pick[i:i + 64]
        outs = sampler(model, [encode_prompt(tok, p.messages) for p in chunk for _ in range(G)],
                       temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, stop=[EOT_ID], seed=seed + i)
        for j, p in enumerate(chunk):
            answers = [(tok.decode([t for t in o.tokens if t != EOT_ID], skip_special_tokens=True), o.stopped,
                        len(o.tokens)) for o in outs[j * G:(j + 1) * G]]
            pair = pick_pair(p, answers, cfg)
            if pair is not None:
                pairs.append({"prompt": p.messages, "chosen": pair[0], "rejected": pair[1],
                              "kind": f"onpolicy-{p.capability}"})
    return pairs


def pick_pair(p: Prompt, answers: list[tuple[str, bool, int]], cfg: RLConfig) -> tuple[str, str] | None:
    """(chosen, rejected) among one prompt's sampled (text, stopped, n_tokens), or None without both kinds.
    Solved is what RL rewards (`reward`'s correctness, so with `require_work` a lucky arithmetic guess is not:
    choosing it over an answer that copied the question taught DPO to guess); ties among the solved go to the
    right format, then the shortest, and among the unsolved to the longest (the most wasteful mistake)."""
    cands = [(reward(p, text, stopped=stopped, format_weight=0.0, require_work=cfg.require_work)[1] >= 0.5,
              format_ok(p, text, stopped), n, text) for text, stopped, n in answers]
    good = sorted([c for c in cands if c[0]], key=lambda c: (not c[1], c[2]))
    bad = sorted([c for c in cands if not c[0]], key=lambda c: -c[2])
    return (good[0][3], bad[0][3]) if good and bad else None


@torch.no_grad()
def dpo_rows(ref: torch.nn.Module, tok: Any, pairs: list[dict[str, Any]], max_len: int,
             batch_size: int = 32) -> list[dict[str, Any]]:
    """Tokenized pairs with the reference's summed answer log-probs (computed once: the cache TRL's
    precompute_ref_log_probs keeps)."""
    from herd.posttrain.dpo import sequence_logps

    ref.eval()
    convs = []
    for p in pairs:
        convs += [p["prompt"] + [{"role": "assistant", "content": p["chosen"]}],
                  p["prompt"] + [{"role": "assistant", "content": p["rejected"]}]]
    enc = encode_sft(tok, convs, max_len)
    logps: list[float] = []
    for i in range(0, len(enc), batch_size):
        b = pad_rows(enc[i:i + batch_size])
        ids, mask = b["input_ids"], b["loss_mask"]
        logps += sequence_logps(ref(ids[:, :-1]).logits, ids[:, 1:], mask[:, 1:]).tolist()
    return [{"kind": p.get("kind", ""), "chosen_ids": enc[2 * k][0], "chosen_mask": enc[2 * k][1],
             "rejected_ids": enc[2 * k + 1][0], "rejected_mask": enc[2 * k + 1][1],
             "ref_chosen": logps[2 * k], "ref_rejected": logps[2 * k + 1]} for k, p in enumerate(pairs)]


def measure(model_dir: str | Path, parent_dir: str | Path, tok_dir: str | Path, tasks_dir: str | Path,
            n: int) -> tuple[dict[str, float], dict[str, list[int]]]:
    """Paired held-out comparison with the parent; also returns the per-item 0/1 outcomes (for the report)."""
    from herd.model import load_hf
    from herd.posttrain.measure import compare, eval_prompts, score_items

    tok = load_tokenizer(tok_dir)
    suites = {"arithmetic": eval_prompts(_tasks(tasks_dir, "arithmetic_eval"), "arithmetic", n),
              "knowledge": eval_prompts(_tasks(tasks_dir, "knowledge_eval"), "knowledge", n)}
    child, parent = load_hf(str(model_dir)), load_hf(str(parent_dir))
    metrics: dict[str, float] = {}
    items: dict[str, list[int]] = {}
    for name, ps in suites.items():
        if not ps:
            continue
        c, p = score_items(child, tok, ps), score_items(parent, tok, ps)
        metrics.update(compare(c, p, f"vs_parent.{name}"))
        items[name], items[f"{name}_parent"] = c, p
    return metrics, items


__all__ = ["dpo_rows", "judge_sft", "load_tokenizer", "measure", "onpolicy_pairs", "pick_pair", "rl_inputs",
           "rl_pool"]
