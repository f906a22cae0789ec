"""Checkpoint loading in every layout: fixtures, synthesised fp8/bf16/sharded/diffusers/A14B files, full-size
variant detection from the manifests, and one-line errors for the wrong file."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import FIXTURES, manifest
from safetensors.torch import load_file, save_file

from wantune.errors import UserError
from wantune.models.checkpoint import infer_variant, load_expert_pair, load_transformer, read_state_dict
from wantune.models.diffusers_names import official_to_diffusers
from wantune.models.variants import TINY, get_variant

FIXTURE_VARIANTS = {
    "wan21_t2v_tiny": "wan2.1-t2v-14b",
    "wan21_i2v_tiny": "wan2.1-i2v-14b",
    "wan21_flf2v_tiny": "wan2.1-flf2v-14b",
    "wan22_t2v_tiny": "wan2.2-t2v-a14b",
    "wan22_i2v_tiny": "wan2.2-i2v-a14b",
    "wan22_ti2v_tiny": "wan2.2-ti2v-5b",
}
MANIFEST_VARIANTS = {  # manifest -> (candidates without a hint, with the manifest's name as hint)
    "wan2.1_t2v_1.3B": (["wan2.1-t2v-1.3b"], ["wan2.1-t2v-1.3b"]),
    "wan2.1_t2v_14B": (["wan2.1-t2v-14b", "wan2.2-t2v-a14b"], ["wan2.1-t2v-14b"]),
    "wan2.1_i2v_14B": (["wan2.1-i2v-14b"], ["wan2.1-i2v-14b"]),
    "wan2.1_flf2v_14B": (["wan2.1-flf2v-14b"], ["wan2.1-flf2v-14b"]),
    "wan2.2_t2v_A14B_expert": (["wan2.1-t2v-14b", "wan2.2-t2v-a14b"], ["wan2.2-t2v-a14b"]),
    "wan2.2_i2v_A14B_expert": (["wan2.2-i2v-a14b"], ["wan2.2-i2v-a14b"]),
    "wan2.2_ti2v_5B": (["wan2.2-ti2v-5b"], ["wan2.2-ti2v-5b"]),
}
T2V = FIXTURES / "wan22_t2v_tiny.safetensors"
TINY_T2V = get_variant("wan2.2-t2v-a14b", **TINY)


def tiny(fixture: str):
    return get_variant(FIXTURE_VARIANTS[fixture], **TINY)


def meta_state(name: str) -> dict[str, torch.Tensor]:
    """A full-size state dict of meta tensors (shapes only) from a manifest."""
    return {k: torch.empty(shape, device="meta") for k, (shape, _) in manifest(name).items()}


def assert_same_weights(model, expected: dict[str, torch.Tensor], atol: float = 0.0):
    got = model.state_dict()
    assert set(got) == set(expected)
    for key, value in expected.items():
        diff = (got[key].float() - value.float()).abs().max().item()
        assert diff <= atol, f"{key}: max abs diff {diff}"


@pytest.mark.parametrize("fixture", sorted(FIXTURE_VARIANTS))
def test_fixture_loads_exactly(fixture):
    model = load_transformer(FIXTURES / f"{fixture}.safetensors", tiny(fixture), dtype=torch.float32)
    assert_same_weights(model, load_file(FIXTURES / f"{fixture}.safetensors"))
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_default_dtype_is_bf16():
    model = load_transformer(T2V, TINY_T2V)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_comfyui_fp16_matches_fp32_within_fp16_rounding():
    fp32 = load_file(T2V)
    model = load_transformer(FIXTURES / "wan22_t2v_tiny.comfyui_fp16.safetensors", TINY_T2V, dtype=torch.float32)
    for key, value in fp32.items():
        got = model.state_dict()[key]
        assert torch.allclose(got, value, rtol=2 ** -10, atol=1e-7), key
    golden = load_file(FIXTURES / "wan22_t2v_tiny.golden.safetensors")
    with torch.no_grad():
        out = model(golden["x"][None], golden["t"], golden["context"][None])
    err = (out[0] - golden["out"]).abs().max().item()
    assert err < 1e-2, f"fp16 weights: max abs error {err:.3g} vs the official golden"


def test_bf16_file(tmp_path):
    sd = load_file(T2V)
    save_file({k: v.bfloat16() for k, v in sd.items()}, tmp_path / "t2v_bf16.safetensors")
    state = read_state_dict(tmp_path / "t2v_bf16.safetensors")
    assert all(v.dtype == torch.bfloat16 for v in state.values())
    model = load_transformer(tmp_path / "t2v_bf16.safetensors", TINY_T2V, dtype=torch.float32)
    assert_same_weights(model, {k: v.bfloat16().float() for k, v in sd.items()})


def is_quantised(key: str, value: torch.Tensor) -> bool:
    """ComfyUI fp8 files quantise the 2-D block weights; norms, biases and embeddings stay in 16 bits."""
    return key.startswith("blocks.") and key.endswith(".weight") and value.ndim == 2


def test_fp8_e4m3fn_comfyui_file(tmp_path):
    sd = load_file(T2V)
    stored = {f"model.diffusion_model.{k}": v.to(torch.float8_e4m3fn if is_quantised(k, v) else torch.bfloat16)
              for k, v in sd.items()}
    save_file(stored, tmp_path / "wan2.2_t2v_fp8_e4m3fn.safetensors")
    model = load_transformer(tmp_path / "wan2.2_t2v_fp8_e4m3fn.safetensors", TINY_T2V, dtype=torch.float32)
    expected = {k.removeprefix("model.diffusion_model."): v.float() for k, v in stored.items()}
    assert_same_weights(model, expected)
    quantised = [k for k in sd if is_quantised(k, sd[k])]
    assert len(quantised) == 2 * 10  # q k v o per attention, ffn.0 ffn.2, per block
    rel = max(((expected[k] - sd[k]).abs().max() / sd[k].abs().max()).item() for k in quantised)
    assert 0 < rel < 0.07  # e4m3 keeps 3 mantissa bits


def write_fp8_scaled(sd: dict, path, per_row: bool = False) -> dict[str, torch.Tensor]:
    """A ComfyUI fp8_scaled file: fp8 weights + float32 `scale_weight`; returns the weights it represents."""
    stored, represented = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}, {}
    for key, value in sd.items():
        prefixed = f"model.diffusion_model.{key}"
        if not is_quantised(key, value):
            stored[prefixed] = represented[key] = value.half()
            continue
        amax = value.abs().amax(dim=1) if per_row else value.abs().max()
        scale = (amax / 448.0).float()
        q = (value / (scale[:, None] if per_row else scale)).to(torch.float8_e4m3fn)
        stored[prefixed] = q
        stored[prefixed.removesuffix(".weight") + (".weight_scale" if per_row else ".scale_weight")] = scale
        represented[key] = q.float() * (scale[:, None] if per_row else scale)
    save_file(stored, path)
    return represented


@pytest.mark.parametrize("per_row", [False, True])
def test_fp8_scaled_is_dequantised(tmp_path, per_row):
    sd = load_file(T2V)
    path = tmp_path / "wan2.2_t2v_fp8_scaled.safetensors"
    represented = write_fp8_scaled(sd, path, per_row)
    state = read_state_dict(path, dtype=torch.float32)
    assert set(state) == set(sd), "scale and marker keys are dropped"
    for key, value in represented.items():
        assert torch.allclose(state[key], value.float(), rtol=1e-6, atol=0), key
        assert (state[key] - sd[key]).abs().max() <= 0.07 * sd[key].abs().max()
    assert read_state_dict(path)["blocks.0.ffn.0.weight"].dtype == torch.float16, "file's 16-bit dtype by default"
    model = load_transformer(path, TINY_T2V, dtype=torch.float32)
    assert_same_weights(model, represented, atol=1e-6)


def test_fp8_scaled_kept_for_fp8_mode(tmp_path):
    sd = load_file(T2V)
    write_fp8_scaled(sd, tmp_path / "scaled.safetensors")
    state = read_state_dict(tmp_path / "scaled.safetensors", keep_fp8=True)
    assert state["blocks.1.self_attn.q.weight"].dtype == torch.float8_e4m3fn
    assert state["blocks.1.self_attn.q.scale_weight"].dtype == torch.float32
    assert "scaled_fp8" not in state


def write_sharded(sd: dict, folder, shards: int = 3) -> None:
    """An official Wan-AI folder: diffusion_pytorch_model-0000N-of-0000M.safetensors + index.json."""
    folder.mkdir(parents=True)
    keys = sorted(sd)
    weight_map = {}
    for i in range(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: sd[k].bfloat16() for k in keys[i::shards]}
        save_file(part, folder / name)
        weight_map.update({k: name for k in part})
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text(json.dumps({"_class_name": "WanModel", "dim": 64}))


def test_sharded_official_folder(tmp_path):
    sd = load_file(FIXTURES / "wan22_ti2v_tiny.safetensors")
    write_sharded(sd, tmp_path / "Wan2.2-TI2V-5B")
    model = load_transformer(tmp_path / "Wan2.2-TI2V-5B", tiny("wan22_ti2v_tiny"), dtype=torch.float32)
    assert_same_weights(model, {k: v.bfloat16() for k, v in sd.items()})


def test_sharded_index_naming_missing_shard(tmp_path):
    write_sharded(load_file(T2V), tmp_path / "model")
    (tmp_path / "model" / "diffusion_pytorch_model-00002-of-00003.safetensors").unlink()
    with pytest.raises(UserError, match="missing: diffusion_pytorch_model-00002-of-00003"):
        load_transformer(tmp_path / "model", TINY_T2V)


def test_pth_file(tmp_path):
    sd = load_file(FIXTURES / "wan21_i2v_tiny.safetensors")
    torch.save(sd, tmp_path / "wan21_i2v.pth")
    model = load_transformer(tmp_path / "wan21_i2v.pth", tiny("wan21_i2v_tiny"), dtype=torch.float32)
    assert_same_weights(model, sd)


def test_diffusers_folder_written_by_diffusers_gives_same_output(tmp_path):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    v = tiny("wan22_i2v_tiny")
    theirs = WanTransformer3DModel(
        patch_size=v.patch_size, num_attention_heads=v.num_heads, attention_head_dim=v.head_dim,
        in_channels=v.in_dim, out_channels=v.out_dim, text_dim=v.text_dim, freq_dim=v.freq_dim,
        ffn_dim=v.ffn_dim, num_layers=v.num_layers, cross_attn_norm=True, eps=v.eps).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # diffusers zero-inits some layers; make every weight count
    theirs.save_pretrained(tmp_path / "transformer")
    ours = load_transformer(tmp_path / "transformer", v, dtype=torch.float32).eval()
    x, y = torch.randn(1, 16, 2, 4, 4), torch.randn(1, 20, 2, 4, 4)
    t, context = torch.tensor([700.0]), torch.randn(1, v.text_len, v.text_dim)
    with torch.no_grad():
        expected = theirs(torch.cat([x, y], 1), t, context, return_dict=False)[0]
        got = ours(x, t, context, y_BCFHW=y)
    assert (got - expected).abs().max() < 1e-4


def test_diffusers_names_read_as_official(tmp_path):
    sd = load_file(FIXTURES / "wan21_flf2v_tiny.safetensors")
    (tmp_path / "transformer").mkdir()
    save_file(official_to_diffusers(sd), tmp_path / "transformer" / "diffusion_pytorch_model.safetensors")
    (tmp_path / "transformer" / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel"}))
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "WanImageToVideoPipeline"}))
    state = read_state_dict(tmp_path)  # a pipeline folder: its transformer/
    assert set(state) == set(sd) and all(torch.equal(state[k], sd[k]) for k in sd)


def write_expert_folder(root) -> tuple[dict, dict]:
    high = load_file(T2V)
    torch.manual_seed(0)
    low = {k: v + 0.01 * torch.randn_like(v) for k, v in high.items()}
    write_sharded(high, root / "high_noise_model", shards=2)
    write_sharded(low, root / "low_noise_model", shards=2)
    return high, low


def test_a14b_expert_folder(tmp_path):
    high, low = write_expert_folder(tmp_path / "Wan2.2-T2V-A14B")
    model_high, model_low = load_expert_pair(tmp_path / "Wan2.2-T2V-A14B", variant=TINY_T2V, dtype=torch.float32)
    assert_same_weights(model_high, {k: v.bfloat16() for k, v in high.items()})
    assert_same_weights(model_low, {k: v.bfloat16() for k, v in low.items()})
    with pytest.raises(UserError, match="two A14B experts"):
        load_transformer(tmp_path / "Wan2.2-T2V-A14B", TINY_T2V)


def test_expert_pair_from_comfyui_file_names(tmp_path):
    sd = load_file(FIXTURES / "wan22_i2v_tiny.safetensors")
    for expert in ("high", "low"):
        save_file({f"model.diffusion_model.{k}": v.half() for k, v in sd.items()},
                  tmp_path / f"wan2.2_i2v_{expert}_noise_14B_fp16.safetensors")
    high, low = load_expert_pair(tmp_path / "wan2.2_i2v_high_noise_14B_fp16.safetensors",
                                 variant=tiny("wan22_i2v_tiny"))
    assert high.variant.in_dim == low.variant.in_dim == 36


@pytest.mark.parametrize("name", sorted(MANIFEST_VARIANTS))
def test_infer_variant_full_size(name):
    plain, hinted = MANIFEST_VARIANTS[name]
    state = meta_state(name)
    assert infer_variant(state) == plain
    assert infer_variant(state, hint=f"/models/{name}.safetensors") == hinted


@pytest.mark.parametrize("name", ["wan2.1_t2v_1.3B", "wan2.1_i2v_14B", "wan2.2_i2v_A14B_expert", "wan2.2_ti2v_5B"])
def test_infer_variant_diffusers_and_comfyui_names(name):
    plain, _ = MANIFEST_VARIANTS[name]
    assert infer_variant(meta_state(f"diffusers_{name}")) == plain
    prefixed = {f"model.diffusion_model.{k}": v for k, v in meta_state(name).items()}
    assert infer_variant(prefixed) == plain


def test_infer_variant_path_hints():
    state = meta_state("wan2.2_t2v_A14B_expert")
    assert infer_variant(state, hint="wan2.2_t2v_high_noise_14B_fp16.safetensors") == ["wan2.2-t2v-a14b"]
    assert infer_variant(state, hint="Wan2.2-T2V-A14B/low_noise_model") == ["wan2.2-t2v-a14b"]
    assert infer_variant(state, hint="/models/wan2.2-loras/wan2.1_t2v_14B.safetensors") == ["wan2.1-t2v-14b"]
    assert infer_variant(state, hint="/models/Wan2.1-T2V-14B/diffusion_pytorch_model.safetensors.index.json") == [
        "wan2.1-t2v-14b"]
    assert infer_variant(state, hint="/models/t2v_14B.safetensors") == ["wan2.1-t2v-14b", "wan2.2-t2v-a14b"]


def test_tiny_shapes_match_no_full_variant():
    assert infer_variant(load_file(T2V)) == []
    with pytest.raises(UserError, match="match no known Wan variant .*T2V checkpoint, dim 64.*pass the variant"):
        load_transformer(T2V)


@pytest.mark.parametrize("variant, fixture, message", [
    ("wan2.2-i2v-a14b", "wan22_t2v_tiny",
     "wan2.2-i2v-a14b expects 36 input channels; {path} has 16 (a T2V checkpoint, dim 64)"),
    ("wan2.1-i2v-14b", "wan22_i2v_tiny",
     "wan2.1-i2v-14b expects CLIP image-embedding weights (img_emb.*, k_img/v_img); {path} has none "
     "(a Wan 2.2 I2V checkpoint, dim 64)"),
    ("wan2.2-i2v-a14b", "wan21_i2v_tiny",
     "wan2.2-i2v-a14b has no CLIP image embedding; {path} has img_emb.* (a Wan 2.1 I2V checkpoint, dim 64)"),
    ("wan2.2-t2v-a14b", "wan22_ti2v_tiny",
     "wan2.2-t2v-a14b expects 16 input channels; {path} has 48 (a Wan 2.2 TI2V checkpoint, dim 64)"),
])
def test_wrong_checkpoint_one_line(variant, fixture, message):
    path = FIXTURES / f"{fixture}.safetensors"
    with pytest.raises(UserError) as info:
        load_transformer(path, get_variant(variant, **TINY))
    assert str(info.value) == message.format(path=path)


def test_wrong_size_and_wrong_kind(tmp_path):
    with pytest.raises(UserError, match="wan2.2-t2v-a14b expects dim 5120; .* has 64"):
        load_transformer(T2V, "wan2.2-t2v-a14b")
    with pytest.raises(UserError, match="is a official vae file, not a Wan transformer"):
        load_transformer(FIXTURES / "wan21_vae_tiny.pth", TINY_T2V)
    sd = load_file(T2V)
    del sd["blocks.1.ffn.2.bias"]
    sd["blocks.1.ffn.9.bias"] = torch.zeros(64)
    save_file(sd, tmp_path / "broken.safetensors")
    with pytest.raises(UserError, match=r"1 missing \(e.g. blocks.1.ffn.2.bias\); 1 unexpected"):
        load_transformer(tmp_path / "broken.safetensors", TINY_T2V)


def test_bad_paths(tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        load_transformer(tmp_path / "missing.safetensors")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="not a checkpoint file"):
        read_state_dict(tmp_path / "notes.txt")
    (tmp_path / "bad.safetensors").write_bytes(b"\x05\x00")
    with pytest.raises(UserError, match="not a readable safetensors file"):
        read_state_dict(tmp_path / "bad.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no model weights found"):
        load_transformer(tmp_path / "empty")


def test_vae_and_umt5_files_read_with_their_names():
    vae = read_state_dict(FIXTURES / "wan21_vae_tiny.safetensors")
    assert set(vae) == set(torch.load(FIXTURES / "wan21_vae_tiny.pth", weights_only=True))
    umt5 = read_state_dict(FIXTURES / "umt5_tiny_official.pth")
    assert "token_embedding.weight" in umt5


def test_folder_with_one_weights_file(tmp_path):
    """A single official file inside a folder of its own loads from the folder."""
    shutil.copy(T2V, tmp_path / "diffusion_pytorch_model.safetensors")
    model = load_transformer(tmp_path, TINY_T2V, dtype=torch.float32)
    assert_same_weights(model, load_file(T2V))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to count allocated bytes exactly")
def test_loading_to_gpu_holds_one_copy(tmp_path):
    """Meta init + assign: the GPU never holds more than the model's own bytes (no init copy, no staging)."""
    from wantune.models.transformer import WanModel

    variant = get_variant("wan2.2-t2v-a14b", dim=512, ffn_dim=2048, num_heads=4, num_layers=8, text_dim=64)
    with torch.device("meta"):
        shapes = WanModel(variant).state_dict()
    torch.manual_seed(0)
    save_file({k: torch.randn(v.shape).half() for k, v in shapes.items()}, tmp_path / "mid_fp16.safetensors")
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    model = load_transformer(tmp_path / "mid_fp16.safetensors", variant, dtype=torch.bfloat16, device="cuda")
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert model_bytes <= torch.cuda.memory_allocated() - start <= model_bytes * 1.01
    assert torch.cuda.max_memory_allocated() - start <= model_bytes * 1.01
