"""Data parallelism applied from outside the single-device model: DDP, or FSDP2 for models that do not fit.

    model = wrap(model, "ddp" | "fsdp2", device)     # no-op when torch.distributed is not initialized
    with no_sync(model, last_micro_batch):            # skip the all-reduce on all but the last micro-batch
    msd, osd = full_state(model, opt)                 # full (unsharded) state on rank 0, {} elsewhere
    load_full_state(model, opt, msd, osd)             # rank 0's full state, broadcast to every rank

With DDP the state is rank 0's plain `state_dict()`s; with FSDP2 `full_state` gathers the shards through
torch.distributed.checkpoint.state_dict (full_state_dict, CPU offload) and `load_full_state` broadcasts rank 0's
copy. Either way the model part is a plain state dict that loads into `Llama4` directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def wrap(model: nn.Module, strategy: str, device: torch.device) -> nn.Module:
    model = model.to(device)
    if not is_dist():
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        # forward_sync_buffers=False: replicas' buffers stay equal by construction (the aux-free router bias is
        # updated from loads summed over ranks), and a per-forward broadcast would overwrite each rank's own
        # load counters between accumulation micro-batches.
        return DDP(model, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False)
    if strategy == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        # Shard each decoder layer, then the root (embeddings, final norm, lm_head): one all-gather per layer
        # overlaps with the previous layer's compute (torchtitan's parallelize_llama does the same).
        layers = getattr(getattr(model, "model", model), "layers", None)
        for layer in layers or []:
            fully_shard(layer)
        fully_shard(model)
        return model
    raise ValueError(f"unknown parallel strategy {strategy!r}: use 'ddp' or 'fsdp2'")


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "no_sync") and hasattr(model, "module") else model


@contextlib.contextmanager
def no_sync(model: nn.Module, sync: bool) -> Iterator[None]:
    """Gradient accumulation: reduce gradients only when `sync` (the last micro-batch of a step)."""
    if sync or not is_dist():
        yield
    elif hasattr(model, "no_sync"):  # DDP
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def _sharded(model: nn.Module) -> bool:
    return hasattr(model, "set_requires_gradient_sync")  # FSDP2 modules (fully_shard) grow this method


def full_state(model: nn.Module, opt: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    # DDP replicas are identical: rank 0's plain state dicts are the full state. FSDP2 gathers its shards.
    if not _sharded(model):
        return ({k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()},
                _cpu(opt.state_dict()))
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_state_dict(model, opt, options=opts)


def load_full_state(model: nn.Module, opt: torch.optim.Optimizer | None, msd: dict[str, Any],
                    osd: dict[str, Any] | None) -> None:
    # DDP: every rank reads the same checkpoint files, so each loads them itself (no broadcast needed).
    if not _sharded(model):
        unwrap(model).load_state_dict(msd)
        if opt is not None and osd is not None:
            opt.load_state_dict(osd)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, msd, options=opts)
    if opt is not None:
        set_optimizer_state_dict(model, opt, osd or {}, options=opts)


def _cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu(v) for v in obj]
    return obj


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalar metrics over ranks (a no-op on one process)."""
    if not is_dist() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= world_size()
    return dict(zip(keys, t.tolist()))


def all_reduce_sum_(t: torch.Tensor) -> torch.Tensor:
    if is_dist():
        dist.all_reduce(t)
    return t
