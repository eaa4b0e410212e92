"""``herd eval MODEL`` and ``herd eval show``: the driver side of evaluating one model outside the pipeline.

    herd eval 3f9a0c1d                     # an artifact digest (or prefix), an m-... model id, or a checkpoint dir
    herd eval ./my-hf-checkpoint           # imported into the store as an `external` model first
    herd eval m-1a2b... --harness http://127.0.0.1:8000/v1   # + lm-eval local-completions against an endpoint
    herd eval show                         # every evaluated model: stage, each suite's score +- CI

``eval_model`` resolves the reference (``herd.platform.modelref``), makes sure the eval set exists (the data
flow and ``evaluate.evalset`` through the runner: cached after the first time), runs every suite in this
process, and writes MLflow as the driver: a run ``eval <role>`` with the results as artifacts, the scores on
the model's LoggedModel (created for imported models) tied to the ``herd-eval`` dataset, lm-eval's under
``harness/``. ``show`` reads the LoggedModels' metrics back: what it prints is what the MLflow UI shows.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from herd.eval.report import PRIMARY, SUITE_ORDER

DATASET = "herd-eval"


def eval_inputs(recipe: Any, runtime: Any) -> tuple[Any, Any]:
    """(eval set, packed validation set) artifacts, running the data flow / eval-set step if not cached."""
    import herd.flows as registry
    from herd.flows.evaluate import evalset
    from herd.platform.runner import Runner

    data_steps = registry.builder("data")(recipe)
    eval_step = next(s for s in registry.builder("evaluate")(recipe) if s.fn is evalset) \
        if "evaluate" in registry.FLOWS else _evalset_step(recipe)
    res = Runner(runtime, progress=True).run([*data_steps, eval_step], targets=[eval_step.name, "data.pack"])
    store = runtime.artifact_store()
    return store.get(res.outputs[eval_step.name]["evalset"]), store.get(res.outputs["data.pack"]["pretrain_val"])


def _evalset_step(recipe: Any) -> Any:
    from herd.flows import evaluate

    return next(s for s in evaluate.build(recipe) if s.fn is evaluate.evalset)


def eval_model(ref: str, recipe: Any, runtime: Any, *, harness_url: str | None = None,
               harness_model: str = "herd", harness_tasks: list[str] | None = None, limit: int | None = None,
               say: Any = print) -> dict[str, Any]:
    """Evaluate one model (any reference) on every suite; record it in MLflow; return the summary row."""
    from mlflow.entities import LoggedModelInput

    from herd.eval.lm import HerdLM
    from herd.eval.report import ModelResults, build_report
    from herd.eval.result import write_results
    from herd.eval.run import evaluate_model, uses_chat
    from herd.platform.lineage import _client, experiment_id
    from herd.platform.model_metrics import ensure_logged_model, log_model_metrics
    from herd.platform.modelref import resolve_model

    store = runtime.artifact_store()
    model = resolve_model(ref, store, tracking_uri=runtime.tracking_uri, recipe=recipe)
    say(f"model {model.label} ({model.step or 'import'}) at {model.artifact.uri}")
    es, val = eval_inputs(recipe, runtime)
    cfg = recipe.evaluate
    t0 = time.perf_counter()
    lm = HerdLM.load(model.artifact.local_path(), batch_size=cfg.batch_size, threads=cfg.threads,
                     generation=cfg.generation)
    results = evaluate_model(lm, es.local_path(), cfg, val_dir=val.local_path(), chat=uses_chat(model.role),
                             heavy=True, on_suite=lambda n, r: say(f"  {n}: {r.skipped or r.primary_score}"))
    seconds = time.perf_counter() - t0
    metrics = {k: v for r in results.values() for k, v in r.mlflow_metrics().items()}
    metrics["eval/seconds"] = seconds
    harness = None
    if harness_url:
        from herd.eval.harness import HERD_TASKS, run_harness

        harness = run_harness(es.local_path(), backend="local-completions", base_url=harness_url,
                              model_name=harness_model, tasks=harness_tasks or list(HERD_TASKS[:2]), limit=limit)
        say(f"  lm-eval: {json.dumps(harness.metrics)}")

    client = _client(runtime.tracking_uri)
    exp = experiment_id(client, runtime.experiment, runtime.mlflow_artifact_location())
    run = client.create_run(exp, run_name=f"eval {model.role}", tags={
        "herd.kind": "eval", "herd.model": model.digest, "herd.role": model.role, "herd.evalset": es.digest})
    mid = model.model_id or ensure_logged_model(client, exp, digest=model.digest, uri=model.artifact.uri,
                                                fmt=model.artifact.manifest.format, role=model.role,
                                                name=f"{model.role}-{model.digest[:8]}", source_run_id=run.info.run_id)
    client.log_inputs(run.info.run_id, models=[LoggedModelInput(mid)])
    log_model_metrics(client, run.info.run_id, mid, metrics, dataset=DATASET, dataset_digest=es.digest)
    if harness is not None:
        log_model_metrics(client, run.info.run_id, mid, harness.metrics, dataset=DATASET, dataset_digest=es.digest)
    with tempfile.TemporaryDirectory() as tmp:
        write_results(results, Path(tmp) / "results", meta={"model": model.digest, "role": model.role,
                                                            "seconds": seconds, "evalset": es.digest})
        summary = build_report([ModelResults(model.label, model.role, model.digest, results, model_id=mid,
                                             seconds=seconds)], Path(tmp) / "report",
                               seq_len=recipe.data.packing.seq_len, confidence=cfg.confidence)
        client.log_artifacts(run.info.run_id, tmp, "evaluation")
    client.set_terminated(run.info.run_id, "FINISHED")
    return {"model_id": mid, "run_id": run.info.run_id, "summary": summary, "seconds": seconds,
            "harness": harness.metrics if harness else {}}


def show_summary(runtime: Any) -> dict[str, Any]:
    """The comparison table from the LoggedModels' metrics (every model with herd-eval scores), newest first."""
    from herd.platform.lineage import _client
    from herd.platform.model_metrics import read_model_metrics
    from herd.platform.modelref import stage_rank

    client = _client(runtime.tracking_uri)
    exp = client.get_experiment_by_name(runtime.experiment)
    if exp is None:
        return {"suites": [], "rows": [], "comparisons": [], "confidence": 0.95}
    rows, seen = [], set()
    for m in client.search_logged_models(experiment_ids=[exp.experiment_id],
                                         order_by=[{"field_name": "creation_time", "ascending": False}]):
        digest = m.tags.get("herd.digest", m.model_id)
        if digest in seen or not any(x.key.endswith("/seconds") for x in m.metrics or []):
            continue
        seen.add(digest)
        vals = read_model_metrics(client, m.model_id)
        suites: dict[str, Any] = {}
        for s in SUITE_ORDER:
            key = f"{s}/{PRIMARY[s]}"
            if key in vals:
                suites[s] = {"metric": PRIMARY[s], "value": vals[key], "lo": vals.get(f"{key}_lo", vals[key]),
                             "hi": vals.get(f"{key}_hi", vals[key]), "n": int(vals.get(f"{key}_n", 0))}
        role = m.tags.get("herd.role", "external")
        rows.append({"label": f"{role} [{digest[:8]}]", "role": role, "digest": digest, "model_id": m.model_id,
                     "seconds": vals.get("eval/seconds", 0.0), "suites": suites,
                     "harness": {k: v for k, v in vals.items() if k.startswith("harness/")}})
    rows.sort(key=lambda r: stage_rank(r["role"]))
    present = [s for s in SUITE_ORDER if any(s in r["suites"] for r in rows)]
    return {"suites": present, "rows": rows, "comparisons": [], "confidence": 0.95}


__all__ = ["eval_inputs", "eval_model", "show_summary"]
