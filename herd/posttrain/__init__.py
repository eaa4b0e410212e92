"""herd.posttrain: Llama 4's post-training on herd's one trainer: SFT on hard prompts, online RL, light DPO.

    config.py     the `posttrain` recipe section (judge, sft, rl, dpo)
    judge.py      difficulty of SFT examples: pass@k of the judge, ties broken by the reference answer's loss
    ledger.py     the difficulty ledger: per prompt attempts, successes, EMA pass rate, tier; curriculum sampler
    rewards.py    verifiable rewards (arithmetic check_answer, knowledge exact match, format, user callables)
    rollout.py    sampling with per-token log-probs and the stop token (adapter over herd.model.generate)
    grpo.py       group-relative advantages, zero-variance filter, the token-level GRPO objective
    dpo.py        the sigmoid DPO loss/objective with cached reference log-probs and optional NLL
    data.py       examples (chats, prompts, pairs) -> padded rows; resumable sources for the trainer
    sources.py    users' own jsonl / parquet (local or s3://) SFT chats, RL prompts, preference pairs
    worker.py     what a Ray Train worker builds for kind sft / rl / dpo (objective + data source)
    measure.py    held-out arithmetic / knowledge accuracy and the paired (McNemar) comparison with the parent

Nothing here imports torch at package import, so recipes load without it.
"""
