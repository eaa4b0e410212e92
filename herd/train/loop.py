"""The one training loop of herd: pretraining, codistillation (and later SFT / RL / DPO) differ only in the
objective (herd.train.losses) and the data they are handed.

    trainer = Trainer(model, objective, reader, cfg, device=dev, config_hash=h, flops_per_token=f)
    trainer.restore(ckpt_dir)                 # optional: continue a checkpointed run exactly
    trainer.fit(reporter)                     # reporter: metrics every log_every steps, checkpoints every K

Per optimizer step: `grad_accum` micro-batches (gradient all-reduce only on the last one), bf16 autocast when
configured (fp32 master weights and fp32 loss), the MoE aux loss inside the objective, global grad-norm
clipping, AdamW with MetaP groups, the lr schedule, then the model's aux-free router-bias update when it has
one. Everything stateful (model, optimizer, scheduler, data position, RNG, step, objective) is checkpointed,
so a resumed run takes exactly the steps the uninterrupted run would have taken.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from herd.train import checkpoint, parallel
from herd.train.config import _TrainBase
from herd.train.losses import Batch, Objective, masked_ce
from herd.train.metrics import ExpertLoad, matmul_peak_flops
from herd.train.optim import build_optimizer, build_scheduler

WriteCheckpoint = Callable[[Path], None]


class Reporter(Protocol):
    """Where the loop sends metrics and checkpoints (Ray Train in workers; a directory in unit tests)."""

    def report(self, step: int, metrics: dict[str, float], write_checkpoint: WriteCheckpoint | None) -> None: ...


class Resumable(Protocol):
    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf: lower optim.lr, raise warmup, or keep optim.grad_clip > 0."""


def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16 (Linux /proc/cpuinfo flags): without them CPU bf16 matmuls are emulated and slow."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> "bf16" where bf16 matmuls are fast (CUDA, AMX/AVX512-BF16 CPUs), else "fp32"."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" or cpu_has_native_bf16() else "fp32"


def _autocast(device: torch.device, precision: str) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _batch(rows: dict[str, torch.Tensor], device: torch.device) -> Batch:
    extras = {k: v for k, v in rows.items() if k not in ("input_ids", "loss_mask")}  # objective-specific
    return Batch.from_rows(rows["input_ids"], rows["loss_mask"], extras).to(device)


class Trainer:
    def __init__(self, model: nn.Module, objective: Objective, data: Resumable, cfg: _TrainBase, *,
                 device: torch.device, config_hash: str, flops_per_token: float | None = None,
                 eval_data: Callable[[], Iterable[dict[str, torch.Tensor]]] | None = None,
                 strategy: str = "ddp") -> None:
        torch.manual_seed(cfg.seed)  # equal init on every rank (DDP also broadcasts rank 0's weights)
        self.cfg, self.device, self.config_hash = cfg, device, config_hash
        self.precision = resolve_precision(cfg.precision, device)
        self.raw_model = model
        self.model = parallel.wrap(model, strategy, device)
        self.objective, self.data, self.eval_data = objective, data, eval_data
        self.opt = build_optimizer(self.raw_model, cfg.optim)
        self.sched = build_scheduler(self.opt, cfg.schedule, cfg.steps)
        self.step = 0  # optimizer steps done
        self.tokens = 0  # target tokens seen, all ranks
        self.flops_per_token = flops_per_token
        self.rank, self.world = parallel.rank(), parallel.world_size()
        self._it: Iterator[dict[str, torch.Tensor]] | None = None
        self._peak: float | None = None
        self._bias_layers: list[nn.Module] | None = None

    # ---- state -------------------------------------------------------------------------------------------
    def write_checkpoint(self, directory: Path) -> None:
        msd, osd = parallel.full_state(self.model, self.opt)
        rank_state = {"rng": checkpoint.rng_state(), "data": self.data.state_dict(),
                      "objective": self.objective.state_dict()}
        checkpoint.save(directory, rank=self.rank, world_size=self.world, step=self.step,
                        config_hash=self.config_hash, rank_state=rank_state, model_state=msd,
                        optim_state={"optimizer": osd, "scheduler": self.sched.state_dict(),
                                     "step": self.step, "tokens": self.tokens},
                        extra={"tokens": self.tokens})

    def restore(self, directory: str | Path) -> int:
        """Load a complete checkpoint of this configuration; return the step it continues from."""
        _, msd, osd, rank_state = checkpoint.load(directory, rank=self.rank, world_size=self.world,
                                                  config_hash=self.config_hash)
        parallel.load_full_state(self.model, self.opt, msd, osd["optimizer"])
        self.sched.load_state_dict(osd["scheduler"])
        self.step, self.tokens = int(osd["step"]), int(osd["tokens"])
        self.data.load_state_dict(rank_state["data"])
        self.objective.load_state_dict(rank_state["objective"])
        checkpoint.set_rng_state(rank_state["rng"])
        self._it = None
        return self.step

    # ---- loop --------------------------------------------------------------------------------------------
    def _next_rows(self) -> dict[str, torch.Tensor]:
        if self._it is None:
            self._it = iter(self.data)
        return next(self._it)

    def train_step(self) -> dict[str, Any]:
        cfg = self.cfg
        self.model.train()
        sums: dict[str, float] = {}
        stats_list = []
        n_tok = 0
        for micro in range(cfg.grad_accum):
            batch = _batch(self._next_rows(), self.device)
            n_tok += batch.x.numel()  # processed tokens (what MFU and tokens/s count)
            with parallel.no_sync(self.model, sync=micro == cfg.grad_accum - 1):
                with _autocast(self.device, self.precision):
                    out = self.objective(self.model, batch)
                (out.loss / cfg.grad_accum).backward()
            for k, v in out.metrics.items():
                sums[k] = sums.get(k, 0.0) + v / cfg.grad_accum
            stats_list.append(out.router_stats)
        if not math.isfinite(sums.get("loss", 0.0)):
            raise TrainingDiverged(f"loss is {sums.get('loss')} at step {self.step}: lower optim.lr or raise "
                                   "schedule.warmup_steps")
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        sums["grad_norm"] = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        g = self.opt.param_groups[0]  # MetaP groups carry multipliers: log the schedule's lr at the base width
        sums["lr"] = cfg.optim.lr * g["lr"] / g["initial_lr"]
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.sched.step()
        self._update_router_bias()
        self.step += 1
        self.tokens += n_tok * self.world
        return {"metrics": sums, "router_stats": stats_list, "tokens": n_tok}

    def _update_router_bias(self) -> None:
        """Aux-loss-free balancing (DeepSeek-V3): after each optimizer step every MoE layer nudges its routing
        bias toward equal load; the layers sum their loads over ranks first, so replicas stay identical."""
        if self._bias_layers is None:  # the innermost modules that have it (a model-level one would repeat)
            having = [m for m in self.raw_model.modules() if hasattr(m, "update_router_bias")]
            self._bias_layers = [m for m in having
                                 if not any(c is not m and hasattr(c, "update_router_bias") for c in m.modules())]
        for m in self._bias_layers:
            m.update_router_bias()

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean CE on the held-out batches (the same batches every time), averaged over ranks."""
        if self.eval_data is None or self.cfg.eval_batches == 0:
            return None
        model = parallel.unwrap(self.model)
        model.eval()
        total, n = 0.0, 0.0
        for i, rows in enumerate(self.eval_data()):
            if i >= self.cfg.eval_batches:
                break
            b = _batch(rows, self.device)
            with _autocast(self.device, self.precision):
                out = model(b.x)
            logits = out.logits if hasattr(out, "logits") else out
            w = float(b.mask.sum())
            total += float(masked_ce(logits, b.y, b.mask)) * w
            n += w
        vals = parallel.all_reduce_mean({"t": total, "n": n}, self.device)
        return vals["t"] / max(vals["n"], 1.0)

    def fit(self, reporter: Reporter) -> dict[str, float]:
        """Train from self.step to cfg.steps; return the last reported metrics."""
        cfg = self.cfg
        if self.flops_per_token and self._peak is None:
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
            self._peak = matmul_peak_flops(dtype, self.device)
        load = ExpertLoad()
        window_sums: dict[str, float] = {}
        window_counts: dict[str, int] = {}
        window_tokens, window_time = 0, 0.0
        last: dict[str, float] = {}
        while self.step < cfg.steps:
            t0 = time.perf_counter()
            res = self.train_step()
            window_time += time.perf_counter() - t0
            window_tokens += res["tokens"]
            for k, v in res["metrics"].items():
                window_sums[k] = window_sums.get(k, 0.0) + v
                window_counts[k] = window_counts.get(k, 0) + 1
            for s in res["router_stats"]:
                load.add(s)
            last_step = self.step == cfg.steps
            log_now = self.step % cfg.log_every == 0 or last_step
            ckpt_now = self.step % cfg.checkpoint.every_steps == 0 or last_step
            if not (log_now or ckpt_now):
                continue
            # each metric over the steps that reported it: a codistill step without the teacher (teacher_every)
            # has no kl / teacher_ce, and a window mean over all steps would understate them
            metrics = {k: v / window_counts[k] for k, v in window_sums.items()}
            metrics["lr"] = res["metrics"]["lr"]
            metrics.update(load.summary())
            # tokens/s of the whole job: every rank runs the same steps in the same time (DDP syncs them)
            metrics["tokens_per_s"] = window_tokens / max(window_time, 1e-9)
            metrics = parallel.all_reduce_mean(metrics, self.device)
            metrics["tokens_per_s"] *= self.world
            if self.flops_per_token and self._peak:
                metrics["mfu"] = metrics["tokens_per_s"] * self.flops_per_token / (self._peak * self.world)
            metrics["tokens"] = float(self.tokens)
            if ckpt_now:
                ev = self.evaluate()
                if ev is not None:
                    metrics["eval/loss"] = ev
            metrics["step"] = float(self.step)
            reporter.report(self.step, metrics, self.write_checkpoint if ckpt_now else None)
            last = metrics
            window_sums, window_counts, window_tokens, window_time = {}, {}, 0, 0.0
            load.reset()
        return last


class DirectoryReporter:
    """A Reporter for one process without Ray: keeps metrics and writes checkpoints under `root/step_N`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.history: list[dict[str, float]] = []

    def report(self, step: int, metrics: dict[str, float], write_checkpoint: WriteCheckpoint | None) -> None:
        self.history.append(dict(metrics))
        if write_checkpoint is not None:
            write_checkpoint(self.root / f"step_{step:08d}")

    def latest_checkpoint(self) -> Path | None:
        done = sorted(p for p in self.root.glob("step_*") if (p / checkpoint.MARKER).exists())
        return done[-1] if done else None
