"""`wantune lora inspect | convert | merge` end to end on files, and their one-line errors (exit 2)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FIXTURES
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_lora import random_lora, run, tiny_inputs, tiny_model

from wantune.cli import main
from wantune.lora import attach_loras, load_lora, save_lora
from wantune.models.checkpoint import load_transformer
from wantune.models.variants import TINY, get_variant

COMFY_BASE = FIXTURES / "wan22_t2v_tiny.comfyui_fp16.safetensors"
TINY_A14B = get_variant("wan2.2-t2v-a14b", **TINY)


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write_tiny_lora(path, seed, rank=4, alpha=4.0, **kwargs):
    return save_lora(path, random_lora(tiny_model("wan2.2-t2v-a14b"), rank, alpha, seed=seed, **kwargs),
                     {"epochs": 3}, expert="low")


def test_inspect_prints_layout_ranks_targets_and_metadata(tmp_path, capsys):
    path = write_tiny_lora(tmp_path / "a.safetensors", seed=1, targets=["self_attn.q", "ffn.0", "ffn.2"])
    code, out, _ = cli(capsys, "lora", "inspect", str(path))
    info = json.loads(out)
    assert code == 0
    assert info["format"] == "comfyui" and info["ranks"] == [4] and info["modules"] == 6 and info["blocks"] == 2
    assert info["targets"] == ["self_attn.q", "ffn.0", "ffn.2"]
    assert info["base_dim"] == 64 and info["base_ffn_dim"] == 128
    assert info["metadata"]["wantune.expert"] == "low" and info["metadata"]["wantune.base_variant"] == "wan2.2-t2v-a14b"
    # a 1.3B-shaped LoRA (kohya layout, rank 1) is recognised as such
    big = {"lora_unet_blocks_0_ffn_0.lora_down.weight": torch.zeros(1, 1536),
           "lora_unet_blocks_0_ffn_0.lora_up.weight": torch.zeros(8960, 1),
           "lora_unet_blocks_0_ffn_0.alpha": torch.tensor(1.0)}
    save_file(big, str(tmp_path / "big.safetensors"))
    info = json.loads(cli(capsys, "lora", "inspect", str(tmp_path / "big.safetensors"))[1])
    assert info["format"] == "kohya" and info["base_dim"] == 1536
    assert info["variant_candidates"] == ["wan2.1-t2v-1.3b"]


@pytest.mark.parametrize("fmt,prefix", [("kohya", "lora_unet_blocks_"), ("diffusers", "transformer.blocks."),
                                        ("comfyui", "diffusion_model.blocks.")])
def test_convert_writes_the_layout_and_keeps_weights(tmp_path, capsys, fmt, prefix):
    src = write_tiny_lora(tmp_path / "src.safetensors", seed=2)
    out = tmp_path / f"out_{fmt}.safetensors"
    code, _, _ = cli(capsys, "lora", "convert", str(src), "--to", fmt, "-o", str(out))
    assert code == 0
    with safe_open(str(out), "pt") as f:
        assert all(k.startswith(prefix) for k in f.keys())
        assert f.metadata()["wantune.format"] == fmt and f.metadata()["epochs"] == "3"
    original, back = load_lora(src), load_lora(out)
    assert all(torch.equal(back.modules[p][i], original.modules[p][i]) for p in original.modules for i in (0, 1))


def test_merge_writes_official_checkpoint_equal_to_stacking(tmp_path, capsys):
    first = write_tiny_lora(tmp_path / "first.safetensors", seed=3)
    second = write_tiny_lora(tmp_path / "second.safetensors", seed=4, rank=2, alpha=1.0, targets=["ffn.0", "ffn.2"])
    out = tmp_path / "merged.safetensors"
    code, _, _ = cli(capsys, "lora", "merge", "--model", str(COMFY_BASE), "--lora", f"{first}:0.7",
                     "--lora", f"{second}:0.5", "-o", str(out))
    assert code == 0
    merged_sd, base_sd = load_file(out), load_file(COMFY_BASE)
    assert set(merged_sd) == {k.removeprefix("model.diffusion_model.") for k in base_sd}  # official names
    assert all(t.dtype == torch.float16 for t in merged_sd.values())  # the input's dtype
    stacked = load_transformer(COMFY_BASE, variant=TINY_A14B, dtype=torch.float32).eval()
    inputs = tiny_inputs(stacked)
    attach_loras(stacked, [(load_lora(first), 0.7), (load_lora(second), 0.5)])
    merged = load_transformer(out, variant=TINY_A14B, dtype=torch.float32).eval()
    expected, got = run(stacked, inputs), run(merged, inputs)
    assert not torch.allclose(got, run(load_transformer(COMFY_BASE, variant=TINY_A14B, dtype=torch.float32), inputs))
    torch.testing.assert_close(got, expected, rtol=0, atol=5e-3)  # fp16 rounding of the merged weights


def one_line_error(capsys, *argv) -> str:
    code, _, err = cli(capsys, *argv)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    missing = tmp_path / "missing.safetensors"
    assert str(missing) in one_line_error(capsys, "lora", "inspect", str(missing))
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(1, 64),
               "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.zeros(64, 1),
               "diffusion_model.blocks.0.self_attn.q.dora_scale": torch.zeros(1, 64)},
              str(tmp_path / "dora.safetensors"))
    err = one_line_error(capsys, "lora", "convert", str(tmp_path / "dora.safetensors"), "--to", "kohya",
                         "-o", str(tmp_path / "x.safetensors"))
    assert "dora.safetensors" in err and "dora_scale" in err
    big = {"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(1, 1536),
           "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.zeros(1536, 1)}
    save_file(big, str(tmp_path / "big.safetensors"))
    err = one_line_error(capsys, "lora", "merge", "--model", str(COMFY_BASE),
                         "--lora", str(tmp_path / "big.safetensors"), "-o", str(tmp_path / "m.safetensors"))
    assert "big.safetensors: blocks.0.self_attn.q is 1536->1536 in the LoRA but 64->64 in the model" in err
    assert not (tmp_path / "m.safetensors").exists()
    err = one_line_error(capsys, "lora", "merge", "--model", str(FIXTURES / "wan21_vae_tiny.safetensors"),
                         "--lora", str(tmp_path / "big.safetensors"), "-o", str(tmp_path / "m.safetensors"))
    assert "not a Wan transformer" in err
    assert "missing" in one_line_error(capsys, "lora", "merge", "--model", str(tmp_path / "missing"), "--lora",
                                       str(tmp_path / "big.safetensors"), "-o", str(tmp_path / "m.safetensors"))
    assert ".safetensors" in one_line_error(capsys, "lora", "convert", str(tmp_path / "big.safetensors"), "--to",
                                            "kohya", "-o", str(tmp_path / "out.pt"))


def test_lora_argument_parsing():
    from wantune.lora.cli import parse_lora_arg

    assert parse_lora_arg("a.safetensors:0.6") == ("a.safetensors", 0.6)
    assert parse_lora_arg("dir/a.safetensors") == ("dir/a.safetensors", 1.0)
    assert parse_lora_arg("C:/x/a.safetensors") == ("C:/x/a.safetensors", 1.0)
