"""Wan 2.1 / 2.2 VAE: official goldens, full-size name mapping, layouts, tiling, errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import FIXTURES, MANIFESTS
from wantune.errors import UserError
from wantune.models import vae_convert
from wantune.models.vae import LATENT_STATS, load_vae, read_vae_state_dict

CASES = [("wan21", "2.1", 16), ("wan22", "2.2", 48)]


@pytest.mark.parametrize("name,version,z_dim", CASES)
@pytest.mark.parametrize("ext", ["pth", "safetensors"])
def test_golden_encode_decode(name, version, z_dim, ext):
    golden = load_file(FIXTURES / f"{name}_vae_tiny.golden.safetensors")
    vae = load_vae(FIXTURES / f"{name}_vae_tiny.{ext}")
    assert (vae.version, vae.z_dim) == (version, z_dim)
    latent = vae.encode(golden["video"][None])[0]
    decoded = vae.decode(golden["latent"][None])[0]
    # measured: latent 3.5e-7 (2.1) / 7.0e-7 (2.2); decoded 4.2e-6 / 1.6e-6
    assert (latent - golden["latent"]).abs().max() < 1e-5
    assert (decoded - golden["decoded"]).abs().max() < 5e-5


def test_latent_stats_match_fixture():
    stats = json.loads((FIXTURES / "vae_latent_stats.json").read_text())
    assert LATENT_STATS["2.1"] == (stats["wan2.1_vae"]["mean"], stats["wan2.1_vae"]["std"])
    assert LATENT_STATS["2.2"] == (stats["wan2.2_vae"]["mean"], stats["wan2.2_vae"]["std"])


@pytest.mark.parametrize("manifest_name,nested", [("wan2.1_vae", False), ("wan2.2_vae", True)])
def test_full_size_mapping_covers_manifest(manifest_name, nested):
    from diffusers import AutoencoderKLWan

    tensors = json.loads((MANIFESTS / f"{manifest_name}.json").read_text())["tensors"]
    official = {k: torch.empty(v[0], device="meta") for k, v in tensors.items()}
    assert vae_convert.is_nested_vae(official) == nested
    mapped = vae_convert.official_to_diffusers(official)
    cfg = vae_convert.diffusers_vae_config(mapped)
    with torch.device("meta"):
        model = AutoencoderKLWan(**cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in mapped.items()} == expected
    assert set(vae_convert.diffusers_to_official(mapped)) == set(official)
    assert (cfg["base_dim"], cfg["z_dim"]) == ((160, 48) if nested else (96, 16))


@pytest.mark.parametrize("name", ["wan21", "wan22"])
def test_diffusers_folder_and_prefixed_file(tmp_path, name):
    golden = load_file(FIXTURES / f"{name}_vae_tiny.golden.safetensors")
    vae = load_vae(FIXTURES / f"{name}_vae_tiny.pth")
    vae.model.save_pretrained(tmp_path / "vae")
    official = load_file(FIXTURES / f"{name}_vae_tiny.safetensors")
    save_file({f"first_stage_model.{k}": v for k, v in official.items()}, tmp_path / "prefixed.safetensors")
    save_file(vae.model.state_dict(), tmp_path / "diffusers_named.safetensors")
    want = vae.decode(golden["latent"][None])
    for path in (tmp_path, tmp_path / "prefixed.safetensors", tmp_path / "diffusers_named.safetensors"):
        other = load_vae(path)
        assert other.version == vae.version and other.identity != vae.identity
        assert torch.equal(other.decode(golden["latent"][None]), want)


def test_diffusers_to_official_round_trip():
    official = torch.load(FIXTURES / "wan22_vae_tiny.pth", map_location="cpu", weights_only=True)
    back = vae_convert.diffusers_to_official(vae_convert.official_to_diffusers(official))
    assert back.keys() == official.keys()
    assert all(back[k] is official[k] for k in official)


def test_identity_stride_dtype():
    a = load_vae(FIXTURES / "wan22_vae_tiny.pth")
    b = load_vae(FIXTURES / "wan22_vae_tiny.pth", dtype=torch.bfloat16)
    assert a.stride == (4, 16, 16) and load_vae(FIXTURES / "wan21_vae_tiny.pth").stride == (4, 8, 8)
    assert a.identity.startswith("wan22_vae_tiny.pth:") and a.identity.endswith("float32")
    assert a.identity != b.identity and b.dtype == torch.bfloat16
    latent = b.encode(torch.zeros(1, 3, 1, 32, 32))
    assert latent.dtype == torch.float32 and latent.shape == (1, 48, 1, 2, 2)


def test_tiled_decode_close_to_untiled():
    torch.manual_seed(0)
    vae = load_vae(FIXTURES / "wan21_vae_tiny.pth")
    # The random tiny VAE's mid-block attention sees the whole frame; silence it so the model is local like
    # a trained one, then tiles may differ from the whole frame only near their seams.
    for name, p in vae.model.named_parameters():
        if "attentions.0.proj" in name:
            p.data.zero_()
    latents = torch.randn(1, 16, 1, 16, 16)
    whole = vae.decode(latents, tiled=False)
    tiled = vae.decode(latents, tiled=True, tile=96)
    assert tiled.shape == whole.shape == (1, 3, 1, 128, 128)
    diff = (tiled - whole).abs()
    # measured (random weights, 96 px tiles, 24 px overlap): mean 0.037, first tile's interior 0.009
    assert diff.mean() < 0.06
    assert diff[..., :64, :64].mean() < 0.02
    assert not torch.equal(tiled, whole)  # tiling really happened


def test_tile_plan_by_memory():
    vae = load_vae(FIXTURES / "wan21_vae_tiny.pth", dtype=torch.bfloat16)
    assert vae.plan_tiles(81, 480, 832, tiled=None, budget=1 << 40).tile is None
    need_256 = vae.memory_estimate(81, 480, 832, tile=256)
    assert need_256 < vae.memory_estimate(81, 480, 832, tile=384) < vae.memory_estimate(81, 480, 832)
    small = vae.plan_tiles(81, 480, 832, tiled=None, budget=need_256)
    assert small.tile == 256 and small.stride == 192
    assert vae.plan_tiles(81, 480, 832, tiled=False, budget=1).tile is None
    assert vae.plan_tiles(81, 480, 832, tiled=True, budget=1).tile == 128  # nothing fits: smallest tile
    with pytest.raises(UserError, match="multiple of 32"):
        vae.plan_tiles(81, 480, 832, tiled=True, tile=100)


def test_errors(tmp_path):
    with pytest.raises(UserError, match="Wan 2.2 VAE"):
        load_vae(FIXTURES / "wan21_vae_tiny.pth", version="2.2")
    with pytest.raises(UserError, match="Wan 2.1 VAE"):
        load_vae(FIXTURES / "wan22_vae_tiny.safetensors", version="2.1")
    with pytest.raises(UserError, match="no such"):
        load_vae(tmp_path / "missing.pth")
    with pytest.raises(UserError, match="not a Wan VAE"):
        load_vae(FIXTURES / "wan21_t2v_tiny.safetensors")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        load_vae(tmp_path / "junk.pth")
    sd = load_file(FIXTURES / "wan21_vae_tiny.safetensors")
    del sd["decoder.head.2.weight"]
    save_file(sd, tmp_path / "partial.safetensors")
    with pytest.raises(UserError):
        load_vae(tmp_path / "partial.safetensors")
    vae = load_vae(FIXTURES / "wan21_vae_tiny.pth")
    with pytest.raises(UserError, match="4n\\+1"):
        vae.encode(torch.zeros(1, 3, 4, 32, 32))
    with pytest.raises(UserError, match="decodes"):
        vae.decode(torch.zeros(1, 48, 1, 4, 4))


def test_read_state_dict_is_diffusers_named():
    sd = read_vae_state_dict(FIXTURES / "wan22_vae_tiny.pth")
    assert "decoder.up_blocks.0.upsampler.time_conv.weight" in sd and "encoder.conv_in.weight" in sd


def test_full_size_480p_decode_fits_24gb_card():
    from diffusers import AutoencoderKLWan

    from wantune.models.vae import WanVAE

    tensors = json.loads((MANIFESTS / "wan2.1_vae.json").read_text())["tensors"]
    mapped = vae_convert.official_to_diffusers({k: torch.empty(v[0], device="meta") for k, v in tensors.items()})
    with torch.device("meta"):
        model = AutoencoderKLWan(**vae_convert.diffusers_vae_config(mapped)).to(torch.bfloat16)
    vae = WanVAE(model, "2.1", "meta")
    budget = int(0.7 * 24 * 2**30) - 2 * 2**30  # 70% of a 24 GB card, less 2 GB for other tensors
    # measured peak on an H200 (bf16): 4.4 GiB untiled; the estimate is conservative (7.9 GiB)
    assert 4.4 * 2**30 < vae.memory_estimate(81, 480, 832) < budget
    assert vae.plan_tiles(81, 480, 832, tiled=None, budget=budget).tile is None
    assert vae.plan_tiles(121, 720, 1280, tiled=None, budget=budget).tile is not None


def test_wan21_mapping_equals_diffusers_single_file_converter():
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    official = torch.load(FIXTURES / "wan21_vae_tiny.pth", map_location="cpu", weights_only=True)
    theirs = convert_wan_vae_to_diffusers(dict(official))  # (it does not handle the nested Wan 2.2 layout)
    ours = vae_convert.official_to_diffusers(official)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_pipeline_and_official_folders(tmp_path):
    import shutil

    official = tmp_path / "Wan2.2-TI2V-5B"
    official.mkdir()
    shutil.copy(FIXTURES / "wan22_vae_tiny.pth", official / "Wan2.2_VAE.pth")
    load_vae(FIXTURES / "wan22_vae_tiny.pth").model.save_pretrained(tmp_path / "pipeline" / "vae")
    (tmp_path / "pipeline" / "transformer").mkdir()
    for folder in (official, tmp_path / "pipeline"):
        vae = load_vae(folder, version="2.2")
        assert vae.z_dim == 48 and "transformer" not in vae.identity
