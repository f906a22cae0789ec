"""The useful-FLOP formula against torch's FlopCounterMode on tiny models (forward + backward, no recompute)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from wantune.errors import UserError
from wantune.models.variants import TINY, get_variant
from wantune.perf.build import build_wan
from wantune.perf.flops import Rates, latent_grid, roofline_seconds, step_flops
from wantune.perf.setup import random_inputs


def _counted_matmul_flops(variant, frames, height, width, rank) -> int:
    torch.manual_seed(0)
    model, _, _ = build_wan(variant, torch.device("cpu"), rank=rank)
    model.float()
    i = {k: (v.float() if v is not None and v.is_floating_point() else v)
         for k, v in random_inputs(variant, 1, frames, height, width, "cpu").items()}
    with FlopCounterMode(display=False) as counter:
        out = model(i["x_BCFHW"], i["t"], i["context_BSD"], i["clip_BKE"], i["y_BCFHW"])
        torch.nn.functional.mse_loss(out, i["target"]).backward()
    counts = counter.get_flop_counts()["Global"]
    return sum(n for op, n in counts.items() if "convolution" in str(op) or "mm" in str(op))


@pytest.mark.parametrize("name", ["wan2.2-i2v-a14b", "wan2.1-i2v-14b", "wan2.1-flf2v-14b", "wan2.2-ti2v-5b"])
def test_matmul_and_lora_flops_match_flop_counter(name):
    variant = get_variant(name, **TINY)
    flops = step_flops(variant, 5, 64, 64, batch=1, rank=4)
    ours = flops.matmul_fwd + flops.matmul_bwd + flops.lora_fwd + flops.lora_bwd
    assert ours == _counted_matmul_flops(variant, 5, 64, 64, rank=4)


def test_attention_flops_match_torch_sdpa_formula():
    variant = get_variant("wan2.2-i2v-a14b", **TINY)
    f, h, w = latent_grid(variant, 5, 64, 64)
    tokens, heads, dh = f * h * w, variant.num_heads, variant.head_dim
    q = (1, heads, tokens, dh)
    per_layer_fwd = sdpa_flop_count(q, q, q) + sdpa_flop_count(q, (1, heads, 512, dh), (1, heads, 512, dh))
    flops = step_flops(variant, 5, 64, 64, batch=1, rank=4)
    assert flops.attn_fwd == variant.num_layers * per_layer_fwd
    # torch counts the backward's score recompute (2.5x forward); the useful backward is 2x forward
    bwd_with_recompute = sdpa_backward_flop_count(q, q, q, q) + sdpa_backward_flop_count(
        q, q, (1, heads, 512, dh), (1, heads, 512, dh))
    assert flops.attn_bwd == pytest.approx(variant.num_layers * bwd_with_recompute * 0.8)


def test_full_size_step_and_roofline():
    variant = get_variant("wan2.2-i2v-a14b")
    assert latent_grid(variant, 81, 480, 832) == (21, 30, 52)
    flops = step_flops(variant, 81, 480, 832)
    # self-attention: 40 layers x 4 L^2 D with L = 32760, D = 5120
    assert flops.attn_fwd > 40 * 4 * 32760**2 * 5120
    assert 4.0e15 < flops.total < 4.6e15
    rates = Rates(matmul_fwd=1e15, matmul_bwd=1e15, attn_fwd=1e15, attn_bwd=1e15, lora=1e15)
    assert roofline_seconds(flops, rates) == pytest.approx(flops.total / 1e15)


def test_bad_frames_or_size_raise_user_error():
    variant = get_variant("wan2.2-i2v-a14b")
    with pytest.raises(UserError, match="4k\\+1"):
        latent_grid(variant, 80, 480, 832)
    with pytest.raises(UserError, match="multiples of 16"):
        latent_grid(variant, 81, 480, 830)
