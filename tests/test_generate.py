"""`wantune generate` end to end on the tiny fixtures: files written, metadata, determinism, LoRA, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FIXTURES

from wantune.cli import main
from wantune.models.variants import TINY, get_variant

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

TINY_FLAGS = [f"--variant-override={k}={v}" for k, v in TINY.items()]


def base_args(out, *extra) -> list[str]:
    """A tiny Wan 2.1 T2V run: 5 frames of 32x32, 2 steps, no progress bar."""
    return ["generate", "--model", str(FIXTURES / "wan21_t2v_tiny.safetensors"), "--variant", "wan2.1-t2v-1.3b",
            *TINY_FLAGS, "--vae", str(FIXTURES / "wan21_vae_tiny.safetensors"),
            "--text-encoder", str(FIXTURES / "umt5_tiny_official.pth"),
            "--tokenizer", str(FIXTURES / "tokenizer_tiny"), "--frames", "5", "--width", "32", "--height", "32",
            "--steps", "2", "--no-progress", "--out", str(out), *extra]


def frames_of(path) -> np.ndarray:
    from wantune.data.video import read_frames

    return read_frames(path)


def test_generate_writes_mp4_with_metadata(tmp_path):
    from wantune.data.video import probe
    from wantune.sample.output import read_settings

    out = tmp_path / "fox.mp4"
    assert main(base_args(out, "--prompt", "a red fox 狐狸", "--seed", "7", "--guidance", "4.5")) == 0
    info = probe(out)
    assert (info.num_frames, info.fps, info.width, info.height) == (5, 16.0, 32, 32)
    meta = read_settings(out)
    assert meta["prompt"] == "a red fox 狐狸" and meta["seed"] == 7 and meta["guidance"] == 4.5
    assert meta["negative_prompt"] == get_variant("wan2.1-t2v-1.3b").negative_prompt  # official default
    assert (meta["steps"], meta["frames"], meta["sampler"], meta["shift"]) == (2, 5, "unipc", 5.0)


def test_same_seed_same_video_and_lora_changes_it(tmp_path):
    lora = save_tiny_lora(tmp_path / "style.safetensors")
    a, b, c = tmp_path / "a.mp4", tmp_path / "b.mp4", tmp_path / "c.mp4"
    for out, extra in ((a, []), (b, []), (c, ["--lora", f"{lora}:1.0"])):
        assert main(base_args(out, "--prompt", "a cat", "--seed", "3", *extra)) == 0
    assert np.array_equal(frames_of(a), frames_of(b))
    assert np.abs(frames_of(a).astype(int) - frames_of(c).astype(int)).max() > 0
    from wantune.sample.output import read_settings

    assert read_settings(c)["loras"] == [["style.safetensors", 1.0]]


def save_tiny_lora(path, variant: str = "wan2.1-t2v-1.3b"):
    """A rank-4 LoRA on a tiny model with random (non-zero) B, saved in the ComfyUI layout."""
    from wantune.lora import apply_lora, save_lora
    from wantune.models.transformer import WanModel

    model = WanModel(get_variant(variant, **TINY))
    network = apply_lora(model, rank=4, alpha=4)
    torch.manual_seed(0)
    with torch.no_grad():
        for adapter in network.adapters.values():
            adapter.lora_B.weight.normal_(0, 0.5)
    save_lora(path, network, {"base": variant})
    return path


def test_prompts_file_one_output_per_line(tmp_path):
    from wantune.data.video import probe
    from wantune.sample.output import read_settings

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# previews\na dog running --d 1 --f 9 --g 3.0\n\na bird --d 2 --n blurry, static --s 1\n")
    out = tmp_path / "run.mp4"
    assert main(base_args(out, "--prompts", str(prompts))) == 0
    first, second = read_settings(tmp_path / "run_000.mp4"), read_settings(tmp_path / "run_001.mp4")
    assert (first["prompt"], first["seed"], first["frames"], first["guidance"]) == ("a dog running", 1, 9, 3.0)
    assert probe(tmp_path / "run_000.mp4").num_frames == 9
    assert (second["prompt"], second["seed"], second["negative_prompt"], second["steps"]) == \
        ("a bird", 2, "blurry, static", 1)
    assert second["frames"] == 5  # from the command line


def test_png_for_one_frame(tmp_path):
    from PIL import Image

    from wantune.sample.output import read_settings

    out = tmp_path / "still.png"
    args = base_args(out, "--prompt", "a lake", "--seed", "1")
    args[args.index("--frames") + 1] = "1"
    assert main(args) == 0
    assert Image.open(out).size == (32, 32)
    assert read_settings(out)["frames"] == 1


def test_fp8_generation_runs_close_to_full_precision(tmp_path):
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    assert main(base_args(a, "--prompt", "a cat", "--seed", "3")) == 0
    assert main(base_args(b, "--prompt", "a cat", "--seed", "3", "--fp8")) == 0
    diff = np.abs(frames_of(a).astype(int) - frames_of(b).astype(int))
    assert diff.mean() < 8  # fp8 weights: close, not identical


@pytest.mark.parametrize("change, message", [
    (["--frames", "8"], "--frames 8: must be 4n+1; nearest valid: 9"),
    (["--width", "40"], "--width 40: must be a multiple of 16 for wan2.1-t2v-1.3b; nearest: 48"),
    (["--out", "x.gif"], "--out must end in .mp4"),
    (["--vae", "missing.safetensors"], "missing.safetensors: --vae not found"),
    (["--image", "whatever.png"], "wan2.1-t2v-1.3b is a text-to-video model"),
    (["--sampler", "euler", "--lora-low", "x.safetensors"], "--lora-low: wan2.1-t2v-1.3b has one transformer"),
    (["--variant", "wan2.2-i2v-a14b"], "wan2.2-i2v-a14b expects 36 input channels; "),
    (["--model", "nowhere.safetensors"], "nowhere.safetensors: --model not found"),
    (["--device", "tpu9"], "--device 'tpu9': not a device"),
    (["--variant-override", "depth=3"], "--variant-override depth: not a variant field"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, change, message):
    args = base_args(tmp_path / "o.mp4", "--prompt", "x")
    for flag, value in zip(change[::2], change[1::2]):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_lora_for_another_model_fails_before_loading(tmp_path, capsys):
    lora = save_tiny_lora(tmp_path / "i2v.safetensors", "wan2.1-i2v-14b")  # has cross_attn.k_img
    assert main(base_args(tmp_path / "o.mp4", "--prompt", "x", "--lora", str(lora))) == 2
    err = capsys.readouterr().err
    assert "is not a Linear of this model; the LoRA was made for another Wan variant" in err
    assert not (tmp_path / "o.mp4").exists()


def test_i2v_without_image_fails_before_loading(tmp_path, capsys):
    args = ["generate", "--model", str(FIXTURES / "wan21_i2v_tiny.safetensors"), "--variant", "wan2.1-i2v-14b",
            *TINY_FLAGS, "--vae", str(FIXTURES / "wan21_vae_tiny.safetensors"), "--clip", str(FIXTURES / "index.json"),
            "--text-encoder", str(FIXTURES / "umt5_tiny_official.pth"), "--tokenizer",
            str(FIXTURES / "tokenizer_tiny"), "--prompt", "x", "--out", str(tmp_path / "o.mp4")]
    assert main(args) == 2
    assert "wan2.1-i2v-14b is an image-to-video model: give the first frame with --image" in capsys.readouterr().err


def test_prompt_line_parser():
    from wantune.errors import UserError
    from wantune.sample.prompts import parse_prompt_line

    spec = parse_prompt_line("a cat --w 832 --h 480 --f 81 --d 42 --s 30 --g 5.5 --n ugly, blurry --i cat.png")
    assert (spec.prompt, spec.width, spec.height, spec.frames, spec.seed, spec.steps) == \
        ("a cat", 832, 480, 81, 42, 30)
    assert (spec.guidance, spec.negative_prompt, spec.image) == (5.5, "ugly, blurry", "cat.png")
    assert parse_prompt_line("just text").width is None
    with pytest.raises(UserError, match="unknown flag --x"):
        parse_prompt_line("a --x 1")
    with pytest.raises(UserError, match="--w 'wide' is not a valid int"):
        parse_prompt_line("a --w wide")


def test_nearest_valid_frames():
    from wantune.sample.validate import nearest_valid_frames

    assert [nearest_valid_frames(f) for f in (80, 82, 83, 0, 2, 3)] == [81, 81, 85, 1, 1, 5]


def test_a14b_i2v_pair_folder_with_image_and_low_expert_lora(tmp_path):
    import shutil

    from PIL import Image

    from wantune.sample.output import read_settings

    for expert in ("high_noise_model", "low_noise_model"):
        (tmp_path / "pair" / expert).mkdir(parents=True)
        shutil.copy(FIXTURES / "wan22_i2v_tiny.safetensors",
                    tmp_path / "pair" / expert / "diffusion_pytorch_model.safetensors")
    rng = np.random.RandomState(0)
    Image.fromarray(rng.randint(0, 255, (48, 40, 3), dtype=np.uint8)).save(tmp_path / "first.png")
    lora = save_tiny_lora(tmp_path / "low.safetensors", "wan2.2-i2v-a14b")
    args = base_args(tmp_path / "a.mp4", "--prompt", "a cat", "--seed", "5", "--image", str(tmp_path / "first.png"),
                     "--steps", "4")
    args[args.index("--model") + 1] = str(tmp_path / "pair")
    args[args.index("--variant") + 1] = "wan2.2-i2v-a14b"
    assert main(args) == 0
    args[args.index("--out") + 1] = str(tmp_path / "b.mp4")
    assert main([*args, "--lora-low", str(lora)]) == 0
    meta = read_settings(tmp_path / "b.mp4")
    assert meta["boundary"] == 0.9 and meta["loras_low"] == [["low.safetensors", 1.0]] and meta["loras"] == []
    assert (meta["guidance"], meta["guidance_low"], meta["image"]) == (3.5, 3.5, str(tmp_path / "first.png"))
    assert np.abs(frames_of(tmp_path / "a.mp4").astype(int) - frames_of(tmp_path / "b.mp4").astype(int)).max() > 0


def test_flf2v_with_clip_first_and_last_image(tmp_path):
    from PIL import Image
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from wantune.sample.output import read_settings

    torch.manual_seed(0)  # a one-layer CLIP of ViT-H/14's width and token count (257 x 1280)
    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=1280, intermediate_size=32, num_hidden_layers=1,
                                            num_attention_heads=16, image_size=224, patch_size=14))
    clip.half().save_pretrained(tmp_path / "clip")
    rng = np.random.RandomState(1)
    for name in ("first", "last"):
        Image.fromarray(rng.randint(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    args = base_args(tmp_path / "flf.mp4", "--prompt", "a door opens", "--seed", "2", "--clip", str(tmp_path / "clip"),
                     "--image", str(tmp_path / "first.png"), "--last-image", str(tmp_path / "last.png"))
    args[args.index("--model") + 1] = str(FIXTURES / "wan21_flf2v_tiny.safetensors")
    args[args.index("--variant") + 1] = "wan2.1-flf2v-14b"
    assert main(args) == 0
    meta = read_settings(tmp_path / "flf.mp4")
    assert meta["variant"] == "wan2.1-flf2v-14b" and meta["shift"] == 16.0
    assert meta["last_image"] == str(tmp_path / "last.png")
    assert frames_of(tmp_path / "flf.mp4").shape == (5, 32, 32, 3)


def test_ti2v_first_frame_is_the_encoded_image(tmp_path):
    from PIL import Image

    from wantune.models.vae import load_vae
    from wantune.sample.conditioning import load_image
    from wantune.sample.output import to_frames

    yy, xx = np.mgrid[0:64, 0:64]
    smooth = np.stack([xx * 4, yy * 4, 255 - xx * 2], axis=-1).clip(0, 255).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "first.png")
    args = base_args(tmp_path / "ti2v.mp4", "--prompt", "a gradient", "--seed", "4",
                     "--image", str(tmp_path / "first.png"), "--width", "64", "--height", "64")
    args[args.index("--model") + 1] = str(FIXTURES / "wan22_ti2v_tiny.safetensors")
    args[args.index("--variant") + 1] = "wan2.2-ti2v-5b"
    args[args.index("--vae") + 1] = str(FIXTURES / "wan22_vae_tiny.safetensors")
    assert main(args) == 0
    vae = load_vae(FIXTURES / "wan22_vae_tiny.safetensors", dtype=torch.float32)
    image = load_image(tmp_path / "first.png", 64, 64)
    expected = to_frames(vae.decode(vae.encode(image[None, :, None]))[0])[0].astype(int)
    got = frames_of(tmp_path / "ti2v.mp4")[0].astype(int)
    luma = np.array([0.299, 0.587, 0.114])  # H.264 keeps luma at full resolution (chroma is subsampled)
    assert np.abs(got @ luma - expected @ luma).mean() < 6
    later = frames_of(tmp_path / "ti2v.mp4")[2].astype(int)  # a generated frame is far from the image's
    assert np.abs(later @ luma - expected @ luma).mean() > 12


def test_lora_converted_to_kohya_and_diffusers_generates_the_same_video(tmp_path):
    lora = save_tiny_lora(tmp_path / "style.safetensors")
    outputs = {}
    for fmt in ("comfyui", "kohya", "diffusers"):
        path = lora
        if fmt != "comfyui":
            path = tmp_path / f"style_{fmt}.safetensors"
            assert main(["lora", "convert", str(lora), "--to", fmt, "-o", str(path)]) == 0
        out = tmp_path / f"{fmt}.mp4"
        assert main(base_args(out, "--prompt", "a cat", "--seed", "3", "--lora", f"{path}:0.7")) == 0
        outputs[fmt] = frames_of(out).astype(int)
    assert np.array_equal(outputs["kohya"], outputs["comfyui"])
    assert np.array_equal(outputs["diffusers"], outputs["comfyui"])


def test_prompt_file_images_resolve_beside_the_file(tmp_path, monkeypatch):
    from wantune.errors import UserError
    from wantune.sample.prompts import read_prompt_file

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "cat.png").write_bytes(b"png")
    (tmp_path / "sub" / "p.txt").write_text("# comment\n\na cat --i cat.png --li /abs/last.png\n")
    monkeypatch.chdir(tmp_path)
    [spec] = read_prompt_file(tmp_path / "sub" / "p.txt")
    assert spec.image == str(tmp_path / "sub" / "cat.png") and spec.last_image == "/abs/last.png"
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(UserError, match="no prompts"):
        read_prompt_file(tmp_path / "empty.txt")


def test_image_without_size_keeps_its_aspect_at_the_default_area(tmp_path):
    from PIL import Image

    from wantune.sample.pipeline import resolve_request
    from wantune.sample.prompts import PromptSpec

    Image.new("RGB", (720, 1280)).save(tmp_path / "portrait.png")
    variant = get_variant("wan2.1-i2v-14b")  # 832x480 area; official: floor to multiples of 16
    request = resolve_request(PromptSpec("x", image=str(tmp_path / "portrait.png")), variant)
    assert (request.width, request.height) == (464, 832)
    sized = resolve_request(PromptSpec("x", image=str(tmp_path / "portrait.png"), width=480, height=480), variant)
    assert (sized.width, sized.height) == (480, 480)
    assert resolve_request(PromptSpec("x"), variant).width == 832


def test_a14b_from_two_files_comfyui_high_and_official_low(tmp_path):
    from wantune.sample.output import read_settings

    args = base_args(tmp_path / "pair.mp4", "--prompt", "a ship", "--seed", "9", "--steps", "4",
                     "--model-low", str(FIXTURES / "wan22_t2v_tiny.safetensors"))
    args[args.index("--model") + 1] = str(FIXTURES / "wan22_t2v_tiny.comfyui_fp16.safetensors")
    args[args.index("--variant") + 1] = "wan2.2-t2v-a14b"
    assert main(args) == 0
    meta = read_settings(tmp_path / "pair.mp4")
    assert (meta["variant"], meta["boundary"], meta["guidance"], meta["guidance_low"], meta["shift"]) == \
        ("wan2.2-t2v-a14b", 0.875, 4.0, 3.0, 12.0)
    assert meta["model_low"] == "wan22_t2v_tiny.safetensors"
