"""The compressed-tensors export: transformers reloads it (dequantized) with no missing/unexpected keys and logits
close to the parent, herd's load_hf reads it back, and its layout is what vLLM 0.29's Llama 4 loader and
compressed-tensors MoE code accept (read from the installed vLLM source, not run on a GPU)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from herd.model import Llama4, load_hf

# KL(parent || export) per token: int8 per channel is ~lossless, int4 g32 RTN and fp8 lose a little (note §3)
MAX_KL = {"int8": 1e-3, "int4": 3e-2, "fp8": 5e-3}  # measured: 4e-5, 8e-3, 5e-4


def _kl(a: torch.Tensor, b: torch.Tensor) -> float:
    p, q = F.log_softmax(a.float(), -1), F.log_softmax(b.float(), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def _keys(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return {k: (str(f.get_slice(k).get_dtype()), tuple(f.get_slice(k).get_shape())) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)


@pytest.mark.parametrize("scheme", ["int8", "int4", "fp8"])
def test_transformers_reloads_export_dequantized(scheme: str, tiny_model: Llama4, exports: dict[str, Path],
                                                 ids: torch.Tensor) -> None:
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    hf, info = AutoModelForCausalLM.from_pretrained(
        str(exports[scheme]), quantization_config=CompressedTensorsConfig(dequantize=True), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    herd_q = load_hf(exports[scheme])  # herd's reader of the same export: dequantized through compressed-tensors
    with torch.no_grad():
        parent, theirs, ours = tiny_model(ids).logits, hf(ids).logits, herd_q(ids).logits
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-5)  # the two readers agree
    kl = _kl(parent, theirs)
    assert 0 < kl < MAX_KL[scheme], kl  # quantized (not a copy of the parent), yet close to it
    if scheme == "int8":  # random weights give flat logits: top-1 is only stable for the near-lossless scheme
        top1 = float((parent.argmax(-1) == theirs.argmax(-1)).float().mean())
        assert top1 >= 0.9, top1


@pytest.mark.parametrize("scheme", ["int8", "int4", "fp8"])
def test_layout_is_per_expert_with_explicit_ignore(scheme: str, tiny_model: Llama4, exports: dict[str, Path]) -> None:
    from compressed_tensors.quantization import QuantizationConfig

    keys = _keys(exports[scheme])
    assert not [k for k in keys if re.search(r"experts\.(gate_up_proj|down_proj)$", k)]  # nothing fused left
    I, H, E = 256, 128, 4
    for e in range(E):
        for proj, (n, k) in {"gate_proj": (I, H), "up_proj": (I, H), "down_proj": (H, I)}.items():
            name = f"model.layers.1.feed_forward.experts.{e}.{proj}"
            if scheme == "fp8":
                assert keys[f"{name}.weight"] == ("F8_E4M3", (n, k))
                assert keys[f"{name}.weight_scale"] == ("F32", (n, 1))
            else:
                bits, group = (8, k) if scheme == "int8" else (4, 32)
                assert keys[f"{name}.weight_packed"] == ("I32", (n, k * bits // 32))
                assert keys[f"{name}.weight_scale"] == ("F32", (n, k // group))
                assert keys[f"{name}.weight_shape"] == ("I64", (2,))
    # attention, router, embeddings and lm_head stay dense
    for k in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.feed_forward.router.weight",
              "model.embed_tokens.weight", "lm_head.weight"):
        assert keys[k][0] == "F32", k
    qcfg = json.loads((exports[scheme] / "config.json").read_text())["quantization_config"]
    parsed = QuantizationConfig.model_validate(qcfg)
    assert parsed.quant_method == "compressed-tensors" and parsed.quantization_status == "compressed"
    w = parsed.config_groups["group_0"].weights
    if scheme == "int8":  # explicit per channel: 0.17's W8A16 preset would be group-128
        assert (w.num_bits, w.strategy, w.group_size) == (8, "channel", None)
    ignore = set(parsed.ignore)
    for layer in range(2):
        assert {f"model.layers.{layer}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")} <= ignore
    assert {"model.layers.1.feed_forward.router", "lm_head"} <= ignore
    assert not [n for n in ignore if "experts" in n or "shared_expert" in n or ".feed_forward.gate" in n]


@pytest.mark.parametrize("scheme", ["int8", "int4", "fp8"])
def test_vllm_llama4_loader_accepts_layout(scheme: str, exports: dict[str, Path]) -> None:
    """What vLLM 0.29 does with the export, from its source: the config parses through its compressed-tensors
    config class, the MoE scheme lookup (unfused per-expert names) finds one scheme of a supported MoE kind,
    attention's fused qkv_proj is ignored as a whole, and every per-expert tensor maps onto a FusedMoE param."""
    from vllm.model_executor.layers.fused_moe.routed_experts import RoutedExperts
    from vllm.model_executor.layers.quantization.compressed_tensors.compressed_tensors import (
        CompressedTensorsConfig,
    )
    from vllm.model_executor.layers.quantization.compressed_tensors.schemes.compressed_tensors_wNa16 import (
        WNA16_SUPPORTED_BITS,
    )
    from vllm.model_executor.models.llama4 import Llama4ForCausalLM

    qcfg = json.loads((exports[scheme] / "config.json").read_text())["quantization_config"]
    cfg = CompressedTensorsConfig.from_config(qcfg)
    cfg.packed_modules_mapping = dict(Llama4ForCausalLM.packed_modules_mapping)
    cfg._add_fused_moe_to_target_scheme_map()
    layer = torch.nn.Linear(1, 1)
    prefix = "model.layers.1.feed_forward.experts"
    schemes = [cfg.get_scheme_dict(layer, f"{prefix}.0.{p}") for p in ("gate_proj", "up_proj", "down_proj")]
    assert schemes[0] is not None and schemes.count(schemes[0]) == 3  # get_moe_method demands one scheme
    wq, aq = schemes[0]["weights"], schemes[0]["input_activations"]
    if scheme == "fp8":
        assert cfg._is_fp8_w8a8(wq, aq) and schemes[0]["format"] == "float-quantized"
    else:
        assert cfg._is_wNa16_group_channel(wq, aq)  # -> CompressedTensorsWNA16(Marlin)MoEMethod
        assert schemes[0]["format"] == "pack-quantized" and wq.num_bits in WNA16_SUPPORTED_BITS
    assert cfg.get_scheme_dict(layer, "model.layers.0.self_attn.qkv_proj") is None
    assert cfg.get_scheme_dict(layer, "model.layers.1.feed_forward.router") is None
    assert cfg.get_scheme_dict(layer, "model.layers.0.feed_forward.gate_up_proj") is not None  # dense MLP
    # Llama4Model.load_weights' per-expert rule: name.replace(weight_name, param_name)
    mapping = RoutedExperts.build_expert_params_mapping("gate_proj", "down_proj", "up_proj", num_experts=4)
    expert_keys = [k for k in _keys(exports[scheme]) if ".experts." in k]
    assert len(expert_keys) == 4 * 3 * (2 if scheme == "fp8" else 3)
    for k in expert_keys:
        hits = [(p, w, e, s) for p, w, e, s in mapping if w in k]
        assert len(hits) == 1, (k, hits)
        param = k.replace(hits[0][1], hits[0][0])
        assert re.search(r"experts\.routed_experts\.(w13|w2)_weight(_packed|_scale|_shape)?$", param), param


def test_multimodal_export_prefixes_names(tmp_path: Path) -> None:
    from herd.model import ModelConfig, VisionConfig
    from herd.quantize import QuantScheme
    from herd.quantize.export import export_compressed
    from herd.quantize.targets import quantize_weights

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=512, hidden_size=64, intermediate_size=64, intermediate_size_mlp=128,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, num_local_experts=2,
                      vision=VisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                          intermediate_size=128, image_size=56, patch_size=14,
                                          projector_input_dim=48, projector_output_dim=48,
                                          vision_output_dim=48))
    model = Llama4(cfg).eval()
    s = QuantScheme(scheme="int4", group_size=32)
    out = export_compressed(model, quantize_weights(model, s), s, tmp_path)
    keys = _keys(out)
    assert "language_model.model.layers.1.feed_forward.experts.0.gate_proj.weight_packed" in keys
    ignore = json.loads((out / "config.json").read_text())["quantization_config"]["ignore"]
    assert "language_model.lm_head" in ignore and any(n.startswith("vision_model.") for n in ignore)
    assert any(n.startswith("multi_modal_projector.") for n in ignore)
    back = load_hf(out)
    ids = torch.randint(10, 512, (1, 8))
    with torch.no_grad():
        assert _kl(model(ids).logits, back(ids).logits) < 5e-2
