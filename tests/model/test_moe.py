"""MoE block: sparse routing equals the dense reference formula, unselected experts are never computed,
load balancing (aux loss, aux-free bias) and router statistics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from herd.model import Llama4, ModelConfig
from herd.model.moe import MoE

CFG = {
    "vocab_size": 300,
    "hidden_size": 32,
    "intermediate_size": 48,
    "intermediate_size_mlp": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_local_experts": 6,
    "interleave_moe_layer_step": 1,
}


def dense_reference(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """transformers' formula: every expert on every token, sigmoid(top-k logit) scaling the expert input."""
    logits = moe.router(x)
    top = torch.topk(logits, moe.top_k, dim=1)
    scores = torch.sigmoid(torch.full_like(logits, float("-inf")).scatter(1, top.indices, top.values))
    out = moe.shared_expert(x)
    for e in range(moe.num_experts):
        gate, up = ((scores[:, e : e + 1] * x) @ moe.experts.gate_up_proj[e]).chunk(2, dim=-1)
        out = out + (F.silu(gate) * up) @ moe.experts.down_proj[e]
    return out


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_sparse_moe_equals_dense_formula_and_gradients(top_k: int) -> None:
    torch.manual_seed(0)
    moe = MoE(ModelConfig(**CFG, num_experts_per_tok=top_k, router_balance="none"), 0)
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(2, 37, 32, requires_grad=True)
    y, _, stats = moe(x)
    ref = dense_reference(moe, x.reshape(-1, 32)).reshape(2, 37, 32)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    g_sparse = torch.autograd.grad(y.square().sum(), [x, moe.router.weight, moe.experts.gate_up_proj])
    g_dense = torch.autograd.grad(ref.square().sum(), [x, moe.router.weight, moe.experts.gate_up_proj])
    for a, b in zip(g_sparse, g_dense, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert int(stats.tokens_per_expert.sum()) == 2 * 37 * top_k
    assert 0 < float(stats.entropy) <= math.log(6) + 1e-6


def test_unrouted_experts_are_never_computed() -> None:
    """An expert whose weights are NaN poisons the output only if it runs; the aux-free bias keeps it unrouted."""
    torch.manual_seed(0)
    moe = MoE(ModelConfig(**CFG, num_experts_per_tok=2, router_balance="aux_free"), 0)
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.2)
    with torch.no_grad():
        moe.expert_bias[4] = -1e9
        moe.experts.gate_up_proj[4] = float("nan")
        moe.experts.down_proj[4] = float("nan")
    y, _, stats = moe(torch.randn(64, 32))
    assert torch.isfinite(y).all()
    assert stats.tokens_per_expert[4] == 0


def test_aux_loss_penalises_imbalance_and_trains_the_router() -> None:
    torch.manual_seed(0)
    model = Llama4(ModelConfig(**CFG, router_balance="aux_loss", router_aux_loss_coef=0.01))
    ids = torch.randint(13, 300, (4, 32))
    out = model(ids)
    assert len(out.router_stats) == 2 and out.aux_loss.item() > 0
    out.aux_loss.backward()
    assert model.model.layers[0].feed_forward.router.weight.grad.abs().sum() > 0
    moe = model.model.layers[0].feed_forward
    h = torch.ones(4, 32, 32)  # identical positive tokens
    with torch.no_grad():
        moe.router.weight.zero_()  # uniform router probabilities: the loss is exactly coef, however tokens go
    uniform = moe(h)[1].item()
    assert uniform == pytest.approx(0.01, rel=1e-6)
    with torch.no_grad():
        moe.router.weight[0] = 1.0  # every token collapses onto expert 0
    collapsed = moe(h)[1].item()
    assert collapsed > 1.5 * uniform
    with torch.no_grad():
        assert model(ids).aux_loss.item() == 0.0  # no gradient wanted: no loss computed


def test_aux_free_bias_moves_towards_balance() -> None:
    torch.manual_seed(0)
    model = Llama4(ModelConfig(**CFG, router_balance="aux_free", router_bias_update_rate=0.05)).train()
    moe = model.model.layers[0].feed_forward
    with torch.no_grad():
        moe.router.weight.normal_(0.0, 0.05)
        moe.router.weight[2] += 0.1  # skew routing towards expert 2
    ids = torch.randint(13, 300, (4, 32))
    out = model(ids)
    assert out.aux_loss.item() == 0.0
    load = out.router_stats[0].tokens_per_expert.float()
    model.update_router_bias()
    bias = moe.expert_bias
    assert bias[load.argmax()] < 0 and bias[load.argmin()] > 0
    assert moe._load.sum() == 0  # the counter restarts after every update
    # the bias is training state: it is in state_dict so a resumed trainer keeps balancing where it stopped
    assert "model.layers.0.feed_forward.expert_bias" in model.state_dict()
    for _ in range(40):
        model(ids)
        model.update_router_bias()
    final = model(ids).router_stats[0].tokens_per_expert.float()
    assert final.std() < 0.5 * load.std()


def test_save_hf_warns_about_nonzero_aux_free_bias(tmp_path) -> None:
    from herd.model import save_hf

    model = Llama4(ModelConfig(**CFG, router_balance="aux_free"))
    with torch.no_grad():
        model.model.layers[0].feed_forward.expert_bias[1] = 0.3
    with pytest.warns(UserWarning, match="route on the raw router logits"):
        save_hf(model, tmp_path)
