"""Run the one training loop on Ray Train (TorchTrainer, V2): N workers, fault tolerant, resumable, observable.

    job = TrainJob(kind="pretrain", section=cfg.model_dump(), model=model_cfg.model_dump(),
                   train_uri=pack_dir, val_uri=val_dir, data_id=pack_digest)
    out = run_training(job, storage_path=ctx.checkpoint_dir, on_metrics=relay)
    out.model_state        # final weights (plain state dict for herd.model.Llama4), out.history, out.resumed_from

Decisions (ray-mlflow-notes.md section 2 lists the traps):
- The run name is `<kind>-<config hash>` under a stable storage path. Ray Train V2 silently resumes a run whose
  (name, storage_path) it has seen; here that is deliberate: re-running an interrupted flow with the same
  configuration continues from its last checkpoint, and a changed configuration (model, section, data) gets
  another name, so it never resumes someone else's state. The checkpoint's COMPLETE.json also carries the
  hash and is checked on load.
- Checkpoints only through ray.train.report(checkpoint=...), every K steps, so only checkpoints the
  controller registered are ever resumed; an orphaned directory from a hard crash is never loaded.
- FailureConfig(max_failures): a killed worker makes the controller restart the group from the last
  registered checkpoint.
- report() is a barrier throttled by RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s default): we report every
  `log_every` steps only and lower the interval to 0.2 s (propagated to the controller and workers).
- Metrics reach the driver live through a Ray queue (a 0-CPU actor) that rank 0 fills; the driver alone
  calls `on_metrics` (MLflow logging, the progress bar). Workers never talk to MLflow.
- Workers: gloo on CPU, NCCL on GPU (TorchTrainer's default); torch threads = CPUs per worker.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import queue as pyqueue
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import torch
from torch import nn

from herd.train import checkpoint
from herd.train.config import DistillConfig, PretrainConfig

MetricsCallback = Callable[[int, dict[str, float]], None]


class TrainError(RuntimeError):
    """Training failed (more worker failures than workers.max_failures, or bad inputs)."""


@dataclass
class TrainJob:
    """Everything a worker needs, as plain data (it is pickled to the workers)."""

    kind: Literal["pretrain", "distill", "sft", "rl", "dpo"]
    section: dict[str, Any]  # PretrainConfig / DistillConfig / posttrain SFTConfig / RLConfig / DPOConfig dump
    model: dict[str, Any]  # ModelConfig dump of the model being trained
    train_uri: str  # packed training shards (local path or fsspec URI)
    val_uri: str | None = None  # packed held-out shards
    data_id: str = ""  # digest of the training data: part of the run identity, the path is not
    teacher: dict[str, Any] | None = None  # distill: ModelConfig dump of the frozen teacher
    teacher_uri: str | None = None  # distill: the teacher's save_hf directory
    teacher_id: str = ""  # distill: digest of the teacher artifact
    storage_options: dict[str, Any] | None = None  # fsspec options for the data / teacher URIs
    model_factory: Callable[[dict[str, Any]], nn.Module] | None = None  # default: herd.model.Llama4
    extra_env: dict[str, str] = field(default_factory=dict)
    init_uri: str | None = None  # post-training: the parent model's save_hf directory (the starting weights)
    init_id: str = ""  # digest of the parent model artifact
    # post-training data (plain values): rows / prompts / pairs / ledger URIs and the tokenizer JSON, read by
    # herd.posttrain.worker, which builds the objective and the data source for kind sft / rl / dpo
    posttrain: dict[str, Any] = field(default_factory=dict)

    def config(self) -> Any:
        if self.kind in ("sft", "rl", "dpo"):
            conf = _posttrain("config")
            return {"sft": conf.SFTConfig, "rl": conf.RLConfig, "dpo": conf.DPOConfig}[self.kind].model_validate(
                self.section)
        return (PretrainConfig if self.kind == "pretrain" else DistillConfig).model_validate(self.section)

    def config_hash(self) -> str:
        ident = {"kind": self.kind, "section": self.section, "model": self.model, "data": self.data_id or
                 self.train_uri, "teacher": self.teacher, "teacher_id": self.teacher_id or self.teacher_uri}
        if self.kind in ("sft", "rl", "dpo"):  # (the pretrain/distill identity is unchanged: no re-runs)
            ident.update(init=self.init_id or self.init_uri,
                         posttrain={k: v for k, v in self.posttrain.items() if k != "tokenizer_json"})
        return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()

    def run_name(self) -> str:
        return f"{self.kind}-{self.config_hash()[:12]}"


def _posttrain(module: str) -> ModuleType:
    """A module of herd.posttrain (the sft / rl / dpo objectives and data sources, built on this package), imported
    by name at run time: a static import would put all of post-training into the cache key of the pretrain and
    distill steps (herd.platform.cache follows imports), so an RL edit would retrain the teacher. The post-training
    steps' keys cover herd.posttrain through their own flows' imports."""
    return importlib.import_module(f"herd.posttrain.{module}")


@dataclass
class TrainOutcome:
    model_state: dict[str, torch.Tensor]
    metrics: dict[str, float]
    history: list[tuple[int, dict[str, float]]]
    checkpoint_path: str
    run_name: str
    resumed_from: int | None  # the step an earlier run of the same name had reached, None for a fresh run
    data_state: dict[str, Any] | None = None  # rank 0's data-source state at the end (RL: the updated ledger)


# ---- worker side -------------------------------------------------------------------------------------------
def _build_model(cfg: dict[str, Any], factory: Callable[[dict[str, Any]], nn.Module] | None) -> nn.Module:
    if factory is not None:
        return factory(cfg)
    from herd.model import Llama4, ModelConfig, metap

    mcfg = ModelConfig.model_validate(cfg)
    model = Llama4(mcfg)
    metap.init_weights(model, mcfg)  # width-aware init matching MetaP's lr multipliers (herd.model.metap)
    return model


def _local_dir(uri: str, storage_options: dict[str, Any] | None) -> str:
    """A local copy of a model directory (downloaded once when `uri` is remote, e.g. s3://)."""
    if "://" not in uri or uri.startswith("file://"):
        return uri.removeprefix("file://")
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    local = tempfile.mkdtemp(prefix="herd-model-")
    fs.get(path.rstrip("/") + "/", local, recursive=True)
    return local


def _load_teacher(job: TrainJob) -> nn.Module:
    if job.teacher_uri is None:
        raise TrainError("distill needs the teacher's weights (teacher_uri): run the pretrain flow first")
    if job.model_factory is not None:  # tests: a plain state dict next to a custom model
        model = job.model_factory(job.teacher or {})
        model.load_state_dict(torch.load(Path(job.teacher_uri) / "model.pt", weights_only=True))
        return model
    from herd.model import load_hf

    local = job.teacher_uri
    if "://" in local and not local.startswith("file://"):
        import fsspec

        fs, path = fsspec.core.url_to_fs(local, **(job.storage_options or {}))
        local = tempfile.mkdtemp(prefix="herd-teacher-")
        fs.get(path.rstrip("/") + "/", local, recursive=True)
    return load_hf(local)


def _flops_per_token(job: TrainJob, seq_len: int) -> float | None:
    if job.model_factory is not None:
        return None
    from herd.model import ModelConfig

    flops = 3 * ModelConfig.model_validate(job.model).flops_per_token(seq_len)  # forward + 2x backward
    if job.kind == "distill" and job.teacher is not None and job.config().alpha.rule != "hard":
        flops += ModelConfig.model_validate(job.teacher).flops_per_token(seq_len)  # frozen teacher forward
    return float(flops)


class _RayReporter:
    def __init__(self, q: Any, rank: int) -> None:
        self.q, self.rank = q, rank

    def report(self, step: int, metrics: dict[str, float], write_checkpoint: Any) -> None:
        import ray.train

        if self.rank == 0 and self.q is not None:
            self.q.put((step, metrics))
        if write_checkpoint is None:
            ray.train.report(metrics)  # a barrier: every rank calls it at the same steps
            return
        with tempfile.TemporaryDirectory(prefix="herd-ckpt-") as d:
            write_checkpoint(Path(d))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d),
                             checkpoint_dir_name=f"checkpoint_step{step:08d}")


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's train_func: build model, data and objective for this rank, resume, train, report."""
    import ray.train
    import ray.train.torch

    from herd.data.reader import ShardReader
    from herd.train.loop import Trainer
    from herd.train.losses import CodistillObjective, CrossEntropyObjective

    job: TrainJob = config["job"]
    cfg = job.config()
    # Ray Train V2 logs every report with all its metrics at INFO (logger named by its file); the driver's
    # relay already shows them, so keep the terminal readable
    from ray.train.v2._internal.execution import context as _train_context

    logging.getLogger(_train_context.__file__).setLevel(logging.WARNING)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    threads = cfg.workers.threads_per_worker or max(int(cfg.workers.cpus_per_worker), 1)
    torch.set_num_threads(threads)
    device = ray.train.torch.get_device() if cfg.workers.use_gpu else torch.device("cpu")

    posttrain = job.kind in ("sft", "rl", "dpo")
    reader: Any = None if posttrain else ShardReader(job.train_uri, cfg.micro_batch_size, rank=rank,
                                                     world_size=world, seed=cfg.seed,
                                                     storage_options=job.storage_options)
    val = None
    if job.val_uri and cfg.eval_batches and not posttrain:
        def val() -> ShardReader:  # the same held-out rows every evaluation, split over ranks
            return ShardReader(job.val_uri, cfg.micro_batch_size, rank=rank, world_size=world, shuffle=False,
                               loop=False, storage_options=job.storage_options)

    torch.manual_seed(cfg.seed)
    model = _build_model(job.model, job.model_factory)
    if job.init_uri is not None:  # post-training starts from its parent's weights
        from herd.model import load_hf

        model.load_state_dict(load_hf(_local_dir(job.init_uri, job.storage_options)).state_dict())
    if posttrain:  # objective + data source (RL rollouts are generated by the policy itself)
        objective, reader = _posttrain("worker").build_objective_and_data(job, cfg, model, rank=rank, world=world,
                                                                           device=device)
    elif job.kind == "distill":
        assert isinstance(cfg, DistillConfig)
        objective = CodistillObjective(_load_teacher(job).to(device), cfg.temperature, cfg.alpha,
                                       teacher_every=cfg.teacher_every)
    else:
        objective = CrossEntropyObjective()
    seq_len = getattr(reader, "seq_len", None) or 0
    trainer = Trainer(model, objective, reader, cfg, device=device, config_hash=job.config_hash(),
                      flops_per_token=_flops_per_token(job, seq_len) if seq_len else None, eval_data=val,
                      strategy=cfg.workers.strategy)
    ckpt = ray.train.get_checkpoint()  # None on a fresh run; the last registered checkpoint on a restart
    if ckpt is not None:
        with ckpt.as_directory() as d:
            trainer.restore(d)
    trainer.fit(_RayReporter(config.get("queue"), rank))


# ---- driver side -------------------------------------------------------------------------------------------
def _previous_step(storage_path: str, name: str, storage_filesystem: Any) -> int | None:
    """The step of the newest checkpoint an earlier run of this name left behind (None: a fresh run)."""
    import pyarrow.fs as pafs

    fs, root = (storage_filesystem, storage_path) if storage_filesystem is not None else \
        pafs.FileSystem.from_uri(storage_path)
    infos = fs.get_file_info(pafs.FileSelector(f"{root.rstrip('/')}/{name}", allow_not_found=True))
    steps = [int(i.base_name.removeprefix("checkpoint_step")) for i in infos
             if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_step")]
    return max(steps) if steps else None


def run_training(job: TrainJob, *, storage_path: str, storage_filesystem: Any = None,
                 on_metrics: MetricsCallback | None = None, name: str | None = None) -> TrainOutcome:
    """Train on Ray Train from the driver; block until done; return the final weights and metrics.

    `storage_path` must be stable across re-runs of the same step (the runner's checkpoint location): an
    interrupted run resumes from it. `on_metrics(step, metrics)` runs in the calling thread."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    cfg = job.config()
    name = name or job.run_name()
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    if not ray.is_initialized():
        ray.init()
    resumed_from = _previous_step(storage_path, name, storage_filesystem)
    q = Queue(actor_options={"num_cpus": 0})  # 0 CPU: the workers need every core of a 2-core box
    w = cfg.workers
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"job": job, "queue": q},
        scaling_config=ray.train.ScalingConfig(num_workers=w.num_workers, use_gpu=w.use_gpu,
                                               resources_per_worker={"CPU": w.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path, storage_filesystem=storage_filesystem,
            failure_config=ray.train.FailureConfig(max_failures=w.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.checkpoint.keep)),
    )
    box: dict[str, Any] = {}

    def _fit() -> None:
        try:
            box["result"] = trainer.fit()
        except Exception as e:  # noqa: BLE001 -- handed to the calling thread, which re-raises it
            box["error"] = e

    history: list[tuple[int, dict[str, float]]] = []

    def _drain(block: bool) -> None:
        while True:
            try:
                step, metrics = q.get(block=block, timeout=0.5) if block else q.get_nowait()
            except pyqueue.Empty:  # ray.util.queue.Empty subclasses it
                return
            history.append((step, metrics))
            if on_metrics is not None:
                on_metrics(step, metrics)
            block = False

    t = threading.Thread(target=_fit, name=f"herd-fit-{name}", daemon=True)
    t.start()
    try:
        while t.is_alive():
            _drain(block=True)
        t.join()
        time.sleep(0.2)
        _drain(block=False)
    finally:
        ray.kill(q.actor)
    if "error" in box:
        raise TrainError(f"training run {name} failed (workers.max_failures={w.max_failures}): {box['error']}") \
            from box["error"]
    result = box["result"]
    if result.checkpoint is None:
        raise TrainError(f"training run {name} finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        model_state = checkpoint.load_model_state(d)
        data_state = torch.load(Path(d) / "rank0.pt", map_location="cpu", weights_only=True).get("data")
    metrics = dict(history[-1][1]) if history else dict(result.metrics or {})
    return TrainOutcome(model_state, metrics, history, str(result.checkpoint.path), name, resumed_from,
                        data_state)


__all__ = ["TrainError", "TrainJob", "TrainOutcome", "run_training", "train_worker"]
