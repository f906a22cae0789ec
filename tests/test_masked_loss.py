"""Masked loss: mask files found by base name, pooled onto the latent grid like the VAE pools pixels, cached
without an encoder, and weighing the flow loss of a real cached training run."""

import json

import numpy as np
import pytest
import torch

from tests.conftest import FIXTURES
from tests.test_data_helpers import numbered_video, solid_image
from wantune.cli import main as cli_main
from wantune.data.config import DatasetConfig, DatasetEntry
from wantune.data.masks import latent_mask
from wantune.data.samples import enumerate_samples
from wantune.data.video import write_video
from wantune.train.objective import make_inputs, masked_mse_B, with_loss_mask

VAE = FIXTURES / "wan21_vae_tiny.safetensors"
UMT5 = FIXTURES / "umt5_tiny_official.pth"
TOKENIZER = FIXTURES / "tokenizer_tiny"


def test_latent_mask_pools_frame_groups_and_pixel_blocks_as_the_vae_encodes_them():
    mask_FHW = torch.zeros(9, 16, 16)
    mask_FHW[0, :8, :8] = 1.0            # latent frame 0 is pixel frame 0 alone
    mask_FHW[2, :8, 8:] = 1.0            # latent frame 1 = pixel frames 1-4: one of four frames white
    mask_FHW[5:9, 8:, :4] = 1.0          # latent frame 2 = pixel frames 5-8: half of a block, every frame
    got = latent_mask(mask_FHW, (4, 8, 8))
    want = torch.zeros(1, 3, 2, 2)
    want[0, 0, 0, 0], want[0, 1, 0, 1], want[0, 2, 1, 0] = 1.0, 0.25, 0.5
    torch.testing.assert_close(got, want)


def test_weighted_loss_ignores_black_positions_and_weighs_grey_ones():
    target = torch.randn(2, 4, 3, 4, 4)
    inputs = make_inputs(torch.zeros_like(target), target, torch.full((2,), 1.0))  # target = noise - 0
    mask = torch.zeros(2, 1, 3, 4, 4)
    mask[:, :, :, :2] = 1.0
    pred = target.clone()
    pred[:, :, :, 2:] += 3.0             # wrong only where the mask is black
    assert masked_mse_B(pred, target, with_loss_mask(inputs, mask, 0.0).mask_BCFHW).abs().max() == 0
    half = masked_mse_B(pred, target, with_loss_mask(inputs, mask, 0.5).mask_BCFHW)
    torch.testing.assert_close(half, torch.full((2,), 9.0 * 0.5 * 0.5 / (0.5 + 0.5 * 0.5)))
    assert with_loss_mask(inputs, None, 0.0) is inputs
    ti2v = make_inputs(torch.zeros_like(target), target, torch.full((2,), 1.0), clean_first_frame=True)
    combined = with_loss_mask(ti2v, mask, 0.0).mask_BCFHW
    assert combined[:, :, 0].sum() == 0 and combined[:, :, 1:, :2].min() == 1 and combined[:, :, :, 2:].max() == 0


def test_scan_pairs_masks_by_base_name_and_skips_a_clip_without_one(tmp_path):
    clips = tmp_path / "clips"
    for name in ("a", "b"):
        solid_image(clips / f"{name}.png", 32, 32)
        (clips / f"{name}.txt").write_text(f"card {name}")
    solid_image(tmp_path / "masks" / "a.png", 32, 32, value=255)
    cfg = DatasetConfig([DatasetEntry(clips, mask_path=tmp_path / "masks", resolution=(32, 32))],
                        variant="wan2.1-t2v-1.3b")
    samples, skipped = enumerate_samples(cfg)
    assert [s.path.name for s in samples] == ["a.png"] and samples[0].mask_path == tmp_path / "masks" / "a.png"
    assert samples[0].mask_id
    assert [(s.path.name, s.reason) for s in skipped] == [("b.png", f"no mask file for it in {tmp_path / 'masks'} "
                                                            "(same base name, image or video)")]
    from wantune.data.check import check_dataset, format_report
    report = check_dataset(cfg)
    assert report.datasets[0]["masked_samples"] == 1
    assert "1 skipped; head [41]; 1 with loss masks" in format_report(report)


def _mask_video(path, frames: int, white_left: bool):
    mask_FHWC = np.zeros((frames, 48, 64, 3), np.uint8)
    mask_FHWC[:, :, :32 if white_left else 64] = 255
    return write_video(path, mask_FHWC, 16)


def _run(tmp_path, name: str, masks: str | None, min_weight: float, capsys) -> list[float]:
    data = tmp_path / f"{name}.toml"
    data.write_text('[[datasets]]\npath = "clips"\nresolution = [32, 32]\nenable_bucket = false\n'
                    'target_frames = [5]\nframe_extraction = "head"\n'
                    + (f'mask_path = "{masks}"\n' if masks else ""))
    train = tmp_path / f"train_{name}.toml"
    train.write_text(f'[model]\nvariant = "wan2.1-t2v-1.3b"\ntiny = true\ndtype = "fp32"\nvae = "{VAE}"\n'
                     f'text_encoder = "{UMT5}"\ntokenizer = "{TOKENIZER}"\n'
                     f'[data]\ndataset_config = "{data.name}"\ncache_dir = "cache"\n'
                     f'[saving]\noutput_dir = "runs"\nname = "{name}"\n[logging]\ntensorboard = false\n'
                     'progress_bar = false\n[training]\nsteps = 3\nbatch_size = 2\nmixed_precision = "no"\n'
                     f'mask_min_weight = {min_weight}\n')
    assert cli_main(["cache", str(train), "--dtype", "fp32", "--no-progress"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    if masks:
        assert "2 loss masks made" in out or "0 loss masks made, 2 reused" in out, out
    assert cli_main(["train", str(train)]) == 0, capsys.readouterr().err
    records = (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in records]


def test_masked_loss_trains_from_the_cache(tmp_path, capsys):
    pytest.importorskip("wantune.models.text_encoder")
    clips = tmp_path / "clips"
    numbered_video(clips / "a.mp4", 20, 16)
    numbered_video(clips / "b.mp4", 24, 16)
    for name in ("a", "b"):
        (clips / f"{name}.txt").write_text(f"clip {name}")
        _mask_video(tmp_path / "white" / f"{name}.mp4", 20, white_left=False)
        _mask_video(tmp_path / "left" / f"{name}.mp4", 20, white_left=True)
    plain = _run(tmp_path, "plain", None, 0.0, capsys)
    assert _run(tmp_path, "white", "white", 0.0, capsys) == pytest.approx(plain, rel=1e-6)
    assert _run(tmp_path, "left_full", "left", 1.0, capsys) == pytest.approx(plain, rel=1e-6)
    left = _run(tmp_path, "left", "left", 0.0, capsys)
    assert all(abs(a - b) > 1e-4 * b for a, b in zip(left, plain))
    masks = sorted((tmp_path / "cache" / "masks").rglob("*.safetensors"))
    assert len(masks) == 4  # two clips x two mask sets, no flips
    from safetensors.torch import load_file
    pooled = [load_file(str(m))["mask"] for m in masks]
    assert all(m.shape == (1, 2, 4, 4) for m in pooled)
    # the left half of a 64x48 frame, resized to cover 32x32 and center-cropped: about half of each latent frame
    assert sorted(float(m.mean()) for m in pooled) == pytest.approx([0.5, 0.5, 1.0, 1.0], abs=0.03)


def test_a_mask_video_shorter_than_the_clip_is_reported_and_training_stops_in_one_line(tmp_path, capsys):
    pytest.importorskip("wantune.models.text_encoder")
    clips = tmp_path / "clips"
    numbered_video(clips / "a.mp4", 20, 16)
    (clips / "a.txt").write_text("clip a")
    _mask_video(tmp_path / "short" / "a.mp4", 3, white_left=True)
    (tmp_path / "data.toml").write_text('[[datasets]]\npath = "clips"\nresolution = [32, 32]\ntarget_frames = [5]\n'
                                        'mask_path = "short"\n')
    train = tmp_path / "train.toml"
    train.write_text(f'[model]\nvariant = "wan2.1-t2v-1.3b"\ntiny = true\ndtype = "fp32"\nvae = "{VAE}"\n'
                     f'text_encoder = "{UMT5}"\ntokenizer = "{TOKENIZER}"\n[data]\ndataset_config = "data.toml"\n'
                     '[saving]\noutput_dir = "runs"\nname = "short"\n[training]\nsteps = 1\nmixed_precision = "no"\n')
    assert cli_main(["cache", str(train), "--dtype", "fp32", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert "a.mp4: mask" in err[0] and "has 3 frames; the 5-frame window needs 5" in err[0], err
