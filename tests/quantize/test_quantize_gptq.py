"""GPTQ beats RTN on the layer reconstruction error it minimises, on a real layer of a model with real inputs."""

from __future__ import annotations

import pytest
import torch

from herd.model import Llama4
from herd.quantize.gptq import collect_hessians, gptq, layer_error
from herd.quantize.rtn import rtn
from herd.quantize.targets import target_names, target_weight


@pytest.fixture(scope="module")
def hessians(tiny_model: Llama4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    batches = [torch.randint(0, 512, (4, 64), generator=g) for _ in range(4)]
    return collect_hessians(tiny_model, batches, target_names(tiny_model))


def test_hessians_cover_every_target_routed_or_dense(tiny_model: Llama4, hessians: dict[str, torch.Tensor]) -> None:
    names = target_names(tiny_model)
    routed = [n for n in names if ".experts." in n]
    assert routed and {n for n in names if ".experts." not in n} <= set(hessians)
    assert sum(n in hessians for n in routed) >= 6  # experts the router chose got their own tokens' Hessian
    H = hessians["model.layers.1.feed_forward.experts.0.down_proj"] if \
        "model.layers.1.feed_forward.experts.0.down_proj" in hessians else hessians[names[2]]
    assert torch.allclose(H, H.T, atol=1e-5) and torch.linalg.eigvalsh(H).min() > -1e-4  # symmetric PSD


@pytest.mark.parametrize(("bits", "group", "act_order"), [(4, 32, False), (4, 32, True), (4, 128, False),
                                                          (8, 0, False)])
def test_gptq_error_below_rtn(tiny_model: Llama4, hessians: dict[str, torch.Tensor], bits: int, group: int,
                              act_order: bool) -> None:
    for name in ("model.layers.0.feed_forward.down_proj", "model.layers.1.feed_forward.shared_expert.gate_proj"):
        w, H = target_weight(tiny_model, name).detach(), hessians[name]
        e_rtn = layer_error(w, rtn(w, bits, group).dequantize(), H)
        q = gptq(w, H, bits, group, act_order=act_order)
        e_gptq = layer_error(w, q.dequantize(), H)
        assert q.q.dtype == torch.int8 and int(q.q.int().abs().max()) <= 2 ** (bits - 1)
        assert q.scale.shape == (w.shape[0], w.shape[1] // (group or w.shape[1]))
        assert e_gptq < 0.9 * e_rtn, (name, e_gptq, e_rtn)


def test_gptq_handles_dead_inputs() -> None:
    torch.manual_seed(0)
    x = torch.randn(512, 64)
    x[:, 5] = 0  # an input no token exercised
    H = 2 * x.T @ x / 512
    w = torch.randn(32, 64)
    q = gptq(w, H, 4, 32)
    assert torch.isfinite(q.dequantize()).all()
    assert layer_error(w, q.dequantize(), H) < layer_error(w, rtn(w, 4, 32).dequantize(), H)
