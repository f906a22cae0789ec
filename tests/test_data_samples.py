"""Sample enumeration: captions, triggers, JSONL, mixed media, conditioning frames, stable ids."""

from __future__ import annotations

import json
import os

import pytest

from test_data_helpers import frame_numbers, numbered_video, solid_image
from wantune.data.config import DatasetConfig, DatasetEntry, load_dataset_config
from wantune.data.samples import (enumerate_samples, load_control_pixels, load_sample_pixels, require_samples,
                                  samples_per_epoch)
from wantune.errors import UserError

VARIANT = "wan2.1-t2v-1.3b"


def _cfg(*entries, variant=VARIANT):
    return DatasetConfig(list(entries), variant=variant)


def test_captions_beside_sibling_default_and_trigger(tmp_path):
    solid_image(tmp_path / "beside" / "a.png")
    (tmp_path / "beside" / "a.txt").write_text("\ufeff[trigger] girl,\nsmiling\n", encoding="utf-8")
    solid_image(tmp_path / "beside" / "b.png", value=100)
    solid_image(tmp_path / "layout" / "images" / "c.png", value=50)
    numbered_video(tmp_path / "layout" / "videos" / "d.mp4", 9, 16)
    (tmp_path / "layout" / "captions").mkdir()
    (tmp_path / "layout" / "captions" / "c.txt").write_text("a [trigger] drawing")
    (tmp_path / "layout" / "captions" / "d.txt").write_text("[trigger] walks")
    cfg = _cfg(DatasetEntry(tmp_path / "beside", trigger="frung", default_caption="[trigger], a person"),
               DatasetEntry(tmp_path / "layout", trigger="ghibli", target_frames=[9]))
    samples, skipped = enumerate_samples(cfg)
    assert not skipped
    got = {s.path.name: (s.caption, s.caption_source) for s in samples}
    assert got == {"a.png": ("frung girl, smiling", "file"), "b.png": ("frung, a person", "default"),
                   "c.png": ("a ghibli drawing", "file"), "d.mp4": ("ghibli walks", "file")}


def test_missing_and_empty_captions_are_skipped_with_reason(tmp_path):
    solid_image(tmp_path / "a.png")
    solid_image(tmp_path / "b.png", value=100)
    (tmp_path / "b.txt").write_text("  \n")
    samples, skipped = enumerate_samples(_cfg(DatasetEntry(tmp_path)))
    assert not samples
    reasons = {s.path.name if hasattr(s.path, "name") else s.path: s.reason for s in skipped}
    assert "no caption" in reasons["a.png"] and "a.txt" in reasons["a.png"]
    assert "no caption" in reasons["b.png"]
    assert reasons[tmp_path.name] == "empty dataset: no usable samples"
    with pytest.raises(UserError, match="no usable samples; first skip: .*a.png"):
        require_samples(samples, skipped)


def test_jsonl_list_with_inline_captions_and_controls(tmp_path):
    numbered_video(tmp_path / "media" / "v.mp4", 17, 16)
    solid_image(tmp_path / "media" / "ctrl.png", value=10)
    rows = [{"path": "media/v.mp4", "caption": "a [trigger] clip", "control": "media/ctrl.png"},
            {"path": "media/missing.mp4", "caption": "x"},
            {"path": "media/v.mp4", "caption": "other", "control": "media/nope.png"}]
    lines = [json.dumps(r) for r in rows] + ["{not json", json.dumps({"path": "media/v.mp4", "colour": 1})]
    (tmp_path / "list.jsonl").write_text("\n".join(lines) + "\n")
    cfg = _cfg(DatasetEntry(tmp_path / "list.jsonl", trigger="T", target_frames=[17],
                            resolution=(64, 48)), variant="wan2.1-i2v-14b")
    samples, skipped = enumerate_samples(cfg)
    assert [(s.caption, s.caption_source, s.num_frames) for s in samples] == [("a T clip", "inline", 17)]
    assert samples[0].control_path == tmp_path / "media" / "ctrl.png"
    control = load_control_pixels(samples[0])
    assert control.shape == (3, 1, 48, 64) and float(control.mean()) == pytest.approx(10 / 127.5 - 1, abs=0.02)
    reasons = [s.reason for s in skipped]
    assert any("file not found" in r for r in reasons)
    assert any(str(s.path).endswith("list.jsonl:4") and "not valid JSON" in s.reason for s in skipped)
    assert any(str(s.path).endswith("list.jsonl:5") and "unknown key(s) colour" in s.reason for s in skipped)
    assert any(r.startswith("control ") and "nope.png: file not found" in r for r in reasons)


@pytest.mark.parametrize("variant,expected", [("wan2.1-t2v-1.3b", ()), ("wan2.1-i2v-14b", (0,)),
                                              ("wan2.2-ti2v-5b", (0,)), ("wan2.1-flf2v-14b", (0, 16))])
def test_conditioning_frames_by_variant(tmp_path, variant, expected):
    numbered_video(tmp_path / "v.mp4", 60, 30, width=64, height=64)
    entry = DatasetEntry(tmp_path, default_caption="x", target_frames=[17], resolution=(64, 64))
    samples, skipped = enumerate_samples(_cfg(entry, variant=variant))
    assert not skipped and samples[0].control_frames == expected
    fps = 24 if variant == "wan2.2-ti2v-5b" else 16
    assert samples[0].fps == fps
    control = load_control_pixels(samples[0])
    if not expected:
        assert control is None
    else:
        assert frame_numbers(control.numpy()) == [samples[0].frame_indices[p] for p in expected]
    if variant == "wan2.2-ti2v-5b":
        assert samples[0].bucket[0] % 32 == 0 and samples[0].bucket[1] % 32 == 0


def test_mixed_images_and_videos_repeats_weights_and_flags(tmp_path):
    solid_image(tmp_path / "images" / "i1.png")
    solid_image(tmp_path / "images" / "i2.png", value=90)
    numbered_video(tmp_path / "videos" / "v1.mp4", 45, 16)
    cfg = _cfg(DatasetEntry(tmp_path / "images", kind="images", default_caption="img", num_repeats=3, weight=0.5,
                            flip_x=True, is_regularization=True, resolution=(64, 48)),
               DatasetEntry(tmp_path / "videos", kind="videos", default_caption="vid", target_frames=[1, 21],
                            caption_dropout=0.1))
    samples, skipped = enumerate_samples(cfg)
    assert not skipped
    images = [s for s in samples if s.kind == "image"]
    videos = [s for s in samples if s.kind == "video"]
    assert len(images) == 2 and all(s.repeats == 3 and s.weight == 0.5 and s.flip == (True, False)
                                    and s.is_regularization for s in images)
    assert sorted(s.num_frames for s in videos) == [1, 21] and all(s.caption_dropout == 0.1 for s in videos)
    assert samples_per_epoch(samples) == 2 * 3 + 2
    assert load_sample_pixels(images[0]).shape == (3, 1, 48, 64)


def test_sample_ids_are_stable_and_follow_the_source_bytes(tmp_path):
    numbered_video(tmp_path / "v.mp4", 33, 16)
    (tmp_path / "v.txt").write_text("first caption")
    cfg = _cfg(DatasetEntry(tmp_path, target_frames=[9, 17]))
    first, _ = enumerate_samples(cfg)
    ids = [s.sample_id for s in first]
    assert len(set(ids)) == 2 and ids == [s.sample_id for s in enumerate_samples(cfg)[0]]
    (tmp_path / "v.txt").write_text("edited caption")  # caption is not part of the id
    os.utime(tmp_path / "v.mp4")
    again, _ = enumerate_samples(cfg)
    assert [s.sample_id for s in again] == ids and again[0].caption == "edited caption"
    numbered_video(tmp_path / "v.mp4", 33, 16, codec="mpeg4")  # new bytes
    assert not set(s.sample_id for s in enumerate_samples(cfg)[0]) & set(ids)
    cfg.datasets[0].resolution = (32, 32)  # new bucket
    assert not set(s.sample_id for s in enumerate_samples(cfg)[0]) & set(ids)


def test_duplicate_files_are_reported(tmp_path):
    solid_image(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes((tmp_path / "a.png").read_bytes())
    samples, skipped = enumerate_samples(_cfg(DatasetEntry(tmp_path, default_caption="x")))
    assert len(samples) == 1 and "duplicate of" in skipped[0].reason and skipped[0].path.name == "b.png"


def test_config_file_resolves_paths_and_validates(tmp_path):
    (tmp_path / "data").mkdir()
    solid_image(tmp_path / "data" / "a.png")
    toml = tmp_path / "run.toml"
    toml.write_text('seed = 7\n[model]\nvariant = "wan2.2-ti2v-5b"\n[train]\nlr = 1e-4\n'
                    '[[datasets]]\npath = "data"\ndefault_caption = "x"\nresolution = [64, 64]\n')
    cfg = load_dataset_config(toml)
    assert cfg.variant == "wan2.2-ti2v-5b" and cfg.seed == 7 and cfg.datasets[0].path == tmp_path / "data"
    assert enumerate_samples(cfg)[0][0].bucket == (64, 64)
    bad = {"target_frames = [40]": "not 4n\\+1; use 37 or 41", "buckets = [[500, 300]]": "use \\[496, 288\\]",
           "caption_dropout = 2.0": "caption_dropout", "frame_extraction = \"slid\"": "did you mean 'slide'",
           "num_repeats = 0": "num_repeats must be >= 1", "resolutoin = [1, 1]": "did you mean 'datasets\\[0\\]"}
    for line, message in bad.items():
        toml.write_text(f'[[datasets]]\npath = "data"\n{line}\n')
        with pytest.raises(UserError, match=message):
            load_dataset_config(toml)


def test_strict_raises_naming_the_first_bad_file(tmp_path):
    solid_image(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"")
    cfg = _cfg(DatasetEntry(tmp_path, default_caption="x", strict=True))
    with pytest.raises(UserError, match=r"b.png: empty file \(0 bytes\) \(strict dataset"):
        enumerate_samples(cfg)
    assert len(enumerate_samples(cfg, strict=False)[0]) == 1


def test_run_config_pointing_at_a_dataset_file(tmp_path):
    (tmp_path / "d").mkdir()
    solid_image(tmp_path / "d" / "a.png")
    (tmp_path / "data.toml").write_text('variant = "wan2.1-t2v-14b"\n[[datasets]]\npath = "d"\n'
                                        'default_caption = "x"\n')
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "run.toml").write_text('[model]\nvariant = "wan2.2-ti2v-5b"\n'
                                                '[data]\ndataset_config = "../data.toml"\n')
    cfg = load_dataset_config(tmp_path / "runs" / "run.toml")
    assert cfg.variant == "wan2.2-ti2v-5b" and cfg.datasets[0].path == tmp_path / "d"
    (tmp_path / "runs" / "empty.toml").write_text("[model]\nvariant = 'wan2.2-ti2v-5b'\n")
    with pytest.raises(UserError, match="no \\[\\[datasets\\]\\] entries"):
        load_dataset_config(tmp_path / "runs" / "empty.toml")
    (tmp_path / "runs" / "none.toml").write_text("datasets = []\n")
    with pytest.raises(UserError, match="no \\[\\[datasets\\]\\] entries"):
        load_dataset_config(tmp_path / "runs" / "none.toml")
