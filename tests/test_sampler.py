"""Our sampler against diffusers' WanPipeline / WanImageToVideoPipeline on tiny models with the same weights.

Each test builds a tiny diffusers `WanTransformer3DModel`, loads the same weights (renamed to the official
names) into our `WanModel`, and runs both samplers from the same initial noise and the same (padded) prompt
embeddings, so any difference is the sampling loop: scheduler, CFG, expert switch, conditioning.
"""

from __future__ import annotations

import pytest
import torch
from conftest import FIXTURES

from wantune.models.variants import TINY, get_variant
from wantune.sample.conditioning import first_frame_latent, i2v_mask, image_condition
from wantune.sample.experts import ExpertPair
from wantune.sample.sampler import make_noise, sample_video
from wantune.sample.schedulers import make_scheduler

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

TOL = 2e-5
TEXT_DIM = TINY["text_dim"]


def tiny_pair(variant_name: str, seed: int):
    """(diffusers transformer, our WanModel) with identical weights, float32, eval mode."""
    from wantune.models.transformer import CLIP_DIM, CLIP_TOKENS

    from diffusers import WanTransformer3DModel

    from wantune.models.diffusers_names import diffusers_to_official
    from wantune.models.transformer import WanModel

    variant = get_variant(variant_name, **TINY)
    torch.manual_seed(seed)
    theirs = WanTransformer3DModel(
        patch_size=variant.patch_size, num_attention_heads=variant.num_heads, attention_head_dim=variant.head_dim,
        in_channels=variant.in_dim, out_channels=variant.out_dim, text_dim=variant.text_dim,
        freq_dim=variant.freq_dim, ffn_dim=variant.ffn_dim, num_layers=variant.num_layers,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=variant.eps,
        image_dim=CLIP_DIM if variant.has_image_embedding else None,
        added_kv_proj_dim=variant.dim if variant.has_image_embedding else None,
        pos_embed_seq_len=2 * CLIP_TOKENS if variant.has_image_pos_embedding else None).eval()
    with torch.no_grad():  # diffusers zero-inits nothing important, but make every weight matter
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ours = WanModel(variant).eval()
    ours.load_state_dict(diffusers_to_official(theirs.state_dict()))
    return theirs, ours


def prompt_embeds(seed: int, length: int = 7) -> torch.Tensor:
    """Random text embeddings zero-padded to 512 tokens, as both pipelines' encoders produce them."""
    g = torch.Generator().manual_seed(seed)
    embeds = torch.zeros(1, 512, TEXT_DIM)
    embeds[:, :length] = torch.randn(1, length, TEXT_DIM, generator=g)
    return embeds


def diffusers_t2v(transformer, scheduler, **config):
    from diffusers import WanPipeline

    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=scheduler,
                       transformer=transformer, **config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_i2v(transformer, scheduler, vae_model, **config):
    from diffusers import WanImageToVideoPipeline

    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=vae_model, scheduler=scheduler,
                                   transformer=transformer, image_encoder=None, image_processor=None, **config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("sampler", ["unipc", "dpm++", "euler"])
def test_t2v_matches_wan_pipeline(sampler):
    theirs, ours = tiny_pair("wan2.1-t2v-1.3b", seed=0)
    noise = make_noise((1, 16, 3, 8, 8), seed=1)
    cond, neg = prompt_embeds(2), prompt_embeds(3, length=5)
    pipe = diffusers_t2v(theirs, make_scheduler(sampler, shift=5.0))
    expected = pipe(prompt_embeds=cond, negative_prompt_embeds=neg, latents=noise.clone(), num_frames=9,
                    height=64, width=64, num_inference_steps=5, guidance_scale=5.0, output_type="latent").frames
    got = sample_video(ours, noise, cond, neg, 5.0, make_scheduler(sampler, 5.0), steps=5, progress=False)
    diff = (got - expected).abs().max().item()
    print(f"t2v {sampler}: max abs diff {diff:.2e}")
    assert diff < TOL
    assert (got - noise).abs().max() > 0.1  # it did denoise


def test_a14b_expert_switch_matches_wan_pipeline():
    high_theirs, high = tiny_pair("wan2.2-t2v-a14b", seed=10)
    low_theirs, low = tiny_pair("wan2.2-t2v-a14b", seed=11)
    noise = make_noise((1, 16, 3, 8, 8), seed=4)
    cond, neg = prompt_embeds(5), prompt_embeds(6)
    pipe = diffusers_t2v(high_theirs, make_scheduler("unipc", 12.0), transformer_2=low_theirs,
                         boundary_ratio=0.875)
    expected = pipe(prompt_embeds=cond, negative_prompt_embeds=neg, latents=noise.clone(), num_frames=9,
                    height=64, width=64, num_inference_steps=8, guidance_scale=4.0, guidance_scale_2=3.0,
                    output_type="latent").frames
    routed = []
    pair = ExpertPair(high, low, boundary=0.875)
    got = sample_video(pair, noise, cond, neg, (4.0, 3.0), make_scheduler("unipc", 12.0), steps=8,
                       progress=False, on_step=lambda i, t, name: routed.append((t, name)))
    diff = (got - expected).abs().max().item()
    print(f"a14b switch: max abs diff {diff:.2e}; routing {routed}")
    assert diff < TOL
    assert {name for _, name in routed} == {"high", "low"}
    assert all((t >= 875.0) == (name == "high") for t, name in routed)
    # Routing matters: the high expert alone gives other latents.
    alone = sample_video(high, noise, cond, neg, 4.0, make_scheduler("unipc", 12.0), steps=8, progress=False)
    assert (alone - got).abs().max() > 1e-3


def test_expert_pair_routes_on_shifted_timestep():
    pair = ExpertPair(high="H", low="L", boundary=0.9)
    assert pair.which(900.0) == "high" and pair.which(899.99) == "low"
    # With shift 5 and 40 steps, the unshifted timestep 0.5*1000 is already past the boundary when shifted.
    scheduler = make_scheduler("unipc", 5.0)
    scheduler.set_timesteps(40)
    names = [pair.which(t) for t in scheduler.timesteps]
    sigmas = scheduler.sigmas[:-1]
    assert names.count("high") == int((sigmas * 1000 >= 900).sum())
    assert names.count("high") > 40 * 0.1  # shifted: many more steps than the unshifted 10%


@pytest.fixture(scope="module")
def vae21():
    from wantune.models.vae import load_vae

    return load_vae(FIXTURES / "wan21_vae_tiny.safetensors", dtype=torch.float32)


@pytest.fixture(scope="module")
def vae22():
    from wantune.models.vae import load_vae

    return load_vae(FIXTURES / "wan22_vae_tiny.safetensors", dtype=torch.float32)


def test_wan22_i2v_a14b_matches_image_to_video_pipeline(vae21):
    high_theirs, high = tiny_pair("wan2.2-i2v-a14b", seed=20)
    low_theirs, low = tiny_pair("wan2.2-i2v-a14b", seed=21)
    image01 = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    noise = make_noise((1, 16, 3, 8, 8), seed=8)
    cond, neg = prompt_embeds(9), prompt_embeds(10)
    pipe = diffusers_i2v(high_theirs, make_scheduler("unipc", 5.0), vae21.model, transformer_2=low_theirs,
                         boundary_ratio=0.9)
    expected = pipe(image=image01, prompt_embeds=cond, negative_prompt_embeds=neg, latents=noise.clone(),
                    num_frames=9, height=64, width=64, num_inference_steps=6, guidance_scale=3.5,
                    guidance_scale_2=3.5, output_type="latent").frames
    y = image_condition(vae21, image01[0] * 2 - 1, None, frames=9)
    got = sample_video(ExpertPair(high, low, 0.9), noise, cond, neg, 3.5, make_scheduler("unipc", 5.0),
                       steps=6, y_BCFHW=y, progress=False)
    diff = (got - expected).abs().max().item()
    print(f"wan2.2 i2v a14b: max abs diff {diff:.2e}")
    assert diff < TOL


@pytest.mark.parametrize("variant_name", ["wan2.1-i2v-14b", "wan2.1-flf2v-14b"])
def test_wan21_i2v_flf2v_with_clip_matches_image_to_video_pipeline(vae21, variant_name):
    theirs, ours = tiny_pair(variant_name, seed=40)
    last = variant_name.endswith("flf2v-14b")
    g = torch.Generator().manual_seed(41)
    first01, last01 = torch.rand(1, 3, 64, 64, generator=g), torch.rand(1, 3, 64, 64, generator=g)
    clip_fea = torch.randn(2 if last else 1, 257, 1280, generator=g)  # CLIP features, as encoded
    noise = make_noise((1, 16, 3, 8, 8), seed=42)
    cond, neg = prompt_embeds(43), prompt_embeds(44)
    pipe = diffusers_i2v(theirs, make_scheduler("unipc", 16.0 if last else 5.0), vae21.model)
    pipe.check_inputs = lambda *a, **k: None  # diffusers refuses image + image_embeds together; we need both
    expected = pipe(image=first01, last_image=last01 if last else None, image_embeds=clip_fea,
                    prompt_embeds=cond, negative_prompt_embeds=neg, latents=noise.clone(), num_frames=9,
                    height=64, width=64, num_inference_steps=4, guidance_scale=5.0, output_type="latent").frames
    y = image_condition(vae21, first01[0] * 2 - 1, last01[0] * 2 - 1 if last else None, frames=9)
    got = sample_video(ours, noise, cond, neg, 5.0, make_scheduler("unipc", 16.0 if last else 5.0), steps=4,
                       y_BCFHW=y, clip_fea_BKD=clip_fea.reshape(1, -1, 1280), progress=False)
    diff = (got - expected).abs().max().item()
    print(f"{variant_name}: max abs diff {diff:.2e}")
    assert diff < TOL


def test_ti2v_matches_image_to_video_pipeline(vae22):
    theirs, ours = tiny_pair("wan2.2-ti2v-5b", seed=30)
    image01 = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(11))
    noise = make_noise((1, 48, 3, 8, 8), seed=12)
    cond, neg = prompt_embeds(13), prompt_embeds(14)
    pipe = diffusers_i2v(theirs, make_scheduler("unipc", 5.0), vae22.model, expand_timesteps=True)
    expected = pipe(image=image01, prompt_embeds=cond, negative_prompt_embeds=neg, latents=noise.clone(),
                    num_frames=9, height=128, width=128, num_inference_steps=5, guidance_scale=5.0,
                    output_type="latent").frames
    first = first_frame_latent(vae22, image01[0] * 2 - 1)
    got = sample_video(ours, noise, cond, neg, 5.0, make_scheduler("unipc", 5.0), steps=5,
                       first_frame_BCFHW=first, progress=False)
    diff = (got - expected).abs().max().item()
    print(f"ti2v: max abs diff {diff:.2e}")
    assert diff < TOL
    assert torch.equal(got[:, :, :1], first)  # the image's latent is the first frame


def test_ti2v_without_image_matches_expand_timesteps_pipeline():
    theirs, ours = tiny_pair("wan2.2-ti2v-5b", seed=31)
    noise = make_noise((1, 48, 2, 8, 8), seed=15)
    cond, neg = prompt_embeds(16), prompt_embeds(17)
    pipe = diffusers_t2v(theirs, make_scheduler("unipc", 5.0), expand_timesteps=True)
    pipe.vae_scale_factor_spatial = 16
    expected = pipe(prompt_embeds=cond, negative_prompt_embeds=neg, latents=noise.clone(), num_frames=5,
                    height=128, width=128, num_inference_steps=4, guidance_scale=5.0, output_type="latent").frames
    got = sample_video(ours, noise, cond, neg, 5.0, make_scheduler("unipc", 5.0), steps=4, progress=False)
    assert (got - expected).abs().max().item() < TOL


def test_i2v_mask_layout():
    mask = i2v_mask(frames=9, latent_h=2, latent_w=3)
    assert mask.shape == (1, 4, 3, 2, 3)
    assert mask[:, :, 0].eq(1).all() and mask[:, :, 1:].eq(0).all()
    flf = i2v_mask(frames=9, latent_h=2, latent_w=3, last_frame=True)
    # The last pixel frame is the 4th of the last latent frame's group of four.
    assert flf[:, :, 0].eq(1).all() and flf[:, :3, 2].eq(0).all() and flf[:, 3, 2].eq(1).all()


def test_same_seed_same_noise():
    assert torch.equal(make_noise((1, 16, 3, 4, 4), 5), make_noise((1, 16, 3, 4, 4), 5))
    assert not torch.equal(make_noise((1, 16, 3, 4, 4), 5), make_noise((1, 16, 3, 4, 4), 6))


def test_load_image_covers_and_centre_crops(tmp_path):
    import numpy as np
    from PIL import Image

    from wantune.sample.conditioning import load_image

    pixels = np.zeros((40, 120, 3), dtype=np.uint8)  # wide image: left third red, middle green, right blue
    pixels[:, :40, 0], pixels[:, 40:80, 1], pixels[:, 80:, 2] = 255, 255, 255
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    image = load_image(tmp_path / "wide.png", width=32, height=32)
    assert image.shape == (3, 32, 32) and image.min() >= -1 and image.max() <= 1
    # Scaled to height 32 (width 96), the centre 32 columns are the green third.
    assert image[1, :, 4:28].mean() > 0.95 and image[0, :, 4:28].mean() < -0.95
