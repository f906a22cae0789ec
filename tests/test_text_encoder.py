"""UMT5 text encoder: official golden, tokenizer ids, layouts (official / HF / ComfyUI / fp8), padding, errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import FIXTURES, MANIFESTS
from wantune.errors import UserError
from wantune.models import fp8, umt5_convert
from wantune.models.text_encoder import clean_prompt, load_text_encoder, pad_context

OFFICIAL = FIXTURES / "umt5_tiny_official.pth"
TOKENIZER = FIXTURES / "tokenizer_tiny"


@pytest.fixture(scope="module")
def golden():
    return load_file(FIXTURES / "umt5_tiny_official.golden.safetensors")


@pytest.fixture(scope="module")
def prompt():
    return json.loads((FIXTURES / "index.json").read_text())["umt5_tiny_official"]["prompt"]


@pytest.fixture(scope="module")
def encoder():
    return load_text_encoder(OFFICIAL, TOKENIZER, torch.float32)


def test_golden_hidden_and_ids(encoder, golden, prompt):
    ids_BL, mask_BL = encoder.tokenize([prompt])
    n = int(mask_BL.sum())
    assert ids_BL.shape == (1, 512) and ids_BL[0, :n].tolist() == golden["ids"][0].tolist()
    assert ids_BL[0, n - 1] == 1 and ids_BL[0, n:].eq(0).all()  # eos, then pad
    (hidden,) = encoder.encode([prompt])
    assert hidden.shape == golden["hidden"].shape
    # measured max abs error: 1.2e-6 (values up to 3.5)
    assert (hidden - golden["hidden"]).abs().max() < 1e-5


def test_batch_trims_each_prompt(encoder, golden, prompt):
    short, full = encoder.encode(["a dog", "  a red circle moving left\n on a black background "])
    assert short.shape[0] < full.shape[0] == golden["hidden"].shape[0]
    assert (full - golden["hidden"]).abs().max() < 1e-5  # whitespace cleaned; padding masked out
    padded = pad_context([short, full])
    assert padded.shape == (2, 512, 32) and padded[0, short.shape[0]:].eq(0).all()
    assert torch.equal(padded[1, : full.shape[0]], full)


def test_clean_prompt():
    assert clean_prompt("  a &amp;amp; b\n\t c ") == "a & b c"


def test_hf_and_comfyui_layouts_give_same_output(tmp_path, encoder, prompt):
    want = encoder.encode([prompt])[0]
    hf = {k: v.clone() for k, v in encoder.model.state_dict().items()}
    save_file(hf, tmp_path / "hf.safetensors")
    comfy = {k: v.half() for k, v in hf.items() if k != "encoder.embed_tokens.weight"}
    comfy["spiece_model"] = torch.zeros(16, dtype=torch.uint8)  # ComfyUI may embed the tokenizer
    save_file(comfy, tmp_path / "umt5_xxl_fp16.safetensors")
    save_file({f"text_encoders.t5xxl.transformer.{k}": v for k, v in hf.items()}, tmp_path / "prefixed.safetensors")
    for name in ("hf.safetensors", "prefixed.safetensors"):
        other = load_text_encoder(tmp_path / name, TOKENIZER, torch.float32)
        assert torch.equal(other.encode([prompt])[0], want)
    half = load_text_encoder(tmp_path / "umt5_xxl_fp16.safetensors", TOKENIZER, torch.float32)
    assert (half.encode([prompt])[0] - want).abs().max() < 1e-2


def test_fp8_scaled_layout(tmp_path, encoder, prompt):
    sd = {}
    for key, value in encoder.model.state_dict().items():
        if key.endswith(".weight") and value.ndim == 2 and "block" in key:
            sd[key], sd[key.removesuffix(".weight") + ".scale_weight"] = fp8.quantize_scaled(value)
        elif key != "encoder.embed_tokens.weight":
            sd[key] = value.contiguous()
    sd["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    save_file(sd, tmp_path / "umt5_xxl_fp8_e4m3fn_scaled.safetensors")
    other = load_text_encoder(tmp_path / "umt5_xxl_fp8_e4m3fn_scaled.safetensors", TOKENIZER, torch.float32)
    q = other.model.encoder.block[0].layer[0].SelfAttention.q.weight
    key = "encoder.block.0.layer.0.SelfAttention.q."
    assert torch.equal(q, fp8.dequantize(sd[key + "weight"], sd[key + "scale_weight"], torch.float32))
    want = encoder.encode([prompt])[0]
    assert (other.encode([prompt])[0] - want).abs().mean() < 0.05 * want.abs().mean()


def test_full_size_official_names_map_to_hf_manifest():
    from transformers import UMT5Config, UMT5EncoderModel

    official = json.loads((MANIFESTS / "umt5_xxl_encoder_official.json").read_text())["tensors"]
    hf = json.loads((MANIFESTS / "hf_umt5_xxl_encoder.json").read_text())["tensors"]
    mapped = umt5_convert.official_to_hf({k: torch.empty(v[0], device="meta") for k, v in official.items()})
    assert {k: list(v.shape) for k, v in mapped.items()} == {k: v[0] for k, v in hf.items()}
    kwargs = umt5_convert.umt5_config_kwargs(mapped)
    assert (kwargs["num_layers"], kwargs["num_heads"], kwargs["d_kv"], kwargs["d_ff"]) == (24, 64, 64, 10240)
    with torch.device("meta"):
        model = UMT5EncoderModel(UMT5Config(**kwargs))
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == {k: v[0] for k, v in hf.items()}
    assert model.config.dense_act_fn == "gelu_new" and model.config.is_gated_act
    assert set(umt5_convert.hf_to_official(mapped)) == set(official)


def test_bf16_dtype_and_identity(prompt):
    enc = load_text_encoder(OFFICIAL, TOKENIZER, torch.bfloat16)
    assert enc.encode([prompt])[0].dtype == torch.bfloat16
    assert enc.identity.endswith("bfloat16") and "umt5_tiny_official.pth" in enc.identity


def test_errors(tmp_path):
    with pytest.raises(UserError, match="tokenizer folder"):
        load_text_encoder(OFFICIAL, tmp_path / "nope", torch.float32)
    with pytest.raises(UserError, match="no such text encoder"):
        load_text_encoder(tmp_path / "missing.pth", TOKENIZER, torch.float32)
    with pytest.raises(UserError, match="not a UMT5 encoder"):
        load_text_encoder(FIXTURES / "wan21_vae_tiny.safetensors", TOKENIZER, torch.float32)
    sd = torch.load(OFFICIAL, map_location="cpu", weights_only=True)
    sd["token_embedding.weight"] = sd["token_embedding.weight"][:100]
    torch.save(sd, tmp_path / "small_vocab.pth")
    with pytest.raises(UserError, match="tokenizer has"):
        load_text_encoder(tmp_path / "small_vocab.pth", TOKENIZER, torch.float32)
    sd = torch.load(OFFICIAL, map_location="cpu", weights_only=True)
    sd["blocks.0.extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "odd.pth")
    with pytest.raises(UserError, match="unexpected key"):
        load_text_encoder(tmp_path / "odd.pth", TOKENIZER, torch.float32)


def test_official_and_pipeline_folders(tmp_path, encoder, prompt):
    import shutil

    official = tmp_path / "Wan2.1-T2V-1.3B"
    (official / "google").mkdir(parents=True)
    shutil.copy(OFFICIAL, official / "models_t5_umt5-xxl-enc-bf16.pth")
    shutil.copytree(TOKENIZER, official / "google" / "umt5-xxl")
    pipeline = tmp_path / "pipeline"
    shutil.copytree(TOKENIZER, pipeline / "tokenizer")
    encoder.model.save_pretrained(pipeline / "text_encoder")
    want = encoder.encode([prompt])[0]
    for folder in (official, pipeline):
        assert torch.equal(load_text_encoder(folder, folder, torch.float32).encode([prompt])[0], want)
