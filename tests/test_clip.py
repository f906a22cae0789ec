"""CLIP vision tower: official Wan / open_clip / HF layouts vs an independent official-style forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from wantune.errors import UserError
from wantune.models.clip import CLIP_MEAN, CLIP_STD, clip_config_kwargs, hf_to_official, load_clip, official_to_hf

WIDTH, HEADS, LAYERS = 128, 2, 3


@pytest.fixture(scope="module")
def hf_model():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=WIDTH, intermediate_size=256, num_hidden_layers=LAYERS,
                              num_attention_heads=HEADS, image_size=28, patch_size=14, hidden_act="gelu")
    return CLIPVisionModel(config).eval()


@pytest.fixture(scope="module")
def hf_sd(hf_model):
    """The tiny model's weights under the canonical HF file names (`vision_model.*`)."""
    return {("vision_model." + k if not k.startswith("vision_model.") else k): v.clone()
            for k, v in hf_model.state_dict().items()}


def official_forward(sd: dict, images_BCHW: torch.Tensor) -> torch.Tensor:
    """Wan's VisionTransformer(use_31_block=True), written from its description, on official-named weights."""
    x = F.interpolate(images_BCHW, size=(28, 28), mode="bicubic", align_corners=False)
    x = (x * 0.5 + 0.5 - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    x = F.conv2d(x, sd["visual.patch_embedding.weight"], stride=14).flatten(2).transpose(1, 2)
    x = torch.cat([sd["visual.cls_embedding"].expand(x.shape[0], -1, -1), x], dim=1) + sd["visual.pos_embedding"]

    def ln(t, name):
        return F.layer_norm(t, (WIDTH,), sd[f"{name}.weight"], sd[f"{name}.bias"], 1e-5)

    x = ln(x, "visual.pre_norm")
    for i in range(LAYERS - 1):
        p = f"visual.transformer.{i}."
        b, k, _ = x.shape
        qkv = F.linear(ln(x, p + "norm1"), sd[p + "attn.to_qkv.weight"], sd[p + "attn.to_qkv.bias"])
        q, kk, v = qkv.view(b, k, 3, HEADS, WIDTH // HEADS).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, kk, v).transpose(1, 2).reshape(b, k, WIDTH)
        x = x + F.linear(att, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        h = F.gelu(F.linear(ln(x, p + "norm2"), sd[p + "mlp.0.weight"], sd[p + "mlp.0.bias"]))
        x = x + F.linear(h, sd[p + "mlp.2.weight"], sd[p + "mlp.2.bias"])
    return x


def to_open_clip(official: dict) -> dict:
    """Official Wan visual names -> open_clip names (written independently of our loader)."""
    out = {"visual.conv1.weight": official["visual.patch_embedding.weight"],
           "visual.class_embedding": official["visual.cls_embedding"].reshape(-1),
           "visual.positional_embedding": official["visual.pos_embedding"][0],
           "visual.proj": torch.zeros(WIDTH, 64)}
    names = {"pre_norm": "ln_pre", "post_norm": "ln_post"}
    layer = {"norm1": "ln_1", "norm2": "ln_2", "attn.proj": "attn.out_proj", "mlp.0": "mlp.c_fc", "mlp.2": "mlp.c_proj",
             "attn.to_qkv.weight": "attn.in_proj_weight", "attn.to_qkv.bias": "attn.in_proj_bias"}
    for key, value in official.items():
        parts = key.split(".")
        if parts[1] in names:
            out[f"visual.{names[parts[1]]}.{parts[2]}"] = value
        elif parts[1] == "transformer":
            rest = ".".join(parts[3:])
            rest = layer.get(rest) or f"{layer['.'.join(parts[3:-1])]}.{parts[-1]}"
            out[f"visual.transformer.resblocks.{parts[2]}.{rest}"] = value
    return out


def test_official_layout_matches_independent_forward(tmp_path, hf_sd):
    official = hf_to_official(hf_sd)
    torch.save({**official, "visual.head": torch.zeros(WIDTH, 64), "log_scale": torch.zeros(()),
                "textual.token_embedding.weight": torch.zeros(10, 8)}, tmp_path / "clip_official.pth")
    clip = load_clip(tmp_path / "clip_official.pth", torch.float32)
    images = torch.rand(2, 3, 40, 52) * 2 - 1
    out = clip.encode(images)
    assert out.shape == (2, 5, WIDTH)
    assert (out - official_forward(official, images)).abs().max() < 1e-4


def test_hf_and_open_clip_layouts_agree_with_transformers(tmp_path, hf_model, hf_sd):
    images = torch.rand(1, 3, 28, 28) * 2 - 1
    save_file({**hf_sd, "visual_projection.weight": torch.zeros(64, WIDTH)}, tmp_path / "clip_vision_h.safetensors")
    torch.save(to_open_clip(hf_to_official(hf_sd)), tmp_path / "open_clip.pth")
    hf_model.save_pretrained(tmp_path / "folder")
    clips = [load_clip(tmp_path / name, torch.float32) for name in ("clip_vision_h.safetensors", "open_clip.pth")]
    clips.append(load_clip(tmp_path / "folder", torch.float32))
    with torch.no_grad():
        states = hf_model(pixel_values=clips[0].preprocess(images), output_hidden_states=True).hidden_states
    assert len(states) == LAYERS + 1
    for clip in clips:
        assert torch.equal(clip.encode(images), states[-2])  # penultimate layer, not the last
    assert not torch.equal(states[-2], states[-1])


def test_mapping_round_trip(hf_sd):
    back = official_to_hf(hf_to_official(hf_sd))
    assert back.keys() == hf_sd.keys() and all(torch.equal(back[k], hf_sd[k]) for k in back)


def test_full_size_vit_h_config():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    official = {"visual.patch_embedding.weight": torch.empty(1280, 3, 14, 14, device="meta"),
                "visual.cls_embedding": torch.empty(1, 1, 1280, device="meta"),
                "visual.pos_embedding": torch.empty(1, 257, 1280, device="meta"),
                "visual.head": torch.empty(1280, 1024, device="meta")}
    for norm in ("visual.pre_norm", "visual.post_norm"):
        official.update({f"{norm}.weight": torch.empty(1280, device="meta"),
                         f"{norm}.bias": torch.empty(1280, device="meta")})
    for i in range(32):
        p = f"visual.transformer.{i}."
        for name, shape in (("norm1", (1280,)), ("norm2", (1280,)), ("attn.to_qkv", (3840, 1280)),
                            ("attn.proj", (1280, 1280)), ("mlp.0", (5120, 1280)), ("mlp.2", (1280, 5120))):
            official[p + name + ".weight"] = torch.empty(shape, device="meta")
            official[p + name + ".bias"] = torch.empty(shape[0], device="meta")
    hf = official_to_hf(official)
    kwargs = clip_config_kwargs(hf)
    assert (kwargs["num_attention_heads"], kwargs["num_hidden_layers"], kwargs["image_size"]) == (16, 32, 224)
    with torch.device("meta"):
        model = CLIPVisionModel(CLIPVisionConfig(**kwargs))
    want = {k.removeprefix("vision_model."): tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k.removeprefix("vision_model."): tuple(v.shape) for k, v in hf.items()} == want
    assert model.config.image_size // model.config.patch_size == 16  # 16*16 + 1 = 257 tokens


def test_errors(tmp_path):
    with pytest.raises(UserError, match="no such CLIP"):
        load_clip(tmp_path / "missing.safetensors")
    save_file({"encoder.conv_in.weight": torch.zeros(1)}, tmp_path / "vae.safetensors")
    with pytest.raises(UserError, match="not a CLIP vision model"):
        load_clip(tmp_path / "vae.safetensors")
    with pytest.raises(UserError, match="unexpected key"):
        official_to_hf({"visual.patch_embedding.weight": torch.zeros(1), "visual.weird": torch.zeros(1)})


def test_pipeline_folder(tmp_path, hf_model):
    hf_model.save_pretrained(tmp_path / "pipeline" / "image_encoder")
    clip = load_clip(tmp_path / "pipeline", torch.float32)
    assert clip.model.config.num_attention_heads == HEADS and clip.identity.startswith("image_encoder:")
