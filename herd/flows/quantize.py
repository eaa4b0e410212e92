"""quantize flow: int8 and int4 (and fp8) variants of the pipeline's final model, gated on quality, registered.

    herd flow quantize                                   # tiny: the dpo model, int8 RTN + int4 GPTQ g32, < 1 min
    herd flow quantize --set 'quantize.schemes=[{scheme: int4, method: gptq, group_size: 64}]'

One step per scheme, ``quantize.<scheme>`` (a Ray task, 1 CPU): it calibrates (GPTQ) on the data flow's training
rows, writes a compressed-tensors checkpoint (loads in transformers and vLLM; herd's engine runs it on packed
kernels via ``herd.quantize.load_quantized``) and gates it against the parent on held-out validation tokens (KL,
top-1 agreement) and a paired mini-evaluation: herd.eval's arithmetic and multiple-choice suites on the first
``quantize.eval_items`` items of each in the evaluate flow's eval set (``evaluate.evalset``, built from the data
flow's tasks alone, so it runs before this step), chat prompts for a post-trained parent. A variant that fails a threshold fails its step with what to try; one
that passes becomes a LoggedModel with role int8/int4/fp8 whose lineage names the parent model and the
calibration data. The parent is the last model the flows registered before this one produce, by role order
(``herd.platform.roles.STAGE_ORDER``: dpo > rl > sft > student > teacher). The library is herd.quantize.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from herd.platform.errors import FlowError
from herd.platform.roles import QUANTIZED_ROLES, STAGE_ORDER
from herd.platform.runner import Resources, Step, StepContext

if TYPE_CHECKING:
    from herd.platform.config import Recipe

CALIBRATION = {"pretrain": "data.pack.pretrain", "sft": "data.pack.sft"}
VAL = "data.pack.pretrain_val"
# the evaluate flow's eval set (built from the data flow's tasks alone): the gate's mini-eval scores the same items
EVALSET = "evaluate.evalset.evalset"


def quantize(ctx: StepContext) -> None:
    from herd.eval import uses_chat
    from herd.quantize.run import quantize_checkpoint

    cfg, role = ctx.config["quantize"], ctx.config["parent_role"]
    scheme = cfg.schemes[0]
    parent, calib, val = ctx.inputs["parent"], ctx.inputs["calibration"], ctx.inputs["val"]
    evalset = ctx.inputs.get("evalset")
    ctx.log_params({"scheme": scheme.scheme, "method": scheme.method, "group_size": scheme.group_size,
                    "act_order": scheme.act_order, "parent": parent.digest[:12], "calibration": calib.digest[:12],
                    "calibration_samples": cfg.calibration.samples, "dtype": cfg.dtype,
                    "eval_items": cfg.eval_items, "evalset": evalset.digest[:12] if evalset else "none"})
    report = quantize_checkpoint(parent.local_path(), scheme, cfg, calib.uri, val.uri,
                                 ctx.output_dir("model", format="hf"),
                                 evalset=evalset.local_path() if evalset else None, chat=uses_chat(role),
                                 arithmetic=ctx.config["evaluate.arithmetic"],
                                 storage_options=ctx.store.storage_options or None,
                                 log=lambda s: print(f"[herd] {ctx.name}: {s}", flush=True))
    metrics = {f"gate/{k}": v for k, v in report["metrics"].items()}
    metrics.update({"size_bytes": report["size_bytes"], **{f"time/{k}": v for k, v in report["timings"].items()}})
    ctx.log_metrics(metrics, step=0)
    ctx.set_tags({"herd.quantize.gate": report["gate"], "herd.quantize.parent_role": role})


def final_model(recipe: Recipe) -> tuple[str, str]:
    """(role, "<step>.<output>") of the pipeline's final unquantized model: the latest role in STAGE_ORDER among
    the model outputs of the flows registered before quantize."""
    import herd.flows as registry  # the module, not `from ... import`: the cache key scans imports

    found = {m.role: m.ref for m in registry.model_outputs(recipe, before="quantize")
             if m.role not in QUANTIZED_ROLES and m.role != "external"}
    if not found:
        raise FlowError("quantize: no flow before it produces a model (teacher, student, sft, rl or dpo); "
                        "register pretrain or distill before quantize in herd/flows/__init__.py")
    role = max(found, key=STAGE_ORDER.index)
    return role, found[role]


def build(recipe: Recipe) -> list[Step]:
    from herd.eval.config import ArithmeticConfig

    cfg = recipe.quantize
    role, parent = final_model(recipe)
    return [Step(
        f"quantize.{s.scheme}", quantize,
        # each step keys on its own scheme only: changing int4's group size does not re-run int8
        config={"quantize": cfg.model_copy(update={"schemes": [s]}), "parent_role": role,
                # the gate scores greedily: only the answer budget, so changing pass@k's sampling re-quantizes nothing
                "evaluate.arithmetic": ArithmeticConfig(max_new_tokens=recipe.evaluate.arithmetic.max_new_tokens)},
        inputs={"parent": parent, "calibration": CALIBRATION[cfg.calibration.split], "val": VAL,
                **({"evalset": EVALSET} if cfg.eval_items else {})},
        outputs={"model": "model"},
        roles={"model": s.scheme},
        resources=Resources(cpus=1),
        code=["herd.quantize", "herd.model"],
        description=f"{s.scheme} {s.method}{f' g{s.group_size}' if s.group_size else ''} of the {role} model, "
                    "gated on KL, top-1 and a paired mini-eval",
    ) for s in cfg.schemes]
