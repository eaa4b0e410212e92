"""dpo flow: a lightweight DPO pass on the RL policy (Llama 4's last post-training stage).

    herd flow dpo                                           # runs rl (and upstream) first if not cached
    herd flow dpo --set posttrain.dpo.beta=0.2

One step, `dpo.train` (driver, Ray Train). Pairs: the data flow's `preferences` (correct short answer over a
wrong or padded one), the RL step's on-policy pairs (the policy's own correct vs incorrect answers) and the
user's sources. The reference (the RL policy itself) scores every pair once before training; the scored pairs are
an output, so the reference log-probs are cached with the step (keyed by the pairs and the parent digest). Then
the one trainer runs the DPO objective (sigmoid, beta, + NLL on the chosen answer), and the result is compared
with its parent on held-out items, paired.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from herd.flows._posttrain import report_vs_parent
from herd.flows._train import resolve_precision
from herd.platform.runner import Resources, Step, StepContext

if TYPE_CHECKING:
    from herd.platform.config import Recipe

TASKS, TOKENIZER = "data.synthetic.tasks", "data.tokenizer.tokenizer"


def train(ctx: StepContext) -> None:
    from herd.flows._train import run_train_step
    from herd.model import load_hf
    from herd.posttrain.data import read_jsonl, write_jsonl
    from herd.posttrain.sources import user_pairs
    from herd.posttrain.stage import dpo_rows, load_tokenizer
    from herd.train.ray_trainer import TrainJob

    cfg = ctx.config["posttrain.dpo"]
    model_cfg = next(v for k, v in ctx.config.items() if k.startswith("models."))
    parent, tok_dir, tasks = ctx.inputs["parent"], ctx.inputs["tokenizer"].local_path(), ctx.inputs["tasks"]
    so = ctx.store.storage_options or None
    pairs = read_jsonl(str(tasks.local_path() / "preferences.jsonl"))
    pairs += read_jsonl(str(ctx.inputs["onpolicy"].local_path() / "pairs.jsonl"))
    for src in cfg.sources:
        pairs += user_pairs(src, so)
    ctx.progress(0, 1, f"reference log-probs of {len(pairs)} pairs")
    rows = dpo_rows(load_hf(str(parent.local_path())), load_tokenizer(tok_dir), pairs, cfg.max_seq_len + 1)
    write_jsonl(ctx.output_dir("pairs", format="jsonl") / "pairs.jsonl", rows)
    job = TrainJob(kind="dpo", section=cfg.model_dump(), model=model_cfg.model_dump(), train_uri=tasks.uri,
                   data_id=f"{tasks.digest}:{ctx.inputs['onpolicy'].digest}", init_uri=parent.uri,
                   init_id=parent.digest, posttrain={"pairs": rows}, storage_options=so)
    kinds: dict[str, int] = {}
    for p in pairs:
        kinds[str(p.get("kind", ""))] = kinds.get(str(p.get("kind", "")), 0) + 1
    ctx.log_params({"pairs": len(pairs), "steps": cfg.steps, "beta": cfg.beta, "nll_coef": cfg.nll_coef,
                    "parent": parent.digest, **{f"pairs_{k}": v for k, v in sorted(kinds.items())}})
    run_train_step(ctx, job)

    report_vs_parent(ctx, step=cfg.steps)


def build(recipe: Recipe) -> list[Step]:
    pt = recipe.posttrain
    dpo = resolve_precision(pt.dpo)
    return [Step(
        "dpo.train", train,
        config={"posttrain.dpo": dpo, f"models.{pt.model}": recipe.models[pt.model],
                "posttrain.eval_items": pt.eval_items},
        inputs={"parent": "rl.train.model", "onpolicy": "rl.train.pairs", "tasks": TASKS, "tokenizer": TOKENIZER},
        outputs={"model": "model", "plots": "image", "pairs": "dataset", "report": "report"},
        roles={"model": "dpo"},
        resources=Resources(cpus=0), in_driver=True, code=["herd.posttrain", "herd.train"],
        description=f"DPO on the RL policy ({dpo.steps} steps, beta {dpo.beta})",
    )]
