"""herd's quantization and packing are bit-exact against compressed-tensors 0.17 (the serializer vLLM pins)."""

from __future__ import annotations

import pytest
import torch
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
from compressed_tensors.quantization.lifecycle.forward import quantize as ct_quantize
from compressed_tensors.quantization.utils.helpers import calculate_qparams

from herd.quantize import QuantScheme
from herd.quantize.export import compress, ct_scheme
from herd.quantize.rtn import rtn


@pytest.mark.parametrize(("scheme", "group"), [("int4", 32), ("int4", 128), ("int8", 0)])
def test_rtn_codes_and_packing_match_compressed_tensors(scheme: str, group: int) -> None:
    torch.manual_seed(0)
    w = torch.randn(64, 256) * 0.05
    s = QuantScheme(scheme=scheme, group_size=group)
    cs = ct_scheme(s)
    qw = rtn(w, s.bits, group)
    # scales: compressed-tensors' own qparams from the same min/max
    G = group or w.shape[1]
    g = w.reshape(64, -1, G)
    ct_scale, _ = calculate_qparams(g.amin(-1), g.amax(-1), cs.weights)
    torch.testing.assert_close(qw.scale, ct_scale.reshape(qw.scale.shape), atol=0, rtol=0)
    # codes: compressed-tensors' quantize() with the stored scale
    ct_q = ct_quantize(w, qw.scale, None, cs.weights, dtype=torch.int8)
    assert torch.equal(qw.q, ct_q)
    # on-disk tensors: compressed-tensors' compressor on the dequantized weight gives the same bits
    ours = compress(qw, torch.float32)
    theirs = PackedQuantizationCompressor.compress({"weight": qw.dequantize(), "weight_scale": qw.scale}, cs)
    assert set(ours) == set(theirs) == {"weight_packed", "weight_scale", "weight_shape"}
    for k in ours:
        assert ours[k].dtype == theirs[k].dtype and torch.equal(ours[k], theirs[k]), k
    assert ours["weight_packed"].shape == (64, 256 * s.bits // 32)
    # and its decompressor reproduces herd's reconstruction exactly
    back = PackedQuantizationCompressor.decompress(ours, cs)["weight"]
    torch.testing.assert_close(back, qw.dequantize(), atol=0, rtol=0)


def test_fp8_weight_is_e4m3_per_channel() -> None:
    from herd.quantize.rtn import fp8

    w = torch.randn(32, 64)
    qw = fp8(w)
    assert qw.q.dtype == torch.float8_e4m3fn and qw.scale.shape == (32, 1)
    rel = (qw.dequantize() - w).norm() / w.norm()
    assert rel < 0.05, rel  # e4m3 has a 3-bit mantissa: ~2-3 % relative error
