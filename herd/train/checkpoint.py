"""Training checkpoints: the full state of a run, written per rank, loaded only when complete.

Layout of one checkpoint directory (Ray Train merges every rank's files into the same directory):

    model.pt        rank 0: the model's full state dict (plain keys, loads into herd.model.Llama4)
    optim.pt        rank 0: optimizer + scheduler state dicts
    rank{r}.pt      every rank r: its RNG states, data-reader position and objective state (e.g. alpha EMAs)
    COMPLETE.json   rank 0, written last: step, world size, config hash and the files that must be present

`load()` refuses a directory without COMPLETE.json, with a missing file, with another world size or with
another config hash (CheckpointError), so a partial or orphaned checkpoint, or one of a different
configuration, is never loaded.

Every file loads with ``torch.load(weights_only=True)``: a checkpoint (possibly read back from shared storage)
can never run code. So the schema is plain data only: tensors, lists, tuples, dicts, ints, floats, strings,
bools and None. RNG states are stored in that form (`rng_state`); anything a trainer adds to the rank state
(a ledger, a sampler's RNG, a rollout buffer) must be too, or `save` refuses it (`check_plain`).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

MARKER = "COMPLETE.json"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that must not be loaded (partial, orphaned, or from another configuration)."""


def rng_state() -> dict[str, Any]:
    """torch, python and numpy global RNG states as plain data (loadable with weights_only=True)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)  # {'bit_generator', 'state': {'key', 'pos'}, 'has_gauss', ...}
    state = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {"bit_generator": np_state["bit_generator"],
                  # int64 holds every uint32 word exactly; numpy's ndarray itself would need weights_only=False
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state({"bit_generator": npy["bit_generator"],
                         "state": {"key": npy["key"].numpy().astype(np.uint32), "pos": npy["pos"]},
                         "has_gauss": npy["has_gauss"], "gauss": npy["gauss"]})
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


_PLAIN = (torch.Tensor, torch.dtype, torch.device, str, int, float, bool, bytes, type(None))


def check_plain(obj: Any, where: str = "state") -> None:
    """Raise CheckpointError unless `obj` is plain data that `torch.load(weights_only=True)` reads back.

    Called on everything `save` writes, so a component that puts e.g. a numpy array or a dataclass into its
    state_dict fails at the first checkpoint with the path to the offending value, not at resume time.
    """
    if isinstance(obj, _PLAIN):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str | int | float | bool | type(None)):
                raise CheckpointError(f"{where}: key {k!r} is a {type(k).__name__}; checkpoint keys must be "
                                      "str or int")
            check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
        return
    raise CheckpointError(f"{where} is a {type(obj).__module__}.{type(obj).__name__}: checkpoints hold only "
                          "tensors, lists, tuples, dicts, ints, floats, strings, bools and None (they load with "
                          "weights_only=True); convert it in its state_dict (e.g. numpy -> torch.from_numpy)")


def save(directory: str | Path, *, rank: int, world_size: int, step: int, config_hash: str,
         rank_state: dict[str, Any], model_state: dict[str, Any] | None = None,
         optim_state: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> None:
    """Write this rank's share of a checkpoint into `directory` (rank 0 also writes model, optim, marker)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    check_plain(rank_state, "rank_state")
    torch.save(rank_state, d / f"rank{rank}.pt")
    if rank != 0:
        return
    if model_state is None or optim_state is None:
        raise ValueError("rank 0 must pass model_state and optim_state")
    check_plain(optim_state, "optim_state")
    torch.save(model_state, d / "model.pt")
    torch.save(optim_state, d / "optim.pt")
    files = ["model.pt", "optim.pt"] + [f"rank{r}.pt" for r in range(world_size)]
    marker = {"format": FORMAT_VERSION, "step": step, "world_size": world_size, "config_hash": config_hash,
              "files": files, **(extra or {})}
    (d / MARKER).write_text(json.dumps(marker, indent=1))  # last: its presence marks rank 0's part complete


def read_marker(directory: str | Path) -> dict[str, Any]:
    d = Path(directory)
    if not (d / MARKER).exists():
        raise CheckpointError(f"checkpoint {d} has no {MARKER}: it is partial or orphaned (a crash while it was "
                              "written); it is ignored. Delete it or let the run start over")
    return json.loads((d / MARKER).read_text())


def validate(directory: str | Path, *, world_size: int, config_hash: str) -> dict[str, Any]:
    """The marker of a complete checkpoint of this configuration, else CheckpointError saying why not."""
    d = Path(directory)
    marker = read_marker(d)
    missing = [f for f in marker["files"] if not (d / f).exists()]
    if missing:
        raise CheckpointError(f"checkpoint {d} is partial: missing {missing}; it cannot be resumed")
    if marker["config_hash"] != config_hash:
        raise CheckpointError(
            f"checkpoint {d} belongs to another configuration (hash {marker['config_hash']} vs {config_hash}); "
            "refusing to resume it. Use a new run name or delete the old run's checkpoints")
    if marker["world_size"] != world_size:
        raise CheckpointError(f"checkpoint {d} was written by {marker['world_size']} workers, this run has "
                              f"{world_size}: the data positions would not line up; keep workers.num_workers")
    return marker


def load(directory: str | Path, *, rank: int, world_size: int, config_hash: str
         ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(marker, model_state, optim_state, this rank's state) of a validated checkpoint."""
    d = Path(directory)
    marker = validate(d, world_size=world_size, config_hash=config_hash)
    # weights_only=True everywhere: unpickling a checkpoint from shared storage must never run code.
    model_state = torch.load(d / "model.pt", map_location="cpu", weights_only=True)
    optim_state = torch.load(d / "optim.pt", map_location="cpu", weights_only=True)
    rank_state = torch.load(d / f"rank{rank}.pt", map_location="cpu", weights_only=True)
    return marker, model_state, optim_state, rank_state


def load_model_state(directory: str | Path) -> dict[str, Any]:
    """Only the model weights of a complete checkpoint (for export after training)."""
    d = Path(directory)
    read_marker(d)
    return torch.load(d / "model.pt", map_location="cpu", weights_only=True)
