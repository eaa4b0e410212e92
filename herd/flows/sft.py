"""sft flow: judge the SFT data's difficulty, drop the easy part, fine-tune the base model on the rest.

    herd flow sft                                   # runs data / pretrain / distill first if not cached
    herd flow sft --set posttrain.sft.easy_fraction=0.0     # SFT on all data (the ablation)

Steps:
- `sft.judge` (driver): the judge (posttrain.judge.model, the teacher by default) grades every SFT conversation
  (pass@k on verifiable turns, ties by its loss of the reference answer; loss alone elsewhere) and every RL
  prompt (pass@k, the curriculum's starting point). Outputs the difficulty `ledger` (prompt id, capability,
  judge digest, score, kept) and the kept, tokenized `data` (one conversation per row, assistant-only mask).
- `sft.train` (driver, Ray Train): the one trainer with the cross-entropy objective, initialized from the base
  model (posttrain.model's distilled weights); then the result is compared with its parent on held-out
  arithmetic and knowledge items (paired, McNemar), logged as `vs_parent.*` metrics and a `report`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from herd.flows._posttrain import report_vs_parent
from herd.flows._train import resolve_precision
from herd.platform.runner import Resources, Step, StepContext

if TYPE_CHECKING:
    from herd.platform.config import Recipe

CORPUS, TASKS, TOKENIZER = "data.clean.corpus", "data.synthetic.tasks", "data.tokenizer.tokenizer"


def trained_model_ref(recipe: Recipe, name: str) -> str:
    """The step output holding `models[name]`'s trained weights (the pretrain or the distill model)."""
    if name == recipe.pretrain.model:
        return "pretrain.train.model"
    if name == recipe.distill.student:
        return "distill.train.model"
    raise ValueError(f"models.{name} is trained by neither pretrain (models.{recipe.pretrain.model}) nor "
                     f"distill (models.{recipe.distill.student}); set posttrain.model / posttrain.judge.model "
                     "to one of them")


def judge(ctx: StepContext) -> None:
    from herd.posttrain.config import RLConfig, SFTConfig
    from herd.posttrain.stage import judge_sft

    jcfg = ctx.config["posttrain.judge"]
    # only the fields the judge reads travel (JUDGE_READS); the rest take their defaults, which it never reads
    sft, rl = SFTConfig.model_validate(ctx.config["posttrain.sft"]), RLConfig.model_validate(ctx.config["posttrain.rl"])
    j = ctx.inputs["judge"]
    ctx.progress(0, 1, f"judging SFT data with {jcfg.model} (pass@{jcfg.k})")
    stats = judge_sft(ctx.inputs["corpus"].local_path(), ctx.inputs["tasks"].local_path(),
                      ctx.inputs["tokenizer"].local_path(), j.local_path(), j.digest, jcfg, sft, rl,
                      ctx.output_dir("data", format="jsonl"), ctx.output_dir("ledger", format="jsonl") /
                      "ledger.jsonl", ctx.store.storage_options or None)
    ctx.log_params({"judge": jcfg.model, "judge_digest": j.digest, "k": jcfg.k,
                    "easy_fraction": sft.easy_fraction})
    ctx.log_metrics(stats, step=0)
    ctx.progress(1, 1, f"kept {int(stats['judge/kept'])} of {int(stats['judge/examples'])}")


def train(ctx: StepContext) -> None:
    from herd.flows._train import run_train_step
    from herd.posttrain.data import read_jsonl
    from herd.train.ray_trainer import TrainJob

    cfg = ctx.config["posttrain.sft"]
    model_cfg = next(v for k, v in ctx.config.items() if k.startswith("models."))
    data, parent = ctx.inputs["data"], ctx.inputs["parent"]
    rows = [{"ids": r["ids"], "mask": r["mask"]} for r in read_jsonl(str(data.local_path() / "rows.jsonl"))]
    job = TrainJob(kind="sft", section=cfg.model_dump(), model=model_cfg.model_dump(), train_uri=data.uri,
                   data_id=data.digest, init_uri=parent.uri, init_id=parent.digest, posttrain={"rows": rows},
                   storage_options=ctx.store.storage_options or None)
    ctx.log_params({"rows": len(rows), "steps": cfg.steps, "lr": cfg.optim.lr, "parent": parent.digest,
                    "ledger": ctx.inputs["ledger"].digest})
    run_train_step(ctx, job)
    report_vs_parent(ctx, step=0)


# The fields of the sft and rl sections the judge reads (what it keeps, how it encodes, which prompts, the ledger's
# tiers): its cache key holds only these, so a change of SFT's steps or seed, or of anything RL trains with,
# reuses the judged data and the seeded ledger instead of judging again (1.5-5 minutes on tiny)
JUDGE_READS = {"posttrain.sft": {"easy_fraction", "max_seq_len", "sources"}, "posttrain.rl": {"sources", "tiers"}}


def build(recipe: Recipe) -> list[Step]:
    pt = recipe.posttrain
    sft = resolve_precision(pt.sft)
    read = {k: sec.model_dump(mode="json", include=JUDGE_READS[k]) for k, sec in
            (("posttrain.sft", sft), ("posttrain.rl", pt.rl))}
    return [
        Step("sft.judge", judge, config={"posttrain.judge": pt.judge, **read},
             inputs={"corpus": CORPUS, "tasks": TASKS, "tokenizer": TOKENIZER,
                     "judge": trained_model_ref(recipe, pt.judge.model)},
             outputs={"data": "dataset", "ledger": "dataset"},
             resources=Resources(cpus=0), in_driver=True, code=["herd.posttrain"],
             description=f"judge SFT difficulty with models.{pt.judge.model}, drop the easiest "
                         f"{sft.easy_fraction:.0%} per capability"),
        Step("sft.train", train,
             config={"posttrain.sft": sft, f"models.{pt.model}": recipe.models[pt.model],
                     "posttrain.eval_items": pt.eval_items},
             inputs={"data": "sft.judge.data", "ledger": "sft.judge.ledger", "parent":
                     trained_model_ref(recipe, pt.model), "tokenizer": TOKENIZER, "tasks": TASKS},
             outputs={"model": "model", "plots": "image", "report": "report"},
             roles={"model": "sft"},
             resources=Resources(cpus=0), in_driver=True, code=["herd.posttrain", "herd.train"],
             description=f"SFT models.{pt.model} on the hard examples ({sft.steps} steps)"),
    ]
