"""The training loop on one process: loss falls; a resumed run equals an uninterrupted one exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from herd.data.reader import ShardReader
from herd.train.checkpoint import CheckpointError
from herd.train.config import PretrainConfig
from herd.train.loop import DirectoryReporter, Trainer
from herd.train.losses import CrossEntropyObjective


def _cfg(**kw) -> PretrainConfig:
    base = {"steps": 24, "micro_batch_size": 8, "grad_accum": 2, "log_every": 4, "eval_batches": 2,
            "precision": "fp32", "schedule": {"warmup_steps": 4}, "checkpoint": {"every_steps": 8},
            "optim": {"lr": 1e-2}}
    base.update(kw)
    return PretrainConfig(**base)


def _trainer(cfg: PretrainConfig, shards: dict[str, Path], tiny_lm, hash_: str = "h") -> Trainer:
    torch.manual_seed(cfg.seed)
    reader = ShardReader(str(shards["train"]), cfg.micro_batch_size, seed=cfg.seed)
    val = lambda: ShardReader(str(shards["val"]), 8, shuffle=False, loop=False)
    return Trainer(tiny_lm(), CrossEntropyObjective(), reader, cfg, device=torch.device("cpu"),
                   config_hash=hash_, eval_data=val, flops_per_token=1000.0)


def test_loss_falls_and_metrics(shards, tiny_lm, tmp_path):
    cfg = _cfg()
    rep = DirectoryReporter(tmp_path)
    _trainer(cfg, shards, tiny_lm).fit(rep)
    first, last = rep.history[0], rep.history[-1]
    assert [int(m["step"]) for m in rep.history] == [4, 8, 12, 16, 20, 24]
    assert last["loss"] < 0.6 * first["loss"]
    assert last["eval/loss"] < 0.6 * rep.history[1]["eval/loss"] + 1.0
    for key in ("lr", "grad_norm", "tokens_per_s", "mfu", "tokens"):
        assert key in last and last[key] > 0
    assert last["tokens"] == 24 * 2 * 8 * 32  # steps x accum x batch x seq_len
    assert rep.latest_checkpoint().name == "step_00000024"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_equals_uninterrupted(shards, tiny_lm, tmp_path, precision):
    cfg = _cfg(precision=precision)
    full = _trainer(cfg, shards, tiny_lm)
    full.fit(DirectoryReporter(tmp_path / "full"))

    # interrupted: stop after the step-8 checkpoint, then a fresh trainer restores and finishes
    part = _trainer(cfg, shards, tiny_lm)
    rep = DirectoryReporter(tmp_path / "part")
    while part.step < 10:
        part.train_step()
        if part.step == 8:
            part.write_checkpoint(rep.root / "step_00000008")
    resumed = _trainer(cfg, shards, tiny_lm)
    torch.manual_seed(1234)  # a different RNG state than the original had: restore must overwrite it
    assert resumed.restore(rep.root / "step_00000008") == 8
    resumed.fit(DirectoryReporter(tmp_path / "resumed"))
    for (k, a), b in zip(full.raw_model.state_dict().items(), resumed.raw_model.state_dict().values()):
        assert torch.equal(a, b), k
    assert resumed.tokens == full.tokens


def test_partial_or_foreign_checkpoints_are_refused(shards, tiny_lm, tmp_path):
    cfg = _cfg(steps=8)
    t = _trainer(cfg, shards, tiny_lm)
    t.fit(DirectoryReporter(tmp_path))
    ck = tmp_path / "step_00000008"
    with pytest.raises(CheckpointError, match="another configuration"):
        _trainer(cfg, shards, tiny_lm, hash_="other").restore(ck)
    (ck / "rank0.pt").unlink()
    with pytest.raises(CheckpointError, match="partial"):
        _trainer(cfg, shards, tiny_lm).restore(ck)
    (ck / "COMPLETE.json").unlink()
    with pytest.raises(CheckpointError, match="orphaned"):
        _trainer(cfg, shards, tiny_lm).restore(ck)
