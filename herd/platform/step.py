"""The authoring API of flows: ``Step``, ``Resources`` and the ``StepContext`` a step function receives.

Import these from ``herd.platform.runner`` (which re-exports them). A flow module is a builder that takes the
Recipe and returns its steps, handing each step only its own config section::

    from herd.platform.runner import Resources, Step, StepContext

    def tokenize(ctx: StepContext) -> None:
        cfg = ctx.config                                   # the section given below (a pydantic model)
        raw = ctx.inputs["corpus"].local_path()            # an upstream artifact as a local directory
        out = ctx.output_dir("shards", format="parquet")   # staged locally, committed by the runner
        ...                                                # write files into out
        ctx.log_metrics({"tokens": n}, step=0)             # reaches MLflow through the driver

    def build(recipe) -> list[Step]:
        return [Step("data.tokenize", tokenize, config=recipe.data.tokenizer, config_path="data.tokenizer",
                     inputs={"corpus": "data.clean.corpus"}, outputs={"shards": "dataset"},
                     resources=Resources(cpus=1), code=["herd.data.tokenizer"])]

See docs/architecture.md "How to write a flow".
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from herd.platform.errors import FlowError
from herd.platform.roles import check_role
from herd.platform.store import Artifact, ArtifactStore

OUTPUT_KINDS = ("dataset", "model", "tokenizer", "checkpoint", "report", "image", "file")


@dataclass(frozen=True)
class Resources:
    """What a step reserves on the Ray cluster. ``memory_gb`` is a scheduling hint, not a limit."""

    cpus: float = 1.0
    gpus: float = 0.0
    memory_gb: float | None = None

    def ray_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"num_cpus": self.cpus, "num_gpus": self.gpus}
        if self.memory_gb:
            opts["memory"] = int(self.memory_gb * 1024**3)
        return opts


@dataclass
class Step:
    """One node of the pipeline DAG.

    name        ``flow.step``, globally unique (``data.tokenize``).
    fn          ``fn(ctx: StepContext) -> None``; a module-level function (it is pickled into a Ray task).
    config      its config section (a pydantic model), or a mapping ``{recipe path: section}`` when a step
                needs several (``{"pretrain": recipe.pretrain, "models.teacher": recipe.models["teacher"]}``).
    config_path recipe path of ``config`` when it is a single model (``"data.tokenizer"``); used by ``herd plan``.
    inputs      local name -> ``"<step name>.<output>"`` of an upstream step.
    outputs     output name -> kind (dataset | model | tokenizer | checkpoint | report | image | file). Models
                become MLflow LoggedModels; the rest are recorded as MLflow dataset inputs of their consumers.
    resources   CPUs / GPUs / memory of the Ray task.
    in_driver   run in the driver process instead of a Ray task: for steps that hand off to Ray Train or Ray
                Serve (a task holding a CPU would starve a 2-worker Ray Train job on 2 CPUs).
    code        library modules whose source is part of the cache key (the step function's own source always is).
    roles       model output name -> role (``herd.platform.roles``): what the model is (teacher, student, sft, ...).
                The evaluate, quantize and deploy flows and the Model Registry find models by role.
    verify_reuse ``fn(outputs: dict[str, Artifact]) -> str | None``, run in the driver before a cached record is
                reused: ``None`` means the cached outputs are still good; a string is the reason the step must run
                again (``herd plan`` / ``herd run`` show it), e.g. ``"endpoint http://127.0.0.1:8000 not
                answering"`` for a deploy step whose side effect (a running server) is gone.
    """

    name: str
    fn: Callable[[StepContext], Any]
    config: BaseModel | Mapping[str, Any] | None = None
    config_path: str = ""
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    in_driver: bool = False
    code: list[str] = field(default_factory=list)
    description: str = ""
    roles: dict[str, str] = field(default_factory=dict)
    verify_reuse: Callable[[dict[str, Artifact]], str | None] | None = None

    def __post_init__(self) -> None:
        flow, dot, local = self.name.partition(".")
        if not dot or not flow or not local or "." in local:
            raise FlowError(f"step name {self.name!r} must be '<flow>.<step>' (e.g. 'data.tokenize')")
        for local_name, ref in self.inputs.items():
            up, dot, out = ref.rpartition(".")
            if not dot or "." not in up:
                raise FlowError(f"step {self.name}: input {local_name}={ref!r} must be '<flow>.<step>.<output>'")
        for out, kind in self.outputs.items():
            if kind not in OUTPUT_KINDS:
                raise FlowError(f"step {self.name}: output {out!r} has kind {kind!r}; use one of "
                                f"{', '.join(OUTPUT_KINDS)}")
        for out, role in self.roles.items():
            if self.outputs.get(out) != "model":
                raise FlowError(f"step {self.name}: role {role!r} names {out!r}, which is not a model output")
            try:
                check_role(role)
            except ValueError as e:
                raise FlowError(f"step {self.name}: {e}") from None
        if not callable(self.fn):
            raise FlowError(f"step {self.name}: fn must be a function taking the StepContext")
        if self.verify_reuse is not None and not callable(self.verify_reuse):
            raise FlowError(f"step {self.name}: verify_reuse must be a function outputs -> reason | None")

    @property
    def flow(self) -> str:
        return self.name.split(".", 1)[0]

    def upstream(self) -> set[str]:
        return {ref.rsplit(".", 1)[0] for ref in self.inputs.values()}

    def config_json(self) -> dict[str, Any]:
        """The resolved config as JSON-able data, keyed by recipe path (what the cache key and plan see)."""
        if self.config is None:
            return {}
        if isinstance(self.config, BaseModel):
            return {self.config_path or "config": self.config.model_dump(mode="json")}
        return {k: (v.model_dump(mode="json") if isinstance(v, BaseModel) else v) for k, v in self.config.items()}


class MetricLogger:
    """Picklable handle that sends metrics/params/tags to the driver (which alone writes to MLflow).

    Pass ``ctx.metric_logger()`` into Ray Train's ``train_loop_config`` to log from rank 0 of a trainer.
    """

    def __init__(self, queue: Any, run_id: str):
        self._queue = queue  # a ray.util.queue.Queue, or a local queue.Queue for in-driver use
        self.run_id = run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items()}
        self._queue.put(("metrics", self.run_id, clean, step, time.time()))

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._queue.put(("params", self.run_id, {k: str(v) for k, v in params.items()}, None, time.time()))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._queue.put(("tags", self.run_id, {k: str(v) for k, v in tags.items()}, None, time.time()))

    def progress(self, done: int, total: int, info: str = "") -> None:
        """Live progress of the step (``herd run`` shows it in the step's row): ``done`` of ``total`` units."""
        self._queue.put(("progress", self.run_id, {"done": int(done), "total": int(total), "info": str(info)},
                         None, time.time()))


class StepContext:
    """Everything a running step may use. Built by the runner; one per step execution."""

    def __init__(self, *, step: Step, store: ArtifactStore, inputs: dict[str, Artifact], run_id: str,
                 flow_run_id: str, cache_key: str, logger: MetricLogger, tracking_uri: str, home: Path,
                 sources: list[dict[str, str]] | None = None, attempt: str = ""):
        self.step = step
        self.name = step.name
        self.config = step.config
        self.store = store
        self.inputs = inputs
        self.run_id = run_id  # the step's MLflow (nested) run
        self.flow_run_id = flow_run_id
        self.cache_key = cache_key
        self.tracking_uri = tracking_uri
        self.home = home
        self._logger = logger
        self._staging = Path(tempfile.mkdtemp(prefix=f"herd-{step.name}-"))
        self._outputs: dict[str, tuple[Path, str, dict[str, Any]]] = {}
        self.sources: list[dict[str, str]] = sources if sources is not None else []
        self.attempt = attempt  # "" normally; a fresh token for a forced re-run (``herd run --force``)
        self.artifacts: list[tuple[str, str, bytes]] = []  # (MLflow artifact dir, relative path, bytes)

    # ---------------------------------------------------------------------------------------- outputs
    def output_dir(self, name: str, format: str = "dir", **meta: Any) -> Path:
        """A fresh local directory for declared output ``name``; committed (manifest last) after fn returns."""
        if name not in self.step.outputs:
            raise FlowError(f"step {self.name}: output {name!r} is not declared; declared: "
                            f"{', '.join(self.step.outputs) or '(none)'}")
        if name in self._outputs:
            return self._outputs[name][0]
        path = self._staging / name
        path.mkdir(parents=True)
        self._outputs[name] = (path, format, dict(meta))
        return path

    def annotate_output(self, name: str, **meta: Any) -> None:
        """Add to a staged output's manifest ``meta`` (run metadata: timings, run names; never hashed)."""
        if name not in self._outputs:
            raise FlowError(f"step {self.name}: output {name!r} was not created; call ctx.output_dir first")
        self._outputs[name][2].update(meta)

    def staged_outputs(self) -> dict[str, tuple[Path, str, dict[str, Any]]]:
        return dict(self._outputs)

    def cleanup(self) -> None:
        shutil.rmtree(self._staging, ignore_errors=True)

    # ---------------------------------------------------------------------------------------- logging
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self._logger.log_metrics(metrics, step)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._logger.log_params(params)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._logger.set_tags(tags)

    def progress(self, done: int, total: int, info: str = "") -> None:
        """Live progress shown in the step's row of ``herd run`` (e.g. training step 20/30, loss, tok/s)."""
        self._logger.progress(done, total, info)

    def log_artifacts(self, local_dir: str | os.PathLike, artifact_path: str) -> None:
        """Attach small files (plots, reports; < 20 MB in all) to the step's MLflow run under ``artifact_path``.

        The files travel back to the driver with the step's result, and the driver writes them to MLflow, so
        this works the same in a Ray task and in the driver."""
        root = Path(local_dir)
        files = sorted(p for p in root.rglob("*") if p.is_file())
        size = sum(p.stat().st_size for p in files) + sum(len(b) for _, _, b in self.artifacts)
        if size > 20 * 1024**2:
            raise FlowError(f"step {self.name}: log_artifacts({root}) carries {size / 1024**2:.0f} MB; MLflow "
                            "artifacts of a step are for small files: declare a step output for large ones")
        self.artifacts.extend((artifact_path, p.relative_to(root).as_posix(), p.read_bytes()) for p in files)

    def metric_logger(self) -> MetricLogger:
        """A picklable logger for code running in other Ray workers (e.g. rank 0 of a Ray Train job)."""
        return self._logger

    def log_source(self, uri: str, digest: str, name: str | None = None) -> None:
        """Record a raw external source (a file or prefix outside the store) this step read: the lineage root."""
        self.sources.append({"uri": uri, "digest": digest, "name": name or uri.rstrip("/").rsplit("/", 1)[-1]})

    # ------------------------------------------------------------------------------------- checkpoints
    @property
    def checkpoint_dir(self) -> str:
        """Store URI stable per (step, cache key): a restarted step finds what it saved here before."""
        key = f"checkpoints/{self.name}/{self.cache_key[:16]}" + (f"-{self.attempt}" if self.attempt else "")
        if self.store.local:  # object stores have no directories; local ones need it to exist
            os.makedirs(self.store.path(key), exist_ok=True)
        return self.store.uri(key)

    @property
    def train_run_name(self) -> str:
        """A Ray Train ``RunConfig(name=...)`` stable per (step, cache key): re-running resumes the same job.

        A forced re-run (``herd run --force``) gets a fresh attempt token, hence a fresh name: it never resumes
        the finished run; a later plain run after that forced run crashed resumes the forced attempt."""
        base = f"{self.name.replace('.', '-')}-{self.cache_key[:12]}"
        return f"{base}-{self.attempt}" if self.attempt else base

    def ray_train_storage(self) -> tuple[str, Any]:
        """``(storage_path, storage_filesystem)`` for ``ray.train.RunConfig`` inside the store.

        Local stores give an absolute path and ``None``. Remote stores give a scheme-less path plus a pyarrow
        filesystem built from the store's fsspec filesystem, so Ray Train needs no ``AWS_ENDPOINT_URL``
        (pyarrow's ``from_uri`` would otherwise go to real AWS, see the S3 notes).
        """
        base = self.store.path(f"train/{self.name}")
        if self.store.local:
            os.makedirs(base, exist_ok=True)
            return base, None
        import pyarrow.fs as pafs

        return base, pafs.PyFileSystem(pafs.FSSpecHandler(self.store.fs))


__all__ = ["OUTPUT_KINDS", "MetricLogger", "Resources", "Step", "StepContext"]
