"""evaluate flow: every model the pipeline makes, on the same suites and items, linked to its MLflow model.

    herd flow evaluate                       # after the training flows; re-uses whatever is cached
    herd flow evaluate --set evaluate.full_suites_on=all --set evaluate.arithmetic.n_items=2000

Steps, derived from the pipeline itself:
- ``evaluate.evalset``: builds the eval set once (held-out knowledge questions and multiple choice, >= 1,000
  arithmetic problems, the NIAH grid at 0.5x..8x the training seq_len, digit images) from the data flow's tasks;
  herd and lm-eval read the same items.
- ``evaluate.<role>``: one step per model output that declares a role (``Step.roles``) in ANY registered flow:
  teacher, student, and sft / rl / dpo / int8 / int4 / fp8 as those flows exist. A new stage joins by declaring a
  role; nothing here changes. One Ray task (1 CPU) per model runs all its suites in-process; two models run side
  by side on 2 cores. NIAH and sampled pass@k run on the final model and its parent only
  (``evaluate.full_suites_on: final``). Scores go onto the model's MLflow LoggedModel (dataset ``herd-eval``),
  per-item predictions are table artifacts of the step run.
- ``evaluate.report``: the comparison across models (markdown + one PNG chart + NIAH heatmaps), paired tests
  of each model against its parent on the same items; artifacts of the evaluate flow run (and of the step run).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from herd.platform.roles import POSTTRAIN_ROLES
from herd.platform.runner import Resources, Step, StepContext

if TYPE_CHECKING:
    from herd.flows import ModelOutput
    from herd.platform.config import Recipe

TASKS, TOKENIZER, CORPUS = "data.synthetic.tasks", "data.tokenizer.tokenizer", "data.clean.corpus"
VAL = "data.pack.pretrain_val"
EVALSET = "evaluate.evalset.evalset"
DATASET = "herd-eval"  # the MLflow dataset name metrics are tied to (its digest: the eval set's)


def model_outputs(recipe: Recipe) -> list[ModelOutput]:
    """Every model output with a role in the flows registered before this one, in pipeline order."""
    import herd.flows as registry  # the module, not `from ... import`: the cache key scans imports

    return registry.model_outputs(recipe, before="evaluate")


def heavy_refs(models: list[ModelOutput], mode: str) -> set[str]:
    """Models that get NIAH and pass@k: all, or the final model (last in pipeline order) and its parent."""
    if mode == "all" or not models:
        return {m.ref for m in models}
    final = models[-1]
    return {final.ref} | ({final.parent} if final.parent else set())


def sampled_refs(models: list[ModelOutput], heavy: set[str], mode: str) -> set[str]:
    """Models that get sampled pass@k: the heavy ones, plus (``posttrain``) each post-trained model and its parent.

    RL optimizes the policy's sampled success, which greedy decoding can hide (a sharper distribution with the same
    argmax): pairing each post-training stage with its parent on sampled pass@1 measures what the stage trained."""
    if mode == "heavy":
        return set(heavy)
    post = [m for m in models if m.role in POSTTRAIN_ROLES]
    return set(heavy) | {m.ref for m in post} | {m.parent for m in post if m.parent}


# ---------------------------------------------------------------------------------------------- steps
def evalset(ctx: StepContext) -> None:
    from herd.eval.evalset import build_evalset

    cfg, seq_len = ctx.config["evaluate"], ctx.config["data.packing"].seq_len
    out = ctx.output_dir("evalset", format="jsonl")
    counts = build_evalset(ctx.inputs["tasks"].local_path(), ctx.inputs["tokenizer"].local_path(), out, cfg,
                           seq_len=seq_len, corpus_dir=ctx.inputs["corpus"].local_path())
    ctx.log_metrics({f"items/{k}": v for k, v in counts.items()}, step=0)


def evaluate_one(ctx: StepContext) -> None:
    import time

    from herd.eval.lm import HerdLM
    from herd.eval.result import write_results
    from herd.eval.run import evaluate_model, uses_chat
    from herd.platform.model_metrics import manifest_entry

    cfg, me = ctx.config["evaluate"], ctx.config["evaluate.model"]
    model, es = ctx.inputs["model"], ctx.inputs["evalset"]
    t0 = time.perf_counter()
    lm = HerdLM.load(model.local_path(), batch_size=cfg.batch_size, threads=cfg.threads or _cpus(),
                     generation=cfg.generation)
    chat = uses_chat(me["role"])

    def progress(name, r) -> None:
        ctx.log_metrics({k: v for k, v in r.mlflow_metrics().items() if not k.endswith("_n")}, step=0)

    results = evaluate_model(lm, es.local_path(), cfg, val_dir=ctx.inputs["val"].local_path(), chat=chat,
                             heavy=me["heavy"], sampled=me["sampled"], on_suite=progress)
    seconds = time.perf_counter() - t0
    metrics = {k: v for r in results.values() for k, v in r.mlflow_metrics().items()}
    metrics["eval/seconds"] = seconds
    out = ctx.output_dir("results", format="json", model=model.digest, role=me["role"],
                         model_metrics=[manifest_entry(model.digest, metrics, dataset=DATASET,
                                                       dataset_digest=es.digest)])
    write_results(results, out, meta={"model": model.digest, "role": me["role"], "parent": me["parent"],
                                      "chat": chat, "heavy": me["heavy"], "sampled": me["sampled"], "seconds": seconds,
                                      "evalset": es.digest})
    ctx.log_metrics({"eval/seconds": seconds}, step=0)
    ctx.log_params({"role": me["role"], "prompt": "chat" if chat else "completion", "heavy": me["heavy"]})
    _log_tables(ctx, results)


def _cpus() -> int:
    import os

    return max(1, len(os.sched_getaffinity(0)) if os.environ.get("OMP_NUM_THREADS") is None
               else int(os.environ["OMP_NUM_THREADS"]))


def _log_tables(ctx: StepContext, results) -> None:
    """Per-item predictions as MLflow table artifacts (``predictions/<suite>.json``, shown in the run's UI)."""
    import tempfile

    if not hasattr(ctx, "log_artifacts"):  # older runners: the predictions stay in the results artifact
        return
    with tempfile.TemporaryDirectory() as tmp:
        logged = []
        for name, r in results.items():
            if not r.samples:
                continue
            cols = sorted({k for s in r.samples for k in s})
            table = {"columns": cols, "data": [[_plain(s.get(c)) for c in cols] for s in r.samples]}
            (Path(tmp) / f"{name}.json").write_text(json.dumps(table))
            logged.append({"path": f"predictions/{name}.json", "type": "table"})
        ctx.log_artifacts(tmp, "predictions")
    ctx.set_tags({"mlflow.loggedArtifacts": json.dumps(logged)})


def _plain(v):
    return json.dumps(v) if isinstance(v, list | dict) else v


def report(ctx: StepContext) -> None:
    from herd.eval.report import ModelResults, build_report
    from herd.eval.result import read_results
    from herd.platform.roles import STAGE_ORDER

    cfg, seq_len = ctx.config["evaluate"], ctx.config["data.packing"].seq_len
    models = []
    for name, art in ctx.inputs.items():
        if not name.startswith("results_"):
            continue
        meta, suites = read_results(art.local_path())
        models.append(ModelResults(label=f"{meta['role']} [{meta['model'][:8]}]", role=meta["role"],
                                   digest=meta["model"], suites=suites, seconds=meta.get("seconds", 0.0)))
    by_role = {m.role: m for m in models}
    for m in models:
        p = ctx.config["evaluate.parents"].get(m.role)
        m.parent = by_role[p].digest if p in by_role else None
    models.sort(key=lambda m: STAGE_ORDER.index(m.role) if m.role in STAGE_ORDER else 99)
    out = ctx.output_dir("report", format="markdown")
    summary = build_report(models, out, seq_len=seq_len, confidence=cfg.confidence, seed=cfg.seed)
    for c in summary["comparisons"]:
        ctx.log_metrics({f"paired/{c['model'].split()[0]}_vs_{c['parent'].split()[0]}/{c['suite']}": c["delta"]},
                        step=0)
    ctx.log_artifacts(out, "evaluation")
    _log_on_flow_run(ctx.tracking_uri, ctx.flow_run_id, out)


def _log_on_flow_run(tracking_uri: str, flow_run_id: str, report_dir: Path) -> None:
    """The report, chart and NIAH heatmaps on the evaluate FLOW run too (the run a user opens to compare models),
    not only on this step's nested run. This step runs in the driver (``in_driver``): the driver writes MLflow."""
    from mlflow import MlflowClient

    MlflowClient(tracking_uri).log_artifacts(flow_run_id, str(report_dir), "evaluation")


# ---------------------------------------------------------------------------------------------- build
def build(recipe: Recipe) -> list[Step]:
    cfg = recipe.evaluate
    packing = recipe.data.packing
    models = [m for m in model_outputs(recipe) if cfg.roles is None or m.role in cfg.roles]
    heavy = heavy_refs(models, cfg.full_suites_on)
    sampled = sampled_refs(models, heavy, cfg.arithmetic.sampled_on)
    roles_of = {m.ref: m.role for m in models}
    steps = [Step("evaluate.evalset", evalset, config={"evaluate": cfg, "data.packing": packing},
                  inputs={"tasks": TASKS, "tokenizer": TOKENIZER, "corpus": CORPUS},
                  outputs={"evalset": "dataset"}, resources=Resources(cpus=1),
                  code=["herd.eval.evalset", "herd.eval.config", "herd.data.synthetic"],
                  description="the eval set: every item and prompt herd and lm-eval score")]
    names: dict[str, str] = {}
    for m in models:
        name = f"evaluate.{m.role}" if m.role not in names.values() else f"evaluate.{m.ref.replace('.', '_')}"
        names[m.ref] = name
        me = {"role": m.role, "heavy": m.ref in heavy, "sampled": m.ref in sampled,
              "parent": roles_of.get(m.parent or "")}
        steps.append(Step(name, evaluate_one, config={"evaluate": cfg, "evaluate.model": me},
                          inputs={"model": m.ref, "evalset": EVALSET, "val": VAL},
                          outputs={"results": "report"}, resources=Resources(cpus=1),
                          # by name: the engine generates; int8/int4 exports are dequantized by herd.quantize.export
                          code=["herd.eval", "herd.model.generate", "herd.serve.engine", "herd.quantize.export"],
                          description=f"{m.role} ({m.ref}) on {', '.join(cfg.suites)}"
                                      + (" incl. NIAH and pass@k" if m.ref in heavy else
                                         " incl. sampled pass@k" if m.ref in sampled else "")))
    if models:
        parents = {m.role: roles_of.get(m.parent or "") for m in models}
        steps.append(Step("evaluate.report", report,
                          config={"evaluate": cfg, "data.packing": packing, "evaluate.parents": parents},
                          inputs={f"results_{i}": f"{names[m.ref]}.results" for i, m in enumerate(models)},
                          outputs={"report": "report"}, resources=Resources(cpus=0), in_driver=True,
                          code=["herd.eval.report", "herd.eval.stats"],
                          description="comparison across models: table, paired tests, chart, NIAH heatmaps"))
    return steps
