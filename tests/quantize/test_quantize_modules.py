"""herd's packed runtime (torch's int8/int4 CPU kernels, fp8 via _scaled_mm) on an export matches the dequantized
reference, and shapes the kernels cannot run give a clear error instead of a crash."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from herd.model import Llama4, load_hf
from herd.quantize.modules import (
    Int4Linear,
    Int8Linear,
    KernelShapeError,
    PackedExperts,
    load_quantized,
    quantize_model_,
)
from herd.quantize.rtn import rtn


@pytest.mark.parametrize("scheme", ["int8", "int4", "fp8"])
def test_packed_model_matches_dequantized_reference(scheme: str, exports: dict[str, Path], ids: torch.Tensor) -> None:
    ref = load_hf(exports[scheme])  # dense, dequantized through compressed-tensors
    fast = load_quantized(exports[scheme], dtype=torch.float32)
    moe = fast.model.layers[1].feed_forward
    assert isinstance(moe.experts, PackedExperts)
    assert type(fast.model.layers[0].feed_forward.down_proj).__name__ != "Linear"
    assert type(fast.model.layers[0].self_attn.q_proj) is torch.nn.Linear  # attention stays dense
    with torch.inference_mode():
        a, b = ref(ids).logits, fast(ids).logits
        a1, b1 = ref(ids[:1, :1]).logits, fast(ids[:1, :1]).logits  # one token: the MoE's single-expert path
    # int kernels compute exactly the dequantized matmul (fp32); fp8 also quantizes activations per token
    # (2 layers of e4m3's 3-bit mantissa on the activations: a few % of the logit range, see the fp8 test below)
    tol = 6e-2 * a.abs().max() if scheme == "fp8" else 1e-4
    assert (a - b).abs().max() < tol and (a1 - b1).abs().max() < tol, ((a - b).abs().max(), (a1 - b1).abs().max())
    if scheme != "fp8":  # bf16 activations, what the engine runs: within bf16 rounding of the reference
        bf = load_quantized(exports[scheme], dtype=torch.bfloat16)
        with torch.inference_mode():
            c = bf(ids).logits.float()
        assert (a - c).abs().max() < 0.03 * a.abs().max()


def test_fp8_linear_is_exactly_the_w8a8_emulation() -> None:
    """FP8Linear (torch._scaled_mm on CPU) = per-token e4m3 activations times per-channel e4m3 weights, what
    vLLM's W8A8 fp8 kernels compute on an Ada/Hopper GPU."""
    from herd.quantize.modules import FP8Linear
    from herd.quantize.rtn import fp8, fp8_activation

    torch.manual_seed(0)
    w, x = torch.randn(48, 64), torch.randn(5, 64)
    qw = fp8(w)
    xq, xs = fp8_activation(x)
    emulated = (xq.float() * xs) @ qw.dequantize().T
    torch.testing.assert_close(FP8Linear(qw, torch.float32)(x), emulated, atol=1e-5, rtol=1e-5)


def test_generate_runs_on_packed_model(exports: dict[str, Path]) -> None:
    from herd.model.generate import SamplingParams, generate

    ref, fast = load_hf(exports["int8"]), load_quantized(exports["int8"], dtype=torch.float32)
    prompts = [[0, 5, 9, 30, 41], [0, 7, 8]]
    p = SamplingParams(temperature=0.0, max_new_tokens=6)
    assert [g.tokens for g in generate(fast, prompts, p)] == [g.tokens for g in generate(ref, prompts, p)]


def test_int4_kernel_limits_raise_clear_errors() -> None:
    w = torch.randn(24, 64)  # 24 output rows: the int4 kernel tiles rows by 16
    with pytest.raises(KernelShapeError, match="out_features 24 is not a multiple of 16"):
        Int4Linear(rtn(w, 4, 32))
    with pytest.raises(KernelShapeError, match="group_size 16 is not one of"):
        Int4Linear(rtn(torch.randn(32, 64), 4, 16))
    with pytest.raises(KernelShapeError, match="one scale per output channel"):
        Int8Linear(rtn(torch.randn(32, 64), 8, 32))


def test_int8_unaligned_width_is_refused_not_crashed() -> None:
    """torch._weight_int8pack_mm segfaults on bf16 inputs when in_features % 16 != 0 (quantize-notes §6.2);
    herd refuses before the kernel runs, and fp32 (which does not crash) is allowed."""
    w = torch.randn(32, 250)
    with pytest.raises(KernelShapeError, match="in_features 250 is not a multiple of 16.*segfault"):
        Int8Linear(rtn(w, 8), compute_dtype=torch.bfloat16)
    lin = Int8Linear(rtn(w, 8), compute_dtype=torch.float32)
    x = torch.randn(3, 250)
    torch.testing.assert_close(lin(x), x @ rtn(w, 8).dequantize().T, atol=1e-4, rtol=1e-4)
    # the refusal is what stands between a user and the crash: the raw kernel takes the process down
    code = ("import torch; x = torch.randn(4, 250, dtype=torch.bfloat16); "
            "w = torch.randint(-127, 127, (32, 250), dtype=torch.int8); "
            "torch._weight_int8pack_mm(x, w, torch.ones(32, dtype=torch.bfloat16)); print('survived')")
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    if proc.returncode == 0:
        pytest.skip("this CPU/torch build does not crash on unaligned bf16 int8 widths")
    assert proc.returncode != 0 and "survived" not in proc.stdout


def test_swap_checks_every_shape_before_touching_the_model(tiny_model: Llama4) -> None:
    import copy

    from herd.quantize import QuantScheme
    from herd.quantize.targets import quantize_weights

    model = copy.deepcopy(tiny_model)
    qweights = quantize_weights(model, QuantScheme(scheme="int4", group_size=32))
    bad = "model.layers.1.feed_forward.shared_expert.down_proj"
    qweights[bad] = rtn(torch.randn(120, 256), 4, 32)  # 120 rows
    with pytest.raises(KernelShapeError, match=bad):
        quantize_model_(model, qweights)
    assert all(type(m).__name__ != "PackedExperts" for m in model.modules())  # untouched


def test_load_for_inference_dispatches_on_the_config(tiny_model: Llama4, exports: dict[str, Path],
                                                      tmp_path: Path) -> None:
    from herd.model import save_hf
    from herd.quantize.modules import load_for_inference

    dense = load_for_inference(save_hf(tiny_model, tmp_path / "dense"))
    assert not any(isinstance(m, PackedExperts) for m in dense.modules())
    assert dense.lm_head.weight.dtype == torch.bfloat16
    packed = load_for_inference(exports["int4"])
    assert isinstance(packed.model.layers[1].feed_forward.experts, PackedExperts)
