"""Training throughput and MFU of the tiny recipe's models on this machine, side by side with transformers.

    .venv/bin/python benchmarks/train_throughput.py [--steps 6] [--threads 1]

For the teacher and the student of the `tiny` recipe, one process with `--threads` torch threads (one Ray
Train worker's share of a 2-core box) runs herd's training loop (herd.train.loop.Trainer: AdamW + MetaP groups,
schedule, clipping, MoE stats) on packed rows of seq_len tokens, and, as the reference, a plain training step of
transformers' Llama4ForCausalLM built from the same config.json and weights (save_hf) on the same batches.
Also the codistillation step (student + frozen teacher forward on the fly) vs the student alone.
Reported: tokens/s, MFU (6*N_active + attention FLOPs per token, herd.model.ModelConfig.flops_per_token, over
the measured matmul peak), the herd/transformers speed ratio, and bf16-autocast vs fp32.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from herd.model import Llama4, save_hf
from herd.platform.config import load_recipe
from herd.train.config import AlphaConfig
from herd.train.loop import Trainer, cpu_has_native_bf16
from herd.train.losses import CodistillObjective, CrossEntropyObjective
from herd.train.metrics import matmul_peak_flops


class _Rows:
    """Random token rows in the packed-shard format (speed does not depend on the text)."""

    def __init__(self, batch: int, seq_len: int, vocab: int) -> None:
        self.g = torch.Generator().manual_seed(0)
        self.batch, self.seq_len, self.vocab = batch, seq_len, vocab

    def __iter__(self):
        while True:
            ids = torch.randint(13, self.vocab, (self.batch, self.seq_len + 1), generator=self.g)
            yield {"input_ids": ids, "loss_mask": torch.ones_like(ids, dtype=torch.uint8)}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        return None


def herd_tokens_per_s(mcfg, section, steps: int, precision: str, teacher=None) -> float:
    cfg = section.model_copy(update={"steps": steps + 2, "precision": precision, "eval_batches": 0,
                                     "log_every": 1})
    cfg.schedule.warmup_steps = 1
    rows = _Rows(cfg.micro_batch_size, 256, mcfg.vocab_size)
    objective = CrossEntropyObjective() if teacher is None else \
        CodistillObjective(Llama4(teacher), 2.0, AlphaConfig(rule="dynamic"))
    t = Trainer(Llama4(mcfg), objective, rows, cfg, device=torch.device("cpu"), config_hash="b")
    for _ in range(2):  # warm-up steps (allocator, oneDNN kernels)
        t.train_step()
    t0 = time.perf_counter()
    for _ in range(steps):
        t.train_step()
    return steps * cfg.micro_batch_size * 256 / (time.perf_counter() - t0)


def hf_tokens_per_s(mcfg, batch: int, steps: int) -> float:
    from transformers import Llama4ForCausalLM

    with tempfile.TemporaryDirectory() as d:
        save_hf(Llama4(mcfg), d)
        model = Llama4ForCausalLM.from_pretrained(d, dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    rows = iter(_Rows(batch, 256, mcfg.vocab_size))

    def step() -> None:
        ids = next(rows)["input_ids"]
        loss = model(input_ids=ids[:, :-1], labels=ids[:, :-1]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch * 256 / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    recipe = load_recipe("tiny")
    peak32 = matmul_peak_flops(torch.float32, torch.device("cpu"))
    peak16 = matmul_peak_flops(torch.bfloat16, torch.device("cpu"))
    print(f"threads {args.threads}; native bf16 (AMX/AVX512-BF16): {cpu_has_native_bf16()}; measured matmul "
          f"peak fp32 {peak32 / 1e9:.0f} GFLOP/s, bf16 {peak16 / 1e9:.0f} GFLOP/s")
    print("| model | params (active) | herd fp32 tok/s | MFU fp32 | herd bf16 tok/s | bf16/fp32 | "
          "transformers fp32 tok/s | herd/transformers |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ("teacher", "student"):
        m = recipe.models[name]
        fpt = 3 * m.flops_per_token(256)
        f32 = herd_tokens_per_s(m, recipe.pretrain, args.steps, "fp32")
        b16 = herd_tokens_per_s(m, recipe.pretrain, max(args.steps // 3, 2), "bf16")
        hf = hf_tokens_per_s(m, recipe.pretrain.micro_batch_size, args.steps)
        print(f"| {name} | {m.num_params() / 1e6:.1f}M ({m.num_active_params() / 1e6:.1f}M) | {f32:,.0f} | "
              f"{f32 * fpt / peak32:.1%} | {b16:,.0f} | {b16 / f32:.2f}x | {hf:,.0f} | {f32 / hf:.2f}x |")
    # codistillation with teacher logits on the fly: the student's step plus a frozen-teacher forward
    s, t = recipe.models["student"], recipe.models["teacher"]
    hard = herd_tokens_per_s(s, recipe.distill, args.steps, "fp32")
    onfly = herd_tokens_per_s(s, recipe.distill, args.steps, "fp32", teacher=t)
    fpt = 3 * s.flops_per_token(256) + t.flops_per_token(256)
    print(f"\ndistill student, fp32: hard labels {hard:,.0f} tok/s; codistill with the teacher on the fly "
          f"{onfly:,.0f} tok/s ({onfly / hard:.2f}x, MFU {onfly * fpt / peak32:.1%} counting the teacher forward)")


if __name__ == "__main__":
    main()
