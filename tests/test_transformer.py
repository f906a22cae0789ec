"""WanModel against the official goldens in ../shared/fixtures (float32), plus shapes and input errors."""

from __future__ import annotations

import pytest
import torch
from conftest import FIXTURES
from safetensors.torch import load_file

from wantune.errors import UserError
from wantune.models.transformer import WanModel
from wantune.models.variants import TINY, get_variant

GOLDENS = {
    "wan21_t2v_tiny": "wan2.1-t2v-1.3b",
    "wan21_i2v_tiny": "wan2.1-i2v-14b",
    "wan21_flf2v_tiny": "wan2.1-flf2v-14b",
    "wan22_t2v_tiny": "wan2.2-t2v-a14b",
    "wan22_i2v_tiny": "wan2.2-i2v-a14b",
    "wan22_ti2v_tiny": "wan2.2-ti2v-5b",
}


def tiny_model(fixture: str) -> WanModel:
    model = WanModel(get_variant(GOLDENS[fixture], **TINY))
    model.load_state_dict(load_file(FIXTURES / f"{fixture}.safetensors"), strict=True)
    return model.eval()


def golden_inputs(golden: dict) -> tuple[tuple, dict]:
    """The official per-sample inputs as a batch of one."""
    kwargs = {}
    if "y" in golden:
        kwargs["y_BCFHW"] = golden["y"][None]
    if "clip_fea" in golden:
        kwargs["clip_fea_BKD"] = golden["clip_fea"]
    return (golden["x"][None], golden["t"], golden["context"][None]), kwargs


@pytest.mark.parametrize("fixture", sorted(GOLDENS))
def test_tiny_config_matches_fixture(fixture, fixture_index):
    config, variant = fixture_index[fixture]["config"], get_variant(GOLDENS[fixture], **TINY)
    for key in ("dim", "ffn_dim", "freq_dim", "text_dim", "num_heads", "num_layers", "text_len", "eps",
                "model_type", "in_dim", "out_dim", "qk_norm", "cross_attn_norm"):
        assert getattr(variant, key) == config[key], key
    assert list(variant.patch_size) == config["patch_size"]


@pytest.mark.parametrize("fixture", sorted(GOLDENS))
def test_matches_official_golden(fixture):
    golden = load_file(FIXTURES / f"{fixture}.golden.safetensors")
    args, kwargs = golden_inputs(golden)
    with torch.no_grad():
        out = tiny_model(fixture)(*args, **kwargs)
    assert out.dtype == torch.float32 and out.shape == (1, *golden["out"].shape)
    err = (out[0] - golden["out"]).abs().max().item()
    assert err < 1e-4, f"{fixture}: max abs error {err:.3g} vs the official golden"


def test_batch_equals_single_samples():
    """Batching two samples gives each sample's own output (no cross-talk; timesteps per sample)."""
    golden = load_file(FIXTURES / "wan21_i2v_tiny.golden.safetensors")
    model = tiny_model("wan21_i2v_tiny")
    torch.manual_seed(0)
    x2 = torch.stack([golden["x"], torch.randn_like(golden["x"])])
    y2 = torch.stack([golden["y"], golden["y"]])
    clip2 = torch.cat([golden["clip_fea"], golden["clip_fea"] * 0.5])
    ctx2 = torch.nn.functional.pad(golden["context"][None], (0, 0, 0, 3)).expand(2, -1, -1)  # padded 7 -> 10
    t2 = torch.tensor([700.0, 250.0])
    with torch.no_grad():
        both = model(x2, t2, ctx2, clip_fea_BKD=clip2, y_BCFHW=y2)
        second = model(x2[1:], t2[1:], golden["context"][None], clip_fea_BKD=clip2[1:], y_BCFHW=y2[1:])
    assert (both[0] - golden["out"]).abs().max() < 1e-4
    assert (both[1] - second[0]).abs().max() < 1e-5


def test_ti2v_uniform_per_token_t_equals_scalar_t():
    model = tiny_model("wan22_ti2v_tiny")
    golden = load_file(FIXTURES / "wan22_ti2v_tiny.golden.safetensors")
    x, ctx = golden["x"][None], golden["context"][None]
    with torch.no_grad():
        per_token = model(x, torch.full((1, 48), 500.0), ctx)
        scalar = model(x, torch.tensor([500.0]), ctx)
        official = model(x, golden["t"], ctx)
    assert (per_token - scalar).abs().max() < 1e-5
    assert (official - scalar).abs().max() > 1e-3  # frame-0 tokens at t=0 do change the output


def test_bfloat16_weights_and_autocast_stay_close_to_float32():
    model = tiny_model("wan22_t2v_tiny")
    golden = load_file(FIXTURES / "wan22_t2v_tiny.golden.safetensors")
    args, _ = golden_inputs(golden)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = model(*args)
    with torch.no_grad():
        out = model.to(torch.bfloat16)(*args)
    for result in (autocast, out):
        assert result.dtype == torch.float32
        assert (result[0] - golden["out"]).abs().max() < 0.05


def test_builds_on_meta_with_expected_structure():
    with torch.device("meta"):
        model = WanModel(get_variant("wan2.1-i2v-14b"))
    assert len(model.blocks) == 40 and model.variant.name == "wan2.1-i2v-14b"
    block = model.blocks[0]
    for layer in (block.self_attn.q, block.cross_attn.k_img, block.ffn[0], block.ffn[2]):
        assert type(layer) is torch.nn.Linear


@pytest.mark.parametrize("fixture,shapes,match", [
    ("wan21_i2v_tiny", dict(y=None), "pass the image conditioning"),
    ("wan21_t2v_tiny", dict(x=(1, 16, 3, 7, 8)), "not a multiple of the patch"),
    ("wan21_t2v_tiny", dict(context=(1, 600, 32)), "text context"),
    ("wan21_t2v_tiny", dict(t=(1, 5)), "timesteps of shape"),
    ("wan21_i2v_tiny", dict(clip=None), "CLIP image features"),
    ("wan21_t2v_tiny", dict(context=(2, 7, 32)), "text context batch"),
])
def test_bad_inputs_raise_user_error(fixture, shapes, match):
    model = tiny_model(fixture)
    x = torch.zeros(shapes.get("x", (1, 16, 3, 8, 8)))
    inputs = dict(t=torch.zeros(shapes.get("t", (1,))), context_BLD=torch.zeros(shapes.get("context", (1, 7, 32))))
    if model.variant.needs_image:
        inputs["y_BCFHW"] = None if "y" in shapes else torch.zeros(1, 20, *x.shape[2:])
        inputs["clip_fea_BKD"] = None if "clip" in shapes else torch.zeros(1, 257, 1280)
    with pytest.raises(UserError, match=match):
        model(x, **inputs)


def test_blocks_can_be_wrapped_for_checkpointing():
    """`model.blocks[i]` is a self-contained callable: wrapping it in activation checkpointing changes nothing."""
    from torch.utils.checkpoint import checkpoint

    class Checkpointed(torch.nn.Module):
        def __init__(self, block):
            super().__init__()
            self.block = block

        def forward(self, *args):
            return checkpoint(self.block, *args, use_reentrant=False)

    golden = load_file(FIXTURES / "wan21_i2v_tiny.golden.safetensors")
    args, kwargs = golden_inputs(golden)
    model = tiny_model("wan21_i2v_tiny")
    model(*args, **kwargs).square().mean().backward()
    plain = {name: p.grad.clone() for name, p in model.named_parameters()}
    assert all(g.abs().sum() > 0 for g in plain.values()), "every parameter gets a gradient"
    model.zero_grad()
    for i, block in enumerate(model.blocks):
        model.blocks[i] = Checkpointed(block)
    out = model(*args, **kwargs)
    assert (out[0] - golden["out"]).abs().max() < 1e-4
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, plain[name.replace(".block.", ".")], atol=1e-6), name
