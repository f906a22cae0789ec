"""`wantune model inspect`: names every fixture layout, full-size checkpoints (header-only files built from the
manifests), folders with experts and components, and fails in one line with exit code 2."""

from __future__ import annotations

import json
import math
import shutil
import struct
import subprocess
import sys

import pytest
import torch
from conftest import FIXTURES, manifest
from safetensors.torch import load_file, save_file
from test_checkpoint import T2V, write_fp8_scaled, write_sharded

from wantune.cli import main
from wantune.models.diffusers_names import official_to_diffusers

TRANSFORMER_FIXTURES = ["wan21_t2v_tiny", "wan21_i2v_tiny", "wan21_flf2v_tiny", "wan22_t2v_tiny",
                        "wan22_i2v_tiny", "wan22_ti2v_tiny"]
FAMILY = {"wan21": "wan2.1", "wan22": "wan2.2"}


def inspect(path, capsys, *extra) -> dict:
    code = main(["model", "inspect", str(path), *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def fails(path, capsys, *extra) -> str:
    code = main(["model", "inspect", str(path), *extra])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0].removeprefix("error: ")


def numel(state: dict) -> int:
    return sum(v.numel() for v in state.values())


def write_header_only(path, name: str, dtype: str = "BF16", prefix: str = "") -> int:
    """A valid sparse .safetensors file with a manifest's full-size shapes (no data written); returns numel."""
    header, offset = {}, 0
    for key, (shape, _) in manifest(name).items():
        size = math.prod(shape) * 2
        header[prefix + key] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(blob)) + blob)
        handle.truncate(8 + len(blob) + offset)
    return offset // 2


@pytest.mark.parametrize("fixture", TRANSFORMER_FIXTURES)
def test_transformer_fixtures_named(fixture, fixture_index, capsys):
    info = inspect(FIXTURES / f"{fixture}.safetensors", capsys)
    config = fixture_index[fixture]["config"]
    arch = info["architecture"]
    assert (info["kind"], info["format"], info["dtype"]) == ("transformer", "official", "fp32")
    assert info["variant"] is None and info["candidates"] == []  # tiny: no full-size variant fits
    for key in ("dim", "ffn_dim", "num_layers", "in_dim", "out_dim", "text_dim", "freq_dim", "patch_size",
                "model_type"):
        assert arch[key] == config[key], key
    assert arch["families"] == [FAMILY[fixture_index[fixture]["code"]]]
    assert info["parameters"] == numel(load_file(FIXTURES / f"{fixture}.safetensors"))


def test_comfyui_fp16_fixture(capsys):
    info = inspect(FIXTURES / "wan22_t2v_tiny.comfyui_fp16.safetensors", capsys)
    assert (info["kind"], info["format"], info["dtype"]) == ("transformer", "comfyui", "fp16")
    assert info["architecture"]["model_type"] == "t2v" and info["architecture"]["families"] == ["wan2.2"]
    assert info["parameters"] == numel(load_file(T2V))


@pytest.mark.parametrize("fixture, fmt", [("wan21_vae_tiny.pth", "official"), ("wan21_vae_tiny.safetensors", "comfyui"),
                                          ("wan22_vae_tiny.pth", "official"), ("wan22_vae_tiny.safetensors", "comfyui")])
def test_vae_fixtures(fixture, fmt, fixture_index, capsys):
    info = inspect(FIXTURES / fixture, capsys)
    entry = fixture_index[fixture.split(".")[0]]
    assert (info["kind"], info["format"], info["dtype"]) == ("vae", fmt, "fp32")
    assert info["version"] == {"vae2_1": "2.1", "vae2_2": "2.2"}[entry["code"]]
    assert info["z_dim"] == entry["config"]["z_dim"]
    assert info["parameters"] == numel(load_file(FIXTURES / fixture.replace(".pth", ".safetensors")))


def test_umt5_fixture(fixture_index, capsys):
    info = inspect(FIXTURES / "umt5_tiny_official.pth", capsys)
    config = fixture_index["umt5_tiny_official"]["config"]
    assert (info["kind"], info["format"], info["dtype"]) == ("text_encoder", "official", "fp32")
    assert (info["vocab"], info["dim"], info["layers"]) == (config["vocab"], config["dim"], config["num_layers"])


def test_hf_umt5_folder(tmp_path, capsys):
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(vocab_size=137, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    UMT5EncoderModel(config).save_pretrained(tmp_path / "text_encoder")
    info = inspect(tmp_path / "text_encoder", capsys)
    assert (info["kind"], info["format"], info["vocab"], info["dim"], info["layers"]) == (
        "text_encoder", "hf", 137, 32, 2)


@pytest.mark.parametrize("name, variant, candidates", [
    ("wan2.1_t2v_1.3B", "wan2.1-t2v-1.3b", ["wan2.1-t2v-1.3b"]),
    ("wan2.1_i2v_14B", "wan2.1-i2v-14b", ["wan2.1-i2v-14b"]),
    ("wan2.1_flf2v_14B", "wan2.1-flf2v-14b", ["wan2.1-flf2v-14b"]),
    ("wan2.2_i2v_A14B_expert", "wan2.2-i2v-a14b", ["wan2.2-i2v-a14b"]),
    ("wan2.2_ti2v_5B", "wan2.2-ti2v-5b", ["wan2.2-ti2v-5b"]),
])
def test_full_size_transformers(name, variant, candidates, tmp_path, capsys):
    total = write_header_only(tmp_path / f"{name}_bf16.safetensors", name)
    info = inspect(tmp_path / f"{name}_bf16.safetensors", capsys)
    assert (info["variant"], info["candidates"], info["dtype"]) == (variant, candidates, "bf16")
    assert info["parameters"] == total
    assert info["architecture"]["num_heads"] == {"wan2.1-t2v-1.3b": 12, "wan2.2-ti2v-5b": 24}.get(variant, 40)


def test_full_size_t2v_14b_is_ambiguous_without_a_hint(tmp_path, capsys):
    write_header_only(tmp_path / "t2v_14B.safetensors", "wan2.1_t2v_14B")
    info = inspect(tmp_path / "t2v_14B.safetensors", capsys)
    assert info["variant"] is None and info["candidates"] == ["wan2.1-t2v-14b", "wan2.2-t2v-a14b"]


def test_full_size_comfyui_fp8_expert(tmp_path, capsys):
    path = tmp_path / "wan2.2_t2v_high_noise_14B_fp8_e4m3fn.safetensors"
    write_header_only(path, "wan2.2_t2v_A14B_expert", dtype="F8_E4M3", prefix="model.diffusion_model.")
    info = inspect(path, capsys)
    assert (info["format"], info["variant"], info["expert"]) == ("comfyui", "wan2.2-t2v-a14b", "high_noise")
    assert info["dtype"] == "fp8_e4m3fn"


@pytest.mark.parametrize("name, kind, fmt, extra", [
    ("wan2.1_vae", "vae", "comfyui", {"version": "2.1", "z_dim": 16}),
    ("wan2.2_vae", "vae", "comfyui", {"version": "2.2", "z_dim": 48}),
    ("umt5_xxl_encoder_official", "text_encoder", "official", {"vocab": 256384, "dim": 4096, "layers": 24}),
    ("hf_umt5_xxl_encoder", "text_encoder", "hf", {"vocab": 256384, "dim": 4096, "layers": 24}),
])
def test_full_size_components(name, kind, fmt, extra, tmp_path, capsys):
    write_header_only(tmp_path / f"{name}.safetensors", name)
    info = inspect(tmp_path / f"{name}.safetensors", capsys)
    assert (info["kind"], info["format"]) == (kind, fmt)
    assert {k: info[k] for k in extra} == extra


def test_synthesised_dtypes_and_layouts(tmp_path, capsys):
    sd = load_file(T2V)
    save_file({k: v.bfloat16() for k, v in sd.items()}, tmp_path / "bf16.safetensors")
    assert inspect(tmp_path / "bf16.safetensors", capsys)["dtype"] == "bf16"
    save_file({f"model.diffusion_model.{k}": v.to(torch.float8_e4m3fn) if v.ndim == 2 and k.startswith("blocks")
               else v.bfloat16() for k, v in sd.items()}, tmp_path / "fp8.safetensors")
    info = inspect(tmp_path / "fp8.safetensors", capsys)
    assert (info["format"], info["dtype"]) == ("comfyui", "fp8_e4m3fn")
    write_fp8_scaled(sd, tmp_path / "scaled.safetensors")
    info = inspect(tmp_path / "scaled.safetensors", capsys)
    assert (info["format"], info["dtype"], info["parameters"]) == ("comfyui", "fp8_scaled", numel(sd))
    write_sharded(sd, tmp_path / "sharded")
    shutil.copy(FIXTURES / "wan21_vae_tiny.pth", tmp_path / "sharded" / "Wan2.1_VAE.pth")
    info = inspect(tmp_path / "sharded", capsys)
    assert (info["kind"], info["format"], info["shards"], info["parameters"]) == (
        "transformer", "official-sharded", 3, numel(sd))
    assert [(c["kind"], c["version"]) for c in info["components"]] == [("vae", "2.1")]


def test_a14b_official_folder_with_components(tmp_path, capsys):
    root = tmp_path / "Wan2.2-T2V-A14B"
    root.mkdir()
    for expert in ("high_noise_model", "low_noise_model"):
        (root / expert).mkdir()
        write_header_only(root / expert / "diffusion_pytorch_model-00001-of-00001.safetensors",
                          "wan2.2_t2v_A14B_expert")
    shutil.copy(FIXTURES / "wan21_vae_tiny.pth", root / "Wan2.1_VAE.pth")
    shutil.copy(FIXTURES / "umt5_tiny_official.pth", root / "models_t5_umt5-xxl-enc-bf16.pth")
    shutil.copytree(FIXTURES / "tokenizer_tiny", root / "google" / "umt5-xxl")
    info = inspect(root, capsys)
    assert (info["kind"], info["layout"], info["variant"]) == ("transformer", "a14b-experts", "wan2.2-t2v-a14b")
    assert set(info["experts"]) == {"high_noise", "low_noise"}
    assert info["experts"]["low_noise"]["expert"] == "low_noise"
    assert info["parameters"] == 2 * sum(math.prod(s) for s, _ in manifest("wan2.2_t2v_A14B_expert").values())
    kinds = {c["kind"]: c for c in info["components"]}
    assert kinds["vae"]["version"] == "2.1" and kinds["text_encoder"]["format"] == "official"
    assert kinds["tokenizer"]["path"].endswith("google/umt5-xxl")
    assert inspect(root, capsys, "--variant", "wan2.2-t2v-a14b")["fits"] == "wan2.2-t2v-a14b"


def test_diffusers_pipeline_folder(tmp_path, capsys):
    from diffusers import AutoencoderKLWan

    sd = load_file(FIXTURES / "wan22_i2v_tiny.safetensors")
    for name in ("transformer", "transformer_2"):
        (tmp_path / name).mkdir()
        save_file(official_to_diffusers(sd), tmp_path / name / "diffusion_pytorch_model.safetensors")
    AutoencoderKLWan(base_dim=8, z_dim=16).save_pretrained(tmp_path / "vae")
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "WanImageToVideoPipeline"}))
    info = inspect(tmp_path, capsys)
    assert (info["format"], info["layout"]) == ("diffusers", "a14b-experts")
    assert info["experts"]["high_noise"]["architecture"]["model_type"] == "i2v"
    vae = [c for c in info["components"] if c["kind"] == "vae"]
    assert [(c["format"], c["version"]) for c in vae] == [("diffusers", "2.1")]


def test_wrong_variant_exits_2_with_one_line(tmp_path, capsys):
    path = tmp_path / "wan2.2_t2v_low_noise_14B_bf16.safetensors"
    write_header_only(path, "wan2.2_t2v_A14B_expert")
    message = fails(path, capsys, "--variant", "wan2.2-i2v-a14b")
    assert message == f"wan2.2-i2v-a14b expects 36 input channels; {path} has 16 (a T2V checkpoint)"
    assert "unknown model variant 'wan2.2-i2v'" in fails(path, capsys, "--variant", "wan2.2-i2v")


def test_bad_inputs_exit_2(tmp_path, capsys):
    assert "no such file or folder" in fails(tmp_path / "nope.safetensors", capsys)
    assert "not a Wan transformer, VAE, UMT5, CLIP or LoRA" in fails(FIXTURES / "wan22_t2v_tiny.golden.safetensors",
                                                                     capsys)
    (tmp_path / "readme.txt").write_text("x")
    assert "not a checkpoint file" in fails(tmp_path / "readme.txt", capsys)
    (tmp_path / "empty").mkdir()
    assert "no Wan checkpoints found" in fails(tmp_path / "empty", capsys)
    (tmp_path / "wan2.1-t2v-14b-Q4_K_M.gguf").write_bytes(b"GGUF")
    assert "GGUF quantised files are not supported" in fails(tmp_path / "wan2.1-t2v-14b-Q4_K_M.gguf", capsys)


def test_subprocess_no_traceback(tmp_path):
    path = tmp_path / "t2v.safetensors"
    write_header_only(path, "wan2.1_t2v_1.3B")
    run = subprocess.run([sys.executable, "-m", "wantune", "model", "inspect", str(path), "--variant",
                          "wan2.1-i2v-14b"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip() == (f"error: wan2.1-i2v-14b expects 36 input channels; {path} has 16 "
                                  "(a T2V checkpoint)")


def test_clip_and_lora_files_named(tmp_path, capsys):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=28, patch_size=14, projection_dim=16)
    CLIPVisionModelWithProjection(config).save_pretrained(tmp_path / "image_encoder")
    info = inspect(tmp_path / "image_encoder", capsys)
    assert (info["kind"], info["format"]) == ("clip", "hf")
    save_file({"visual.transformer.0.attn.to_qkv.weight": torch.zeros(96, 32), "log_scale": torch.zeros(())},
              tmp_path / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.safetensors")
    info = inspect(tmp_path / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.safetensors", capsys)
    assert (info["kind"], info["format"]) == ("clip", "official")
    a, b = torch.zeros(4, 64), torch.zeros(64, 4)
    layouts = {
        "comfyui": {"diffusion_model.blocks.0.self_attn.q.lora_A.weight": a,
                    "diffusion_model.blocks.0.self_attn.q.lora_B.weight": b},
        "kohya": {"lora_unet_blocks_0_self_attn_q.lora_down.weight": a,
                  "lora_unet_blocks_0_self_attn_q.lora_up.weight": b, "lora_unet_blocks_0_self_attn_q.alpha":
                  torch.tensor(4.0)},
        "diffusers": {"transformer.blocks.0.attn1.to_q.lora_A.weight": a,
                      "transformer.blocks.0.attn1.to_q.lora_B.weight": b},
    }
    for layout, state in layouts.items():
        save_file(state, tmp_path / f"{layout}.safetensors")
        info = inspect(tmp_path / f"{layout}.safetensors", capsys)
        assert (info["kind"], info["format"], info["parameters"]) == ("lora", layout, 512 + (layout == "kohya"))
