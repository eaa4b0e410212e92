"""RL on 2 real Ray Train workers: the ranks keep one ledger (they exchange every group's outcome), and a worker
killed mid-run resumes from the last checkpoint to the same weights and the same ledger as an uninterrupted run
(the ledger and the rollout step are in the checkpoint; rollout seeds derive from (seed, step, round, rank))."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import asdict
from itertools import pairwise

import numpy as np
import pytest
import torch

from herd.data.config import TokenizerConfig
from herd.data.synthetic import arithmetic
from herd.data.tokenizer import train_tokenizer
from herd.model import ModelConfig
from herd.posttrain.config import RLConfig
from herd.posttrain.ledger import Ledger
from herd.posttrain.rewards import Prompt
from herd.train.ray_trainer import TrainJob, run_training

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def job() -> TrainJob:
    probs = arithmetic.make_problems(200, np.random.default_rng(0))
    tok = train_tokenizer([arithmetic.worked_example(p) for p in probs],
                          TokenizerConfig(vocab_size=512, max_train_chars=100_000))
    prompts = [Prompt(f"p{i}", [{"role": "user", "content": f"Say {i % 2}."}], str(i % 2), "arithmetic")
               for i in range(16)]
    led = Ledger()
    for p in prompts:
        led.add(p.prompt_id, p.capability)
    cfg = RLConfig(steps=6, log_every=1, prompts_per_step=2, group_size=4, max_new_tokens=6, grad_accum=1,
                   max_refill_rounds=1, schedule={"warmup_steps": 0}, checkpoint={"every_steps": 2},
                   capabilities={"arithmetic": 1.0}, precision="fp32", optim={"lr": 1e-3},
                   workers={"num_workers": 2, "cpus_per_worker": 1, "max_failures": 2})
    model = ModelConfig(vocab_size=512, hidden_size=32, intermediate_size=64, intermediate_size_mlp=64,
                        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, num_local_experts=2)
    return TrainJob(kind="rl", section=cfg.model_dump(), model=model.model_dump(), train_uri="inline",
                    data_id="rl-resume-test",
                    posttrain={"prompts": [asdict(p) for p in prompts], "ledger": led.state_dict()["entries"],
                               "tokenizer_json": tok.to_str()})


def _pids(address: str) -> list[int]:
    from ray.util.state import list_actors

    actors = list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    return sorted(a.pid for a in actors)


def test_killed_rl_worker_resumes_to_same_weights_and_ledger(job, ray_local, tmp_path):
    ref = run_training(job, storage_path=str(tmp_path / "ref"))
    led = ref.data_state["ledger"]["entries"]
    attempts = sum(e["attempts"] for e in led)
    # both ranks' groups are in rank 0's ledger: 2 workers x 2 prompts x 4 samples per round, >= 1 round a step
    assert attempts >= 6 * 2 * 2 * 4
    assert ref.metrics["rollout.logp_gap.max"] < 1e-4

    killed: list[int] = []

    def on_metrics(step: int, m: dict) -> None:
        if step == 3 and not killed:  # after the step-2 checkpoint, before the end
            pids = _pids(ray_local.address)
            os.kill(pids[-1], signal.SIGKILL)
            killed.append(pids[-1])

    out = run_training(job, storage_path=str(tmp_path / "killed"), on_metrics=on_metrics)
    assert killed
    steps = [s for s, _ in out.history]
    assert steps[-1] == 6 and any(b <= a for a, b in pairwise(steps)), steps
    for k, v in ref.model_state.items():
        torch.testing.assert_close(out.model_state[k], v, rtol=0, atol=1e-6, msg=k)
    assert json.dumps(out.data_state["ledger"], sort_keys=True) == json.dumps(ref.data_state["ledger"],
                                                                                sort_keys=True)
