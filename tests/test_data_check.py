"""`wantune dataset check`: every bad input named with its reason, recommendations, CLI exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_data_helpers import numbered_video, solid_image
from wantune.cli import main
from wantune.data.check import check_dataset, recommend
from wantune.data.config import DatasetConfig, DatasetEntry, load_dataset_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _bad_folder(root: Path) -> dict[str, str]:
    """A folder with every kind of bad input; returns file name -> expected reason fragment."""
    numbered_video(root / "good.mp4", 33, 16)
    (root / "corrupt.mp4").write_bytes(b"\x00\x01garbage" * 200)
    (root / "zero.mp4").write_bytes(b"")
    (root / "zero.png").write_bytes(b"")
    numbered_video(root / "short.mp4", 10, 30)  # 10 frames at 30 fps (0.3 s span) -> 5 frames at 16 fps
    cut = numbered_video(root / "truncated.mp4", 30, 30).read_bytes()
    (root / "truncated.mp4").write_bytes(cut[: len(cut) // 4])
    solid_image(root / "cmyk.jpg", mode="CMYK")
    Image.fromarray(np.full((48, 64), 40000, np.uint16)).save(root / "deep16.png")
    Image.fromarray(np.full((48, 64, 4), 90, np.uint8)).save(root / "alpha.png")
    solid_image(root / "odd.png", 63, 47, value=30)
    solid_image(root / "tiny.png", 8, 8, value=31)
    Image.fromarray(np.zeros((48, 64), np.float32)).save(root / "float.tif")
    half = solid_image(root / "half.png", value=32).read_bytes()
    (root / "half.png").write_bytes(half[: len(half) // 2])
    solid_image(root / "nocaption.png", value=33)
    (root / "notes.pdf").write_bytes(b"%PDF")
    solid_image(root / "latin1.png", value=34)
    (root / "latin1.txt").write_bytes("café".encode("latin-1"))
    for name in ("good", "short", "truncated", "cmyk", "deep16", "alpha", "odd", "tiny", "float", "half",
                 "corrupt", "zero"):
        (root / f"{name}.txt").write_text(f"a {name} sample")
    return {"corrupt.mp4": "unreadable video", "zero.mp4": "empty file (0 bytes)",
            "zero.png": "empty file (0 bytes)", "short.mp4": "clip too short: 5 frames at 16 fps",
            "truncated.mp4": "video", "tiny.png": "too small", "float.tif": "32-bit float",
            "half.png": "unreadable image", "nocaption.png": "no caption", "notes.pdf": "not an image or video",
            "latin1.png": "caption is not UTF-8"}


def test_check_names_every_bad_input_with_its_reason(tmp_path, capsys):
    expected = _bad_folder(tmp_path / "data")
    (tmp_path / "empty").mkdir()
    toml = tmp_path / "d.toml"
    toml.write_text('variant = "wan2.1-t2v-1.3b"\n[[datasets]]\npath = "data"\nresolution = [64, 48]\n'
                    'target_frames = [17]\n[[datasets]]\npath = "empty"\n')
    assert main(["dataset", "check", str(toml)]) == 0
    text = capsys.readouterr().out
    skipped_section = text.split("\nskipped (")[1].split("\n\n")[0].splitlines()
    for name, reason in expected.items():
        line = next((l for l in skipped_section if l.strip().startswith(str(tmp_path / "data" / name) + ":")), None)
        assert line is not None and reason in line, (name, reason, line)
    assert f"{tmp_path / 'empty'}: empty dataset: no usable samples" in text
    for converted in ("CMYK converted to RGB", "16-bit converted to 8-bit", "alpha composited over white"):
        assert converted in text
    assert main(["dataset", "check", str(toml), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    skipped = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert set(expected) | {"empty"} == set(skipped)
    used = {Path(f["path"]).name for f in report["files"] if f["samples"]}
    assert used == {"good.mp4", "cmyk.jpg", "deep16.png", "alpha.png", "odd.png"}
    assert report["missing_captions"] == [str(tmp_path / "data" / "nocaption.png")]
    assert report["buckets"] == {"64x48x1": 4, "64x48x17": 1}


def test_strict_check_exits_2_with_one_line(tmp_path, capsys):
    _bad_folder(tmp_path)
    assert main(["dataset", "check", str(tmp_path), "--strict", "--variant", "wan2.1-t2v-1.3b"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert "notes.pdf: not an image or video file" in err  # listing problems come first, then files by name


def test_check_on_missing_path_and_bad_config(tmp_path, capsys):
    assert main(["dataset", "check", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "bad.toml").write_text("[[datasets]]\npath = 'x'\ntarget_frames = [16]\n")
    assert main(["dataset", "check", str(tmp_path / "bad.toml")]) == 2
    assert "4n+1" in capsys.readouterr().err


@pytest.mark.parametrize("samples,rank,epochs", [(150, (32, 48), (15, 20)), (300, (48, 64), (12, 18)),
                                                 (500, (64, 96), (10, 15)), (1078, (96, 128), (8, 12))])
def test_recommendations_follow_the_guides_tables(samples, rank, epochs):
    rec = recommend(samples, batch_size=2)
    assert (rec.rank, rec.epochs) == (rank, epochs)
    assert rec.steps == (-(-samples * epochs[0] // 2), -(-samples * epochs[1] // 2))


def test_small_datasets_use_the_ai_toolkit_values():
    rec = recommend(40)
    assert rec.rank == (16, 32) and rec.steps == (1500, 3000) and rec.lr == 1e-4 and "AI Toolkit" in rec.source
    assert rec.epochs == (38, 75)


def test_short_clips_explain_the_missing_samples(tmp_path):
    """The Ghibli surprise: a clip one frame short loses its long windows, and the report says so."""
    numbered_video(tmp_path / "videos" / "a.mp4", 45, 16)
    numbered_video(tmp_path / "videos" / "b.mp4", 44, 16)
    solid_image(tmp_path / "images" / "s.png")
    entries = [DatasetEntry(tmp_path / "images", kind="images", resolution=(64, 48), default_caption="s"),
               DatasetEntry(tmp_path / "videos", name="v21", resolution=(64, 48), target_frames=[1, 21],
                            default_caption="c"),
               DatasetEntry(tmp_path / "videos", name="v45", resolution=(32, 16), target_frames=[45],
                            frame_extraction="uniform", frame_sample=2, default_caption="c")]
    report = check_dataset(DatasetConfig(entries, variant="wan2.1-t2v-1.3b"))
    assert report.samples_per_epoch == 1 + 4 + 1  # a.mp4's two uniform 45-frame windows coincide: kept once
    short = [s for s in report.skipped if "too short" in s["reason"]]
    assert len(short) == 1 and short[0]["path"].endswith("b.mp4") and "44 frames" in short[0]["reason"]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("dataset_*.toml")), ids=lambda p: p.name)
def test_example_configs_parse(path):
    import tomllib

    from wantune import config
    from wantune.data.config import DatasetConfig

    cfg = load_dataset_config(path)
    assert cfg.datasets and all(entry.path.is_absolute() for entry in cfg.datasets)
    assert config.load(DatasetConfig, tomllib.loads(config.dumps(cfg))) == cfg  # a run folder can hold it
