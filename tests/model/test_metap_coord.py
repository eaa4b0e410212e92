"""MetaP coordinate check (Yang et al. 2022 §D.1), the fast version of benchmarks/metap_coord_check.py:
after a few AdamW steps at one lr, activation and update sizes stay flat across widths (and, with depth-μP,
depths) with MetaP and grow without it."""

from __future__ import annotations

import pytest

from herd.model import metap

WIDTHS = [64, 128, 256]


@pytest.fixture(scope="module")
def checks() -> dict[bool, dict[str, list[float]]]:
    return {use: metap.coord_check(WIDTHS, use_metap=use, steps=6, lr=3e-3) for use in (True, False)}


def test_metap_keeps_every_layer_flat_across_width(checks):
    slopes = {k: metap.width_slope(WIDTHS, v) for k, v in checks[True].items()}
    assert max(abs(s) for s in slopes.values()) < 0.25, slopes


def test_standard_parametrization_drifts_with_width(checks):
    slopes = {k: metap.width_slope(WIDTHS, v) for k, v in checks[False].items()}
    assert slopes["logits.delta"] > 0.4, slopes  # readout updates grow ~linearly in width
    assert max(slopes[k] for k in slopes if k.startswith("layer")) > 1.0, slopes


def test_depth_mup_keeps_updates_flat_across_depth():
    depths = [2, 4, 8]
    scaled = metap.depth_check(depths, depth_scaling=True, width=64, steps=6, lr=3e-3)
    plain = metap.depth_check(depths, depth_scaling=False, width=64, steps=6, lr=3e-3)
    assert max(abs(metap.width_slope(depths, v)) for v in scaled.values()) < 0.25, scaled
    # without depth-μP, deeper stacks move further per step
    assert metap.width_slope(depths, plain["last.out.delta"]) > 0.6, plain
