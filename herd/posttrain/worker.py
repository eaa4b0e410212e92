"""What a Ray Train worker builds for a post-training job: the objective and the data source of kind sft / rl /
dpo. Called by herd.train.ray_trainer.train_worker (the one trainer); everything arrives as plain data in
`job.posttrain`:

    sft  {"rows": [{ids, mask}, ...]}                                 -> CrossEntropyObjective, RowSource
    rl   {"prompts": [Prompt dicts], "ledger": [Entry dicts], "tokenizer_json": str}
                                                                     -> GRPOObjective, RolloutSource
    dpo  {"pairs": [{chosen_ids, chosen_mask, rejected_*, ref_chosen, ref_rejected}, ...]}
                                                                     -> DPOObjective, PairSource
Each value may also be the URI of a jsonl file with those rows (fsspec, `job.storage_options`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from herd.posttrain.data import PairSource, RowSource, read_jsonl


def _rows(value: Any, so: dict[str, Any] | None) -> list[dict[str, Any]]:
    return read_jsonl(value, so) if isinstance(value, str) else list(value)


def build_objective_and_data(job: Any, cfg: Any, model: nn.Module, *, rank: int, world: int,
                             device: torch.device) -> tuple[Any, Any]:
    spec, so = job.posttrain, job.storage_options
    if job.kind == "sft":
        from herd.train.losses import CrossEntropyObjective

        rows = [(r["ids"], r["mask"]) for r in _rows(spec["rows"], so)]
        return CrossEntropyObjective(), RowSource(rows, cfg.micro_batch_size, rank=rank, world=world,
                                                  seed=cfg.seed)
    if job.kind == "dpo":
        from herd.posttrain.dpo import DPOObjective

        pairs = _rows(spec["pairs"], so)
        return DPOObjective(cfg.beta, cfg.nll_coef), PairSource(pairs, cfg.micro_batch_size, rank=rank,
                                                                world=world, seed=cfg.seed)
    if job.kind == "rl":
        from tokenizers import Tokenizer

        from herd.posttrain.grpo import GRPOObjective
        from herd.posttrain.ledger import Ledger
        from herd.posttrain.rewards import Prompt
        from herd.posttrain.rl_source import RolloutSource

        prompts = [Prompt(**p) for p in _rows(spec["prompts"], so)]
        ledger = Ledger()
        ledger.load_state_dict({"entries": _rows(spec["ledger"], so)})
        tok = Tokenizer.from_str(spec["tokenizer_json"])
        model.to(device)  # the sampler runs the raw model before the trainer wraps it
        from herd.train.loop import resolve_precision

        src = RolloutSource(model, prompts, ledger, tok, cfg, rank=rank, world=world,
                            bf16=resolve_precision(cfg.precision, device) == "bf16")
        return GRPOObjective(cfg.temperature, cfg.clip_low, cfg.clip_high, cfg.kl_coef), src
    raise ValueError(f"kind {job.kind!r} is not a post-training kind (sft, rl, dpo)")


__all__ = ["build_objective_and_data"]
