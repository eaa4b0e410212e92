"""rl flow: online RL (GRPO family) from the SFT model, with adaptive filtering and a ledger curriculum.

    herd flow rl                                            # runs sft (and upstream) first if not cached
    herd flow rl --set posttrain.rl.filter_zero_variance=false --set posttrain.rl.curriculum=false   # ablation

One step, `rl.train` (driver, Ray Train): the one trainer with the GRPO objective; its data source rolls out the
current policy (herd's KV-cache sampler) on prompts the difficulty ledger picks (mixed capabilities, a system
instruction pool), grades them with verifiable rewards, drops zero-variance groups and refills. The ledger is an
input (the SFT judge's) and an output (updated after every group), so a cached RL step is exactly reproducible.
After training, the final policy's own rollouts give on-policy DPO `pairs` (correct vs incorrect answers to the
same prompt), and the policy is compared with its parent (the SFT model) on held-out items, paired.
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
    from herd.posttrain.data import write_jsonl
    from herd.posttrain.ledger import Ledger
    from herd.posttrain.rewards import Prompt
    from herd.posttrain.stage import load_tokenizer, onpolicy_pairs, rl_inputs
    from herd.train.ray_trainer import TrainJob

    cfg = ctx.config["posttrain.rl"]
    model_cfg = next(v for k, v in ctx.config.items() if k.startswith("models."))
    parent, ledger_in, tok_dir = ctx.inputs["parent"], ctx.inputs["ledger"], ctx.inputs["tokenizer"].local_path()
    so = ctx.store.storage_options or None
    prompts, entries = rl_inputs(ctx.inputs["tasks"].local_path(), ledger_in.local_path() / "ledger.jsonl", cfg, so)
    job = TrainJob(kind="rl", section=cfg.model_dump(), model=model_cfg.model_dump(), train_uri=ledger_in.uri,
                   data_id=ledger_in.digest, init_uri=parent.uri, init_id=parent.digest,
                   posttrain={"prompts": prompts, "ledger": entries,
                              "tokenizer_json": (tok_dir / "tokenizer.json").read_text()},
                   storage_options=so)
    ctx.log_params({"prompts": len(prompts), "steps": cfg.steps, "group_size": cfg.group_size,
                    "prompts_per_step": cfg.prompts_per_step, "filter_zero_variance": cfg.filter_zero_variance,
                    "curriculum": cfg.curriculum, "kl_coef": cfg.kl_coef, "scale_rewards": cfg.scale_rewards,
                    "parent": parent.digest, "ledger_in": ledger_in.digest})
    outcome = run_train_step(ctx, job)

    # the updated ledger: the input's rows with the RL pool's records replaced by the trained ones
    ledger = Ledger.read(ledger_in.local_path() / "ledger.jsonl")
    trained = Ledger()
    trained.load_state_dict(outcome.data_state["ledger"] if outcome.data_state else {"entries": []})
    ledger.entries.update(trained.entries)
    ledger.write(ctx.output_dir("ledger", format="jsonl") / "ledger.jsonl")

    ctx.progress(0, 1, f"on-policy DPO pairs from {cfg.onpolicy_pairs} prompts")
    policy, tok = load_hf(str(ctx.output_dir("model"))), load_tokenizer(tok_dir)
    pairs = onpolicy_pairs(policy, tok, [Prompt(**p) for p in prompts], cfg, cfg.onpolicy_pairs, seed=cfg.seed)
    write_jsonl(ctx.output_dir("pairs", format="jsonl") / "pairs.jsonl", pairs)
    ctx.log_metrics({"onpolicy_pairs": len(pairs)}, step=cfg.steps)

    report_vs_parent(ctx, step=cfg.steps)


def build(recipe: Recipe) -> list[Step]:
    pt = recipe.posttrain
    rl = resolve_precision(pt.rl)
    return [Step(
        "rl.train", train,
        config={"posttrain.rl": rl, f"models.{pt.model}": recipe.models[pt.model],
                "posttrain.eval_items": pt.eval_items},
        inputs={"parent": "sft.train.model", "ledger": "sft.judge.ledger", "tasks": TASKS, "tokenizer": TOKENIZER},
        outputs={"model": "model", "plots": "image", "ledger": "dataset", "pairs": "dataset", "report": "report"},
        roles={"model": "rl"},
        resources=Resources(cpus=0), in_driver=True, code=["herd.posttrain", "herd.train"],
        description=f"GRPO on the SFT model: {rl.steps} steps x {rl.prompts_per_step} prompts x {rl.group_size}",
    )]
