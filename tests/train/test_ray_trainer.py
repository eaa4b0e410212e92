"""The trainer on 2 real Ray Train workers: loss falls; a killed worker resumes to the same final weights;
a re-run of a finished/interrupted run resumes instead of starting over."""

from __future__ import annotations

import os
import signal
from itertools import pairwise

import pytest
import ray.cloudpickle
import torch
import train_helpers

from herd.train.config import PretrainConfig
from herd.train.ray_trainer import TrainJob, run_training

pytestmark = pytest.mark.slow

# the workers unpickle the test model by value: the tests package is not importable in Ray workers
ray.cloudpickle.register_pickle_by_value(train_helpers)


def _job(shards, **kw) -> TrainJob:
    section = PretrainConfig(steps=40, micro_batch_size=8, log_every=5, eval_batches=2, precision="fp32",
                             schedule={"warmup_steps": 4}, checkpoint={"every_steps": 10},
                             optim={"lr": 1e-2}, **kw).model_dump()
    return TrainJob(kind="pretrain", section=section, model={"seed": 0}, train_uri=str(shards["train"]),
                    val_uri=str(shards["val"]), data_id="test-shards", model_factory=train_helpers.tiny_lm_factory)


@pytest.fixture(scope="module")
def reference(ray_local, shards, tmp_path_factory):
    """An uninterrupted run on 2 workers (also the loss-falls test's subject)."""
    seen: list[int] = []
    store = str(tmp_path_factory.mktemp("ref"))
    out = run_training(_job(shards), storage_path=store, on_metrics=lambda step, m: seen.append(step))
    return out, seen, store


def test_two_workers_loss_falls(reference):
    out, seen, _ = reference
    assert seen == [5, 10, 15, 20, 25, 30, 35, 40]  # relayed live to the driver, every log_every steps
    first, last = out.history[0][1], out.history[-1][1]
    assert last["loss"] < 0.5 * first["loss"]
    assert last["eval/loss"] < first["loss"]
    assert last["tokens"] == 40 * 2 * 8 * 32  # steps x workers x micro-batch x seq_len
    assert out.resumed_from is None and out.checkpoint_path.endswith("checkpoint_step00000040")


def _train_worker_pids(address: str) -> list[int]:
    from ray.util.state import list_actors

    # an explicit address: other Ray instances on the machine would make "auto" ambiguous
    actors = list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    return sorted(a.pid for a in actors)


def test_killed_worker_resumes_to_identical_weights(reference, shards, tmp_path, ray_local):
    ref, _, _ = reference
    killed: list[int] = []

    def on_metrics(step: int, m: dict) -> None:
        # after the step-10 checkpoint is registered and before the end: kill one worker process (SIGKILL)
        if step == 15 and not killed:
            pids = _train_worker_pids(ray_local.address)
            assert len(pids) == 2
            os.kill(pids[-1], signal.SIGKILL)
            killed.append(pids[-1])

    out = run_training(_job(shards), storage_path=str(tmp_path), on_metrics=on_metrics)
    assert killed, "the worker was never killed"
    steps = [s for s, _ in out.history]
    assert steps.count(15) >= 1 and steps[-1] == 40
    assert any(b <= a for a, b in pairwise(steps)), f"no restart visible in {steps}"
    for k, v in ref.model_state.items():
        torch.testing.assert_close(out.model_state[k], v, rtol=0, atol=1e-6, msg=k)


def test_rerun_resumes_the_same_run_and_new_config_starts_fresh(reference, shards):
    ref, _, store = reference
    again = run_training(_job(shards), storage_path=store)  # same config, same stable storage: resume
    assert again.resumed_from == 40 and again.history == []  # finished already: no step is re-run
    assert again.run_name == ref.run_name
    for k, v in ref.model_state.items():
        assert torch.equal(again.model_state[k], v)
    changed = _job(shards)
    changed.section["steps"] = 10  # another configuration must never pick up that run's checkpoints
    other = run_training(changed, storage_path=store)
    assert other.resumed_from is None and other.run_name != ref.run_name
    assert [s for s, _ in other.history] == [5, 10]


def test_checkpoints_in_s3_and_resume_from_them(ray_local, shards, s3_uri, s3_server):
    """Ray Train storage in the (moto) S3 bucket, as the runner hands it for a remote store: a scheme-less
    path plus a pyarrow filesystem; a re-run finds the finished run's checkpoints there and resumes."""
    import pyarrow.fs as pafs
    import s3fs

    # explicit credentials/endpoint: the session's Ray processes started before the S3 env existed
    s3 = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=s3_server)
    fs = pafs.PyFileSystem(pafs.FSSpecHandler(s3))
    storage = s3_uri.removeprefix("s3://") + "/train"
    job = _job(shards)
    job.section = {**job.section, "steps": 10, "checkpoint": {"every_steps": 5, "keep": 2}}
    first = run_training(job, storage_path=storage, storage_filesystem=fs)
    assert first.resumed_from is None and first.checkpoint_path.endswith("checkpoint_step00000010")
    assert s3.exists(f"{s3_uri}/train/{first.run_name}/checkpoint_step00000010/COMPLETE.json")
    again = run_training(job, storage_path=storage, storage_filesystem=fs)
    assert again.resumed_from == 10 and again.history == []
    for k, v in first.model_state.items():
        assert torch.equal(again.model_state[k], v)
