"""Security properties of issue 8 item 7: checkpoints that cannot run code, safe downloads, secrets redacted."""

from __future__ import annotations

import pickle
import random
import uuid

import numpy as np
import pytest
import torch
from pydantic import BaseModel, ConfigDict

from herd.platform.config import load_recipe
from herd.platform.errors import StepFailed, StoreError
from herd.platform.redact import redact_override, scrub
from herd.platform.step import Step
from herd.platform.store import ArtifactStore
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


# ------------------------------------------------------------------------------------------------ secrets
class LeakCfg(BaseModel):
    model_config = ConfigDict(extra="forbid")
    endpoint: str  # an innocuous name: only the value says it is a secret


def leak(ctx) -> None:
    """A step whose library echoes a credential into its config and its error message."""
    raise RuntimeError(f"cannot reach {ctx.config.endpoint}")


def test_a_secret_set_on_the_command_line_reaches_no_byte_of_mlflow(ray_local, herd_home, tmp_path):
    import inspect

    import demo_flow

    from herd.platform.runner import Runner
    from herd.platform.runtime import Runtime

    secret = "S3cr3t-" + uuid.uuid4().hex
    source = tmp_path / "raw.txt"
    source.write_text("1 2 3")
    rec = load_recipe("tiny", [f"runtime.storage_options.secret={secret}", f"runtime.home={herd_home}",
                               "runtime.storage_options.endpoint_url=http://127.0.0.1:9"])
    assert secret not in rec.source and "runtime.storage_options.secret=***" in rec.source
    assert "endpoint_url=http://127.0.0.1:9" in rec.source  # harmless settings stay readable
    steps = demo_flow.build_from_recipe(str(source))(rec)
    steps.append(Step("demo.leak", leak, config=LeakCfg(endpoint=f"https://user:{secret}@example.com"),
                      config_path="demo.leak", inputs={"model": "demo.train.model"}, outputs={"report": "report"},
                      in_driver=True))
    runner = Runner(Runtime(rec.runtime), progress=False)
    kw = {"recipe": rec} if "recipe" in inspect.signature(runner.run).parameters else {}
    with pytest.raises(StepFailed):
        runner.run(steps, recipe_source=rec.source, **kw)
    db = herd_home / "mlflow.db"
    assert db.stat().st_size > 0
    written = [db, *[p for p in (herd_home / "mlartifacts").rglob("*") if p.is_file()]]
    assert [str(p) for p in written if secret.encode() in p.read_bytes()] == []
    from mlflow import MlflowClient

    runs = MlflowClient(f"sqlite:///{db}").search_runs([runner.lineage.experiment_id])
    leaked = [r for r in runs if r.data.tags.get("herd.step") == "demo.leak"]
    assert leaked and "***" in str(leaked[0].data.params) + str(leaked[0].data.tags)  # redacted, not dropped


def test_recipe_show_redacts_storage_options_and_keys():
    from typer.testing import CliRunner

    from herd.cli import app

    secret = "AKIA-" + uuid.uuid4().hex
    res = CliRunner().invoke(app, ["recipe", "show", "tiny", "--set", f"runtime.storage_options.key={secret}",
                                   "--set", f"runtime.storage_options={{secret: {secret}x, endpoint_url: http://e}}"])
    assert res.exit_code == 0, res.output
    assert secret not in res.output and "secret: '***'" in res.output and "endpoint_url: http://e" in res.output
    assert redact_override(f"runtime.storage_options={{key: {secret}}}") == "runtime.storage_options=***"
    assert redact_override("pretrain.steps=50") == "pretrain.steps=50"
    assert scrub(f"error: {secret}x at host") == "error: *** at host"  # remembered from the recipe above


def test_artifact_download_refuses_dotdot_keys_and_a_wrong_digest(s3_uri, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("hello")
    store = ArtifactStore(s3_uri, cache_dir=tmp_path / "cache")
    art = store.put_dir(src, kind="dataset", format="txt")
    remote = store.path(store.object_key(art.digest))
    store.fs.pipe_file(f"{remote}/../../../../escape.txt", b"x")  # a key that climbs out of the artifact
    with pytest.raises(StoreError, match="escapes the store root"):
        store.materialize(art.digest)
    assert not list((tmp_path / "cache").rglob("*.txt")) and not (tmp_path / "escape.txt").exists()
    store.fs.rm(f"{remote}/../../../../escape.txt")
    store.fs.pipe_file(f"{remote}/a.txt", b"tampered")  # content no longer matches the digest (its id)
    with pytest.raises(StoreError, match="does not match its digest"):
        store.materialize(art.digest)
    assert not (tmp_path / "cache" / art.digest).exists()  # nothing exposed under the path callers read
