"""Hugging Face checkpoint interop: ``save_hf`` writes what transformers and vLLM load, ``load_hf`` reads it back.

    from herd.model import save_hf, load_hf
    save_hf(model, "out/", tokenizer="artifacts/tokenizer")   # config.json, generation_config.json, safetensors
    AutoModelForCausalLM.from_pretrained("out/")               # transformers 5.24: Llama4ForCausalLM
    model = load_hf("out/")                                    # also reads directories written by transformers

herd's ``state_dict`` keys are already the transformers keys (``model.layers.0.feed_forward.experts.gate_up_proj``
...), so the mapping is small: text keys move under ``language_model.`` in the multimodal layout, tied
``lm_head.weight`` is omitted, herd-only training state (the aux-free ``expert_bias``) is dropped, and on load the
per-expert Linear layout some exporters write (``experts.{e}.gate_proj.weight``) is fused back. q/k rows stay in
the interleaved Meta order (vLLM permutes them itself; reference §5.3). The checklist vLLM's loader needs
(reference §5.6) is followed: bool ``attn_temperature_tuning`` in config.json and generation_config.json, silu,
no attention bias, explicit head_dim, MoE placement by ``interleave_moe_layer_step``.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from herd.model.config import ModelConfig
from herd.model.decoder import Llama4
from herd.model.moe import MoE

TRANSFORMERS_VERSION = "5.24.0"  # the version herd's parity tests pin (pyproject.toml dev extra)
MM_TEXT_PREFIX = "language_model."
_HERD_ONLY = re.compile(r"\.expert_bias$")
_DROP_ON_LOAD = re.compile(r"(rotary_emb\.(inv_freq|original_inv_freq)|rotary_embedding\.freqs_ci)$")
_PER_EXPERT = re.compile(r"^(.*\.feed_forward\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
)

_QUANTIZE_EXPORT = "herd.quantize.export"  # compressed-tensors decompression (see load_hf)


class CheckpointError(ValueError):
    """A checkpoint directory herd cannot load, with what is wrong and how to fix it."""


def _is_text_key(key: str) -> bool:
    return key.startswith(("model.", "lm_head."))


def hf_state_dict(model: Llama4) -> dict[str, torch.Tensor]:
    """The tensors of the HF checkpoint, under HF names (contiguous, de-aliased)."""
    cfg = model.config
    out: dict[str, torch.Tensor] = {}
    for key, t in model.state_dict().items():
        if _HERD_ONLY.search(key):
            continue
        if key == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # transformers omits the tied head and re-ties on load
        name = MM_TEXT_PREFIX + key if cfg.vision is not None and _is_text_key(key) else key
        out[name] = t.detach().contiguous()
    return out


def _warn_router_bias(model: Llama4) -> None:
    biases = [m.expert_bias for m in model.modules() if isinstance(m, MoE)]
    worst = max((float(b.abs().max()) for b in biases), default=0.0)
    if worst > 0:
        warnings.warn(
            f"aux-free router biases (max |b| = {worst:.3g}) are not part of the Llama 4 format: "
            "transformers and vLLM will route on the raw router logits; train with "
            "router_balance='aux_loss' for exactly matching routing after export",
            stacklevel=3,
        )


def vllm_issues(cfg: ModelConfig) -> list[str]:
    """Reasons vLLM (0.33) would refuse or mis-serve a checkpoint of this config (reference §5.6); empty if none.
    transformers loads all of them; the deploy step checks this before handing a model to vLLM."""
    issues = []
    if cfg.num_experts_per_tok != 1:
        issues.append(
            f"num_experts_per_tok={cfg.num_experts_per_tok}: vLLM applies the router score on the expert input "
            "only for top-1"
        )
    step = cfg.interleave_moe_layer_step
    if cfg.moe_layer_ids != list(range(step - 1, cfg.num_hidden_layers, step)):
        issues.append(
            f"moe_layers {cfg.moe_layer_ids} break the (i+1) % interleave_moe_layer_step rule vLLM uses to place MoE"
        )
    if cfg.attention_chunk_size is not None and cfg.attention_chunk_size % 16:
        issues.append(
            f"attention_chunk_size={cfg.attention_chunk_size} is not a multiple of vLLM's KV-cache block size 16"
        )
    if cfg.head_dim % 8 or cfg.head_dim > 256:
        issues.append(
            f"head_dim={cfg.head_dim}: FlashAttention needs a multiple of 8 up to 256 (use 64 or 128)"
        )
    return issues


def _generation_config(cfg: ModelConfig) -> dict[str, Any]:
    return {
        "_from_model_config": True,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": list(cfg.eos_token_id),
        "pad_token_id": cfg.pad_token_id,
        # vLLM reads this key from generation_config.json and otherwise disables tuning for max_model_len <= 32k
        "attn_temperature_tuning": cfg.attn_temperature_tuning,
        "transformers_version": TRANSFORMERS_VERSION,
    }


def _save_tokenizer(tokenizer: Any, out: Path) -> None:
    if isinstance(tokenizer, (str, Path)):
        src = Path(tokenizer)
        files = [src] if src.is_file() else [src / f for f in _TOKENIZER_FILES if (src / f).exists()]
        if not any(f.name == "tokenizer.json" for f in files):
            raise CheckpointError(f"no tokenizer.json in {src}: pass the tokenizer step's output directory")
        for f in files:
            shutil.copy2(f, out / f.name)
    elif hasattr(tokenizer, "save_pretrained"):  # a transformers tokenizer / processor
        tokenizer.save_pretrained(str(out))
    elif hasattr(tokenizer, "save") and hasattr(tokenizer, "token_to_id"):  # a bare `tokenizers.Tokenizer`
        tokenizer.save(str(out / "tokenizer.json"))
        (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    else:
        raise CheckpointError(
            f"cannot save tokenizer of type {type(tokenizer).__name__}: pass a tokenizer "
            "directory, a transformers tokenizer or a tokenizers.Tokenizer"
        )


def save_hf(
    model: Llama4,
    out_dir: str | Path,
    tokenizer: Any = None,
    *,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = 5 * 1024**3,
    tensors: dict[str, torch.Tensor] | None = None,
    config_extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a transformers Llama 4 checkpoint (``Llama4ForCausalLM`` or, with a vision tower,
    ``Llama4ForConditionalGeneration``). ``dtype`` casts floating tensors (e.g. torch.bfloat16 for serving);
    checkpoints above ``max_shard_bytes`` are sharded with a ``model.safetensors.index.json``.
    ``tensors`` replaces the model's HF tensors and ``config_extra`` adds config.json keys (herd.quantize writes
    a compressed-tensors export this way: packed tensors plus ``quantization_config``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    _warn_router_bias(model)
    tensors = hf_state_dict(model) if tensors is None else tensors
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    tensors = {k: v.cpu() for k, v in tensors.items()}
    weight_dtype = next(iter(tensors.values())).dtype
    config = {
        **cfg.to_hf_dict(),
        "dtype": str(weight_dtype).removeprefix("torch."),
        "transformers_version": TRANSFORMERS_VERSION,
        **(config_extra or {}),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(_generation_config(cfg), indent=2) + "\n")

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in tensors.items():
        nbytes = v.numel() * v.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nbytes
    for stale in out.glob("model*.safetensors*"):  # never leave shards of an older save behind
        stale.unlink()
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(out / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in shard})
        index = {
            "metadata": {"total_size": sum(v.numel() * v.element_size() for v in tensors.values())},
            "weight_map": weight_map,
        }
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    if (
        cfg.vision is not None
    ):  # multimodal: image processor + processor configs (a passed processor overrides)
        from herd.model.vision import write_processor_configs

        write_processor_configs(cfg.vision, out)
    if tokenizer is not None:
        _save_tokenizer(tokenizer, out)
    return out


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise CheckpointError(
            f"no model.safetensors (or index) in {path}: is this a Hugging Face checkpoint "
            "directory? (.bin checkpoints: re-save them with save_pretrained(safe_serialization))"
        )
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        tensors.update(load_file(str(path / f)))
    return tensors


def to_herd_keys(tensors: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """HF checkpoint tensors -> herd state_dict entries (prefixes, per-expert fusion, dropped RoPE buffers)."""
    sd: dict[str, torch.Tensor] = {}
    per_expert: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    for key, t in tensors.items():
        if _DROP_ON_LOAD.search(key):
            continue
        if key.startswith(MM_TEXT_PREFIX):
            key = key[len(MM_TEXT_PREFIX) :]
        elif key.startswith("model.language_model."):  # newer transformers multimodal layout
            key = "model." + key[len("model.language_model.") :]
        m = _PER_EXPERT.match(key)
        if m:
            per_expert.setdefault(m.group(1), {}).setdefault(int(m.group(2)), {})[m.group(3)] = t
            continue
        sd[key] = t
    for prefix, experts in per_expert.items():
        E = cfg.num_local_experts
        if sorted(experts) != list(range(E)) or any(len(p) != 3 for p in experts.values()):
            raise CheckpointError(
                f"{prefix}: per-expert weights must hold gate/up/down for experts 0..{E - 1}"
            )
        # Linear (out, in) layout -> fused right-multiplied layout: gate_up[e] = [Wg.T | Wu.T], down[e] = Wd.T
        sd[prefix + ".gate_up_proj"] = torch.stack(
            [torch.cat([experts[e]["gate_proj"].T, experts[e]["up_proj"].T], dim=1) for e in range(E)]
        )
        sd[prefix + ".down_proj"] = torch.stack([experts[e]["down_proj"].T for e in range(E)])
    return sd


def load_hf(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    overrides: dict[str, Any] | None = None,
) -> Llama4:
    """Load a Llama 4 checkpoint directory (written by ``save_hf`` or by transformers' ``save_pretrained``).

    ``overrides`` sets herd-only ModelConfig fields config.json does not carry (e.g. ``router_balance`` when
    continuing training with aux-free balancing)."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise CheckpointError(f"no config.json in {path}: pass a Hugging Face checkpoint directory")
    config = json.loads((path / "config.json").read_text())
    qcfg = config.pop("quantization_config", None)  # how the tensors are stored, not part of the architecture
    try:
        cfg = ModelConfig.from_hf_dict(config, **(overrides or {}))
    except ValueError as e:  # pydantic's ValidationError included
        raise CheckpointError(f"{path / 'config.json'} is not a Llama 4 config herd can build: {e}") from e
    tensors = _read_tensors(path)
    if qcfg is not None:  # a quantized export: dequantize packed weights (herd.quantize.load_quantized keeps them)
        if qcfg.get("quant_method") != "compressed-tensors":
            raise CheckpointError(f"{path}: quant_method {qcfg.get('quant_method')!r} is not supported; herd reads "
                                  "compressed-tensors exports (herd.quantize, llm-compressor)")
        # imported by name: herd.quantize builds on herd.model, and a static import would put all of quantization
        # into the cache key of every step that trains a model (herd.platform.cache follows imports); the steps
        # that read quantized exports (evaluate, deploy) import herd.quantize themselves
        export = importlib.import_module(_QUANTIZE_EXPORT)
        tensors = export.decompress_tensors(tensors, qcfg)
    sd = to_herd_keys(tensors, cfg)
    if cfg.vision is None:
        sd = {k: v for k, v in sd.items() if not k.startswith(("vision_model.", "multi_modal_projector."))}
    if cfg.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    # build on the meta device: no random init of weights we are about to overwrite (matters for big models)
    with torch.device("meta"):
        model = Llama4(cfg)
    expected = {k for k in model.state_dict() if not _HERD_ONLY.search(k)}
    if cfg.tie_word_embeddings:
        expected.discard("lm_head.weight")
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match its config.json: missing {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}"
        )
    for k, v in sd.items():
        want = model.state_dict()[k].shape
        if v.shape != want:
            raise CheckpointError(f"{k}: checkpoint shape {tuple(v.shape)} != {tuple(want)} from config.json")
    model.load_state_dict(sd, strict=False, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    # buffers not stored in the checkpoint: materialise them
    for m in model.modules():
        if isinstance(m, MoE):
            m.expert_bias = torch.zeros(m.num_experts)
    model.rope_inv_freq = torch.zeros(1)  # replaced with fp32 frequencies by _apply below
    model = model.to(device=device)
    if dtype is not None:
        model = model.to(dtype=dtype)
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise CheckpointError(f"tensors not materialised after loading {path}: {leftover[:8]}")
    return model.eval()
