"""DDP and FSDP2 (applied from outside the model) on 2 gloo processes: identical training, exact resume."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from train_helpers import TinyLM

from herd.data.reader import ShardReader
from herd.train import parallel
from herd.train.config import PretrainConfig
from herd.train.loop import DirectoryReporter, Trainer
from herd.train.losses import CrossEntropyObjective

pytestmark = pytest.mark.slow  # two process groups of 2 gloo ranks each: ~20-30 s


def _trainer(strategy: str, shards: str, rank: int, world: int) -> Trainer:
    cfg = PretrainConfig(steps=12, micro_batch_size=8, grad_accum=2, log_every=4, eval_batches=0,
                         precision="fp32", schedule={"warmup_steps": 2}, checkpoint={"every_steps": 6},
                         optim={"lr": 1e-2}, workers={"strategy": strategy})
    torch.manual_seed(0)
    reader = ShardReader(shards, 8, rank=rank, world_size=world)
    return Trainer(TinyLM(), CrossEntropyObjective(), reader, cfg, device=torch.device("cpu"),
                   config_hash="h", strategy=strategy)


def _worker(rank: int, world: int, port: int, strategy: str, shards: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        full = _trainer(strategy, shards, rank, world)
        rep = DirectoryReporter(f"{out}/{strategy}")
        full.fit(rep)
        resumed = _trainer(strategy, shards, rank, world)  # a fresh process group member, restored mid-run
        resumed.restore(f"{out}/{strategy}/step_00000006")
        resumed.fit(DirectoryReporter(f"{out}/{strategy}-resumed"))
        a, _ = parallel.full_state(full.model, full.opt)  # FSDP2 gathers the shards; DDP is rank 0's copy
        b, _ = parallel.full_state(resumed.model, resumed.opt)
        if rank == 0:
            torch.save({"full": a, "resumed": b, "loss": [m["loss"] for m in rep.history]},
                       f"{out}/{strategy}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fsdp2_equals_ddp_and_resumes_exactly(shards: dict[str, Path], tmp_path: Path):
    results = {}
    for strategy in ("ddp", "fsdp2"):
        mp.spawn(_worker, args=(2, _free_port(), strategy, str(shards["train"]), str(tmp_path)), nprocs=2)
        results[strategy] = torch.load(tmp_path / f"{strategy}.pt")
    ddp, fsdp = results["ddp"], results["fsdp2"]
    assert ddp["loss"][-1] < 0.9 * ddp["loss"][0]
    assert sorted(ddp["full"]) == sorted(fsdp["full"])  # FSDP2's gathered state has the plain model keys
    for k, v in ddp["full"].items():
        torch.testing.assert_close(fsdp["full"][k], v, rtol=0, atol=1e-6, msg=k)
        assert torch.equal(ddp["resumed"][k], v) and torch.equal(fsdp["resumed"][k], fsdp["full"][k]), k
