"""Security properties of issue 8 item 7: checkpoints that cannot run code, safe downloads, secrets redacted."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch

from herd.train import checkpoint


class _Evil:
    """Unpickling this runs code: exactly what a checkpoint must never be able to do."""

    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def _save(tmp_path, rank_state):
    checkpoint.save(tmp_path, rank=0, world_size=1, step=3, config_hash="h", rank_state=rank_state,
                    model_state={"w": torch.ones(2)}, optim_state={"optimizer": {"state": {}, "param_groups": []}})


def test_rng_state_round_trips_exactly_through_a_weights_only_load(tmp_path):
    torch.manual_seed(1), random.seed(2), np.random.seed(3)
    np.random.normal()  # a cached gaussian is part of numpy's state too
    _save(tmp_path, {"rng": checkpoint.rng_state(), "data": {"pos": 7}})
    want = (torch.rand(3), random.random(), np.random.normal(), np.random.randint(1 << 30))
    torch.manual_seed(99), random.seed(99), np.random.seed(99)
    _, _, _, rank_state = checkpoint.load(tmp_path, rank=0, world_size=1, config_hash="h")
    checkpoint.set_rng_state(rank_state["rng"])
    got = (torch.rand(3), random.random(), np.random.normal(), np.random.randint(1 << 30))
    assert torch.equal(got[0], want[0]) and got[1:] == want[1:]
    assert rank_state["data"] == {"pos": 7}


def test_a_checkpoint_that_would_run_code_is_refused_on_load(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _save(tmp_path, {"rng": checkpoint.rng_state()})
    torch.save({"rng": _Evil()}, tmp_path / "rank0.pt")  # a tampered rank file in shared storage
    with pytest.raises(pickle.UnpicklingError):
        checkpoint.load(tmp_path, rank=0, world_size=1, config_hash="h")
    assert not (tmp_path / "PWNED").exists()


def test_save_refuses_state_that_would_not_load_weights_only(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match=r"rank_state\['sampler'\]\['rng'\] is a numpy.ndarray"):
        _save(tmp_path, {"sampler": {"rng": np.zeros(3)}})
    assert not (tmp_path / "rank0.pt").exists()
