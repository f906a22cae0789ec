"""WanModel == diffusers `WanTransformer3DModel` loaded with our renamed weights; name maps round-trip."""

from __future__ import annotations

import pytest
import torch
from conftest import FIXTURES
from safetensors.torch import load_file
from test_transformer import GOLDENS, golden_inputs, tiny_model

from wantune.errors import UserError
from wantune.models.diffusers_names import (
    diffusers_module_to_official,
    diffusers_to_official,
    official_module_to_diffusers,
    official_to_diffusers,
)


def diffusers_twin(model):
    """A tiny diffusers WanTransformer3DModel with the same config, loaded with our renamed weights."""
    from diffusers import WanTransformer3DModel

    v = model.variant
    image = v.has_image_embedding
    twin = WanTransformer3DModel(
        patch_size=v.patch_size, num_attention_heads=v.num_heads, attention_head_dim=v.head_dim,
        in_channels=v.in_dim, out_channels=v.out_dim, text_dim=v.text_dim, freq_dim=v.freq_dim,
        ffn_dim=v.ffn_dim, num_layers=v.num_layers, cross_attn_norm=v.cross_attn_norm, eps=v.eps,
        image_dim=1280 if image else None, added_kv_proj_dim=v.dim if image else None,
        pos_embed_seq_len=514 if v.has_image_pos_embedding else None)
    twin.load_state_dict(official_to_diffusers(model.state_dict()), strict=True)
    return twin.eval()


@pytest.mark.parametrize("fixture", sorted(GOLDENS))
def test_same_output_as_diffusers(fixture):
    model = tiny_model(fixture)
    twin = diffusers_twin(model)
    golden = load_file(FIXTURES / f"{fixture}.golden.safetensors")
    (x, t, context), kwargs = golden_inputs(golden)
    padded = torch.nn.functional.pad(context, (0, 0, 0, model.variant.text_len - context.shape[1]))
    inputs = torch.cat([x, kwargs["y_BCFHW"]], dim=1) if "y_BCFHW" in kwargs else x
    with torch.no_grad():
        ours = model(x, t, context, **kwargs)
        theirs = twin(inputs, t, padded, encoder_hidden_states_image=kwargs.get("clip_fea_BKD"),
                      return_dict=False)[0]
    err = (ours - theirs).abs().max().item()
    assert err < 1e-4, f"{fixture}: max abs diff {err:.3g} vs diffusers"


def test_state_dict_round_trip():
    state = tiny_model("wan21_flf2v_tiny").state_dict()
    renamed = official_to_diffusers(state)
    assert "condition_embedder.image_embedder.pos_embed" in renamed and "blocks.1.norm2.weight" in renamed
    back = diffusers_to_official(renamed)
    assert list(back) == list(state) and all(back[k] is state[k] for k in state)


@pytest.mark.parametrize("official,diffusers", [
    ("blocks.0.self_attn.q", "blocks.0.attn1.to_q"),
    ("blocks.12.cross_attn.o", "blocks.12.attn2.to_out.0"),
    ("blocks.3.cross_attn.k_img", "blocks.3.attn2.add_k_proj"),
    ("blocks.3.ffn.0", "blocks.3.ffn.net.0.proj"),
    ("blocks.39.ffn.2", "blocks.39.ffn.net.2"),
    ("blocks.5.norm3.weight", "blocks.5.norm2.weight"),
    ("blocks.5.modulation", "blocks.5.scale_shift_table"),
    ("head.modulation", "scale_shift_table"),
    ("head.head.bias", "proj_out.bias"),
    ("time_projection.1", "condition_embedder.time_proj"),
])
def test_module_names(official, diffusers):
    assert official_module_to_diffusers(official) == diffusers
    assert diffusers_module_to_official(diffusers) == official


@pytest.mark.parametrize("bad", ["blocks.0.self_attn.qq", "blocks.0.norm1.weight", "unet.conv_in.weight",
                                 "blocks.0.ffn.0.weight.extra"])
def test_unknown_names_raise_user_error(bad):
    with pytest.raises(UserError, match="not a known official"):
        official_module_to_diffusers(bad)
    with pytest.raises(UserError, match="not a known diffusers"):
        diffusers_to_official({bad: None})
