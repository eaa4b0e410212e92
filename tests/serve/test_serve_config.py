"""The deploy section and the Ray Serve LLM configs built from it (no Ray cluster needed: fast)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from herd.serve.config import DeployConfig


def test_deploy_config_checks_name_what_is_wrong() -> None:
    with pytest.raises(ValidationError, match="list model roles"):
        DeployConfig(models=["student", "nonsense"])
    with pytest.raises(ValidationError, match="repeats"):
        DeployConfig(models=["student", "student"])
    with pytest.raises(ValidationError, match="served_model_name names one model"):
        DeployConfig(models=["teacher", "student"], served_model_name="x")
    with pytest.raises(ValidationError, match="needs engine: vllm"):
        DeployConfig(engine="herd", tensor_parallel_size=2)
    cfg = DeployConfig(models=["teacher", "int4"])
    assert [cfg.served_name(r) for r in cfg.models] == ["herd-teacher", "herd-int4"]
    assert DeployConfig(served_model_name="mine").served_name("student") == "mine"


def test_recipes_keep_validating_with_the_moved_section() -> None:
    from herd.platform.config import load_recipe
    from herd.platform.sections import DeployConfig as Reexported

    assert Reexported is DeployConfig
    for name in ("tiny", "scout", "maverick"):
        assert isinstance(load_recipe(name).deploy, DeployConfig)


def test_vllm_llm_config_cpu_and_gpu_differ_only_in_engine_args_and_placement(tmp_path) -> None:
    from herd.serve.app import ModelSpec
    from herd.serve.vllm_app import llm_config

    spec = ModelSpec(id="herd-student", path=str(tmp_path), engine="vllm")
    cpu = llm_config(spec, DeployConfig(max_model_len=256))
    gpu = llm_config(spec, DeployConfig(max_model_len=256, num_gpus=1, tensor_parallel_size=2, dtype="bfloat16"))
    assert cpu.accelerator_config.kind == "cpu" and gpu.accelerator_config.kind == "gpu"
    assert cpu.engine_kwargs["enforce_eager"] is True and "enforce_eager" not in gpu.engine_kwargs
    assert cpu.placement_group_config["bundles"] == [{"CPU": 1.0}]
    assert gpu.placement_group_config["bundles"] == [{"GPU": 1, "CPU": 1.0}] * 2
    assert cpu.runtime_env["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "1" and gpu.runtime_env is None
    assert cpu.model_id == gpu.model_id == "herd-student" and cpu.max_request_context_length == 256
    # the replica actor takes no CPU of its own (Ray Serve LLM adds it to the engine's bundle)
    assert cpu.deployment_config["ray_actor_options"]["num_cpus"] == 0


def test_auto_engine_sends_quantized_checkpoints_to_herds_engine_on_cpu(tmp_path) -> None:
    from herd.serve.app import resolve_engine
    from tests.serve.tiny import write_tiny_model

    ckpt = write_tiny_model(tmp_path / "m")
    assert resolve_engine(ckpt, DeployConfig(engine="auto")) == "vllm"
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, "quantization_config": {"quant_method": "compressed-tensors"}}))
    assert resolve_engine(ckpt, DeployConfig(engine="auto")) == "herd"
    assert resolve_engine(ckpt, DeployConfig(engine="auto", num_gpus=1)) == "vllm"
    assert resolve_engine(ckpt, DeployConfig(engine="vllm")) == "vllm"


def test_api_key_is_hashed_and_required_when_named(monkeypatch) -> None:
    from herd.serve.app import DeployError, api_key_sha256

    assert api_key_sha256(DeployConfig()) is None
    monkeypatch.delenv("HERD_K", raising=False)
    with pytest.raises(DeployError, match="export HERD_K"):
        api_key_sha256(DeployConfig(api_key_env="HERD_K"))
    monkeypatch.setenv("HERD_K", "sk-1")
    digest = api_key_sha256(DeployConfig(api_key_env="HERD_K"))
    assert digest is not None and len(digest) == 64 and "sk-1" not in digest


def test_served_engine_loads_through_the_one_inference_loader(tmp_path) -> None:
    # herd_server._load_engine is herd.quantize's load_for_inference with dtype None (deploy.dtype auto): a dense
    # checkpoint keeps its own dtype, a compressed-tensors export runs packed kernels with fp32 activations
    import shutil

    import torch

    from herd.model import load_hf, save_hf
    from herd.quantize import QuantScheme
    from herd.quantize.export import export_compressed
    from herd.quantize.modules import Int4Linear
    from herd.quantize.targets import quantize_weights
    from herd.serve.engine import EngineConfig, SamplingParams
    from herd.serve.herd_server import _load_engine
    from tests.serve.tiny import write_tiny_model

    dense = write_tiny_model(tmp_path / "dense", hidden_size=128)
    bf16 = save_hf(load_hf(dense, dtype=torch.bfloat16), tmp_path / "bf16", tokenizer=dense)
    model = load_hf(dense)
    int4 = export_compressed(model, quantize_weights(model, QuantScheme(scheme="int4", group_size=32)),
                             QuantScheme(scheme="int4", group_size=32), tmp_path / "int4")
    shutil.copy(dense / "tokenizer.json", int4 / "tokenizer.json")
    cfg = EngineConfig(max_num_seqs=2, max_model_len=64, max_num_batched_tokens=64)
    greedy = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    for path, dtype, want, packed in [(dense, None, torch.float32, False), (bf16, None, torch.bfloat16, False),
                                      (bf16, torch.float32, torch.float32, False), (int4, None, torch.float32, True)]:
        engine = _load_engine(str(path), cfg, dtype)
        try:
            assert engine.model.model.embed_tokens.weight.dtype == want, (path.name, dtype)
            assert any(isinstance(m, Int4Linear) for m in engine.model.modules()) == packed, path.name
            out = engine.generate_batch([engine.encode("the quick brown fox")], greedy)[0]
            assert len(out.token_ids) == 4
        finally:
            engine.shutdown()


def test_replicas_keep_serve_logs_off_stderr_and_merge_the_jobs_env_vars(tmp_path, monkeypatch) -> None:
    import ray

    from herd.serve.app import ModelSpec
    from herd.serve.herd_server import HerdServer, llm_config
    from herd.serve.vllm_app import SERVE_ENV, replica_runtime_env

    # access logs stay in the replicas' log files, not on stderr (tailed, published and printed per request)
    assert SERVE_ENV == {"RAY_SERVE_LOG_TO_STDERR": "0"} and replica_runtime_env() == {"env_vars": SERVE_ENV}
    # env_vars merge key by key, later envs win (a user's own setting beats herd's default)
    env = replica_runtime_env({"env_vars": {"A": "1"}, "working_dir": "w"}, None,
                              {"env_vars": {"B": "2", "RAY_SERVE_LOG_TO_STDERR": "1"}})
    assert env == {"working_dir": "w", "env_vars": {"RAY_SERVE_LOG_TO_STDERR": "1", "A": "1", "B": "2"}}
    job = type("Context", (), {"runtime_env": {"env_vars": {"HF_HOME": "/h"}, "working_dir": "w"}})()
    monkeypatch.setattr(ray, "get_runtime_context", lambda: job)
    opts = HerdServer.get_deployment_options(llm_config(ModelSpec(id="m", path=str(tmp_path), engine="herd"),
                                                        DeployConfig()))
    assert opts["ray_actor_options"]["runtime_env"] == {
        "working_dir": "w", "env_vars": {"RAY_SERVE_LOG_TO_STDERR": "0", "HF_HOME": "/h"}}
