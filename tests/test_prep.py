"""`wantune dataset prep` on real videos encoded here with PyAV (64x48 at 30 fps, random textures)."""

from __future__ import annotations

import argparse
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from wantune.data import quality, scenes
from wantune.data.prep import PrepOptions, format_report, prep
from wantune.data.prep_cli import register_prep
from wantune.data.quality import Thresholds
from wantune.errors import UserError

FPS = 30


def write(path: Path, frames: list[np.ndarray], fps: int = FPS) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12", "preset": "veryfast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def texture(rng, tint, h=48, w=64, blur=0) -> np.ndarray:
    noise = rng.integers(0, 256, (h, w)).astype(np.float32)
    for _ in range(blur):  # wrap-around 3x3 box blur keeps the texture periodic for np.roll pans
        noise = sum(np.roll(noise, (dy, dx), axis=(0, 1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9
        noise = (noise - noise.min()) / (noise.max() - noise.min()) * 255
    return np.clip(noise[..., None] * np.array(tint, np.float32), 0, 255).astype(np.uint8)


def pan(tex: np.ndarray, n: int, dx: int = 1, dy: int = 0, start: int = 0) -> list[np.ndarray]:
    return [np.roll(tex, ((start + i) * dy, (start + i) * dx), axis=(0, 1)) for i in range(n)]


def read(path: Path) -> tuple[float, np.ndarray]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        return float(stream.average_rate), frames


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """A folder of raw videos, one per case, with captions beside them or in captions/."""
    src = tmp_path_factory.mktemp("raw")
    rng = np.random.default_rng(0)
    a, b = texture(rng, (1.0, 0.3, 0.2)), texture(rng, (0.2, 0.4, 1.0))
    # 10 still frames, 40 panning frames, hard cut at frame 50 to another scene of 40 frames.
    write(src / "scenes.mp4", [a] * 10 + pan(a, 40, start=1) + pan(b, 40, dx=0, dy=1))
    (src / "scenes.txt").write_text("two scenes, [trigger] style\n")
    boxed = [np.zeros((48, 64, 3), np.uint8) for _ in range(40)]
    for frame, content in zip(boxed, pan(texture(rng, (0.9, 0.9, 0.5), h=32), 40)):
        frame[8:40] = np.maximum(content, 60)  # keep the picture clearly brighter than the bars
    write(src / "letterbox.mp4", boxed)
    write(src / "blurry.mp4", pan(texture(rng, (0.5, 1.0, 0.5), blur=4), 40))
    tex = texture(rng, (0.8, 0.6, 1.0))
    write(src / "pan.mp4", pan(tex, 40))
    write(src / "pan_copy.mp4", pan(tex, 40))
    (src / "captions").mkdir()
    (src / "captions" / "pan.txt").write_text("a panning texture")
    write(src / "short.mp4", pan(texture(rng, (1.0, 1.0, 0.2)), 15))
    offsets = rng.integers(-5, 6, (40, 2))
    shaky_tex = texture(rng, (0.3, 1.0, 1.0), blur=1)
    write(src / "shaky.mp4", [np.roll(shaky_tex, tuple(o), axis=(0, 1)) for o in offsets])
    ramp = texture(rng, (1.0, 1.0, 1.0))
    write(src / "lighting.mp4", [(f * (0.25 + 0.75 * i / 39)).astype(np.uint8) for i, f in enumerate(pan(ramp, 40))])
    write(src / "tiny.mp4", pan(texture(rng, (1.0, 0.5, 0.5), h=16, w=24), 40))
    # two still shots of the same grey noise statistics with a white square moving across both
    shots = [texture(rng, (1, 1, 1)), texture(rng, (1, 1, 1))]
    frames = [shots[i // 40].copy() for i in range(80)]
    for i, frame in enumerate(frames):
        frame[18:30, (i % 40):(i % 40) + 12] = 255
    write(src / "samepalette.mp4", frames)
    (src / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(rng.integers(0, 256, 3000, dtype=np.uint8)))
    (src / "empty.mp4").write_bytes(b"")
    return src


def thresholds(**kw) -> Thresholds:
    return Thresholds(**{"min_size": 32, "blur": 2000.0, **kw})


@pytest.fixture(scope="module")
def result(raw, tmp_path_factory) -> tuple[Path, dict]:
    dst = tmp_path_factory.mktemp("prepared")
    return dst, prep(raw, dst, PrepOptions(thresholds=thresholds()), progress=False)


def clip(report: dict, name: str) -> dict:
    return next(c for c in report["clips"] if c["name"] == name)


def reasons(report: dict, name: str) -> list[str]:
    return [f["reason"] for f in clip(report, name)["flags"]]


def test_scene_cut_found_at_the_hard_cut(result):
    _, report = result
    video = next(v for v in report["videos"] if v["path"].endswith("scenes.mp4"))
    assert len(video["cuts"]) == 1 and abs(video["cuts"][0] - 50) <= 1
    assert clip(report, "scenes_1")["start"] == video["cuts"][0]


def test_cut_between_shots_of_the_same_colours(result):
    _, report = result
    video = next(v for v in report["videos"] if v["path"].endswith("samepalette.mp4"))
    assert len(video["cuts"]) == 1 and abs(video["cuts"][0] - 40) <= 1
    rng = np.random.default_rng(3)
    a, b = texture(rng, (1, 1, 1), blur=3), texture(rng, (1, 1, 1), blur=3)
    frames = pan(a, 20) + pan(b, 20, dx=0, dy=1)
    hists = [scenes.colour_histogram(f) for f in frames]
    distances = np.array([0.0] + [scenes.histogram_distance(p, q) for p, q in zip(hists, hists[1:])])
    energy = scenes.motion_energy(np.stack([f[..., 0] for f in frames]))
    assert scenes.find_cuts(distances, 0.45) == []  # the colour histograms barely change at the cut...
    assert scenes.find_cuts(distances, 0.45, energy) == [20]  # ...the picture does


def test_static_head_trimmed_and_fps_resampled_keeping_duration(result):
    dst, report = result
    first = clip(report, "scenes_0")
    assert 8 <= first["start"] <= 10 and abs(first["end"] - 50) <= 1
    for name in ("scenes_0", "scenes_1"):
        c = clip(report, name)
        fps, frames = read(dst / "videos" / f"{name}.mp4")
        assert fps == 16.0 and frames.shape[1:] == (48, 64, 3)
        source_seconds = (c["end"] - c["start"]) / FPS
        assert abs(len(frames) / 16.0 - source_seconds) < 1 / 16
    # the first output frame of scenes_1 is the second scene (blue tint), not the first (red tint)
    _, frames = read(dst / "videos" / "scenes_1.mp4")
    assert frames[0, ..., 2].mean() > frames[0, ..., 0].mean()


def test_captions_carried_over_beside_and_sibling_folder(result):
    dst, report = result
    for name in ("scenes_0", "scenes_1"):
        assert (dst / "captions" / f"{name}.txt").read_text().strip() == "two scenes, [trigger] style"
    assert (dst / "captions" / "pan_0.txt").read_text().strip() == "a panning texture"
    assert not (dst / "captions" / "blurry_0.txt").exists()
    assert clip(report, "pan_0")["written"] and not clip(report, "pan_copy_0")["written"]


def test_report_names_each_flagged_clip_with_its_reason(result):
    dst, report = result
    expected = {"letterbox_0": "letterboxed", "blurry_0": "blur", "pan_copy_0": "duplicate",
                "short_0": "too_short", "shaky_0": "shake", "lighting_0": "lighting", "tiny_0": "tiny"}
    for name, reason in expected.items():
        assert reason in reasons(report, name), (name, clip(report, name)["flags"])
        assert not clip(report, name)["written"] and not (dst / "videos" / f"{name}.mp4").exists()
    for name in ("scenes_0", "scenes_1", "pan_0", "samepalette_0", "samepalette_1"):
        assert reasons(report, name) == [] and clip(report, name)["written"], clip(report, name)["flags"]
    assert "pan_0" in clip(report, "pan_copy_0")["flags"][0]["detail"]
    bars = clip(report, "letterbox_0")["bars"]
    assert abs(bars[0] - 8) <= 1 and abs(bars[1] - 8) <= 1 and bars[2:] == [0, 0]
    text = format_report(report)
    for name, reason in expected.items():
        assert f"{name}:" in text and f"{reason}:" in text
    on_disk = json.loads((dst / "prep_report.json").read_text())
    assert on_disk["summary"] == report["summary"] and on_disk["summary"]["unreadable"] == 2
    assert sorted(p.name for p in (dst / "videos").iterdir()) == [
        "pan_0.mp4", "samepalette_0.mp4", "samepalette_1.mp4", "scenes_0.mp4", "scenes_1.mp4"]


def test_corrupt_and_empty_inputs_reported_by_path(result, raw):
    _, report = result
    errors = {Path(v["path"]).name: v["error"] for v in report["videos"] if "error" in v}
    assert set(errors) == {"broken.mp4", "empty.mp4"}
    assert errors["empty.mp4"] == f"{raw / 'empty.mp4'}: empty file (0 bytes)"
    assert errors["broken.mp4"].startswith(f"{raw / 'broken.mp4'}: unreadable video (")
    assert errors["broken.mp4"].count(str(raw)) == 1
    assert all("\n" not in e and "Traceback" not in e for e in errors.values())


def test_crop_bars_and_keep_flagged_and_resolution(raw, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("letterbox.mp4", "blurry.mp4"):
        (src / name).write_bytes((raw / name).read_bytes())
    options = PrepOptions(width=32, height=32, keep_flagged=True, crop_bars=True, thresholds=thresholds())
    report = prep(src, tmp_path / "dst", options, progress=False)
    boxed = clip(report, "letterbox_0")
    assert boxed["flags"] == [] and boxed["written"]
    _, frames = read(tmp_path / "dst" / "videos" / "letterbox_0.mp4")
    assert frames.shape[1:] == (32, 32, 3)
    assert frames[:, :2].mean() > 40 and frames[:, -2:].mean() > 40  # no black bar left at top/bottom
    assert reasons(report, "blurry_0") == ["blur"] and clip(report, "blurry_0")["written"]


def cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="wantune")
    dataset = parser.add_subparsers().add_parser("dataset")
    register_prep(dataset.add_subparsers())
    return parser.parse_args(argv)


def test_cli_json_and_bad_arguments(raw, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "pan.mp4").write_bytes((raw / "pan.mp4").read_bytes())
    args = cli(["dataset", "prep", str(src), str(tmp_path / "out"), "--resolution", "32x16", "--min-size", "8",
                "--blur-threshold", "10", "--json", "--no-progress"])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["clips"][0]["size"] == [32, 16] and report["clips"][0]["written"]
    for argv, message in ((["--resolution", "32by16"], "expected WxH"), (["--width", "32"], "give both"),
                          (["--resolution", "33x16"], "even")):
        args = cli(["dataset", "prep", str(src), str(tmp_path / "o2"), *argv])
        with pytest.raises(UserError, match=message):
            args.func(args)
    args = cli(["dataset", "prep", str(tmp_path / "nope"), str(tmp_path / "o3")])
    with pytest.raises(UserError, match="source folder not found"):
        args.func(args)


def test_measures_against_known_inputs():
    rng = np.random.default_rng(1)
    img = rng.normal(128, 40, (64, 96)).astype(np.float32)
    assert np.allclose(quality.phase_shift(img, np.roll(img, (3, -5), axis=(0, 1))), (3.0, -5.0), atol=0.05)
    assert quality.shake_jitter(np.stack([np.roll(img, (0, i), axis=(0, 1)) for i in range(12)])) < 0.01
    smooth = np.kron(rng.normal(128, 40, (32, 48)), np.ones((4, 4)))  # a half-pixel pan at this scale
    half_pixel_pan = np.stack([np.roll(smooth, i, axis=1)[::2, ::2] for i in range(20)])
    assert quality.shake_jitter(half_pixel_pan) < 0.5
    jolts = rng.integers(-6, 7, (20, 2))
    shaken = np.stack([np.roll(img, tuple(j), axis=(0, 1)) for j in jolts])
    assert quality.shake_jitter(shaken) > 2.0
    lap = quality.laplacian_variance(img)
    assert abs(lap - 20 * 40**2) / (20 * 40**2) < 0.1  # white noise: var = (1+1+1+1+16) sigma^2
    assert quality.hamming(quality.dhash(img), quality.dhash(img + 3)) == 0
    assert quality.hamming(quality.dhash(img), quality.dhash(img[:, ::-1])) > 20
    times = np.arange(90) / 30
    picked = scenes.resample_indices(times, 0, 90, 1 / 30, 16)
    assert len(picked) == 48 and picked[:4] == [0, 2, 4, 6]
    assert all(abs(i - j * 30 / 16) <= 0.5 for j, i in enumerate(picked))  # nearest source frame in time
    assert scenes.resample_indices(times, 45, 90, 1 / 30, 16)[:3] == [45, 47, 49]
    assert len(scenes.resample_indices(np.arange(32) / 16, 0, 32, 1 / 16, 24)) == 48
    assert scenes.split_long(times, 0, 90, 1 / 30, 1.0) == [(0, 30), (30, 60), (60, 90)]
    assert scenes.split_long(times, 0, 90, 1 / 30, 2.5) == [(0, 45), (45, 90)]  # two 1.5 s, not 2.5 + 0.5
    assert scenes.split_long(times, 10, 90, 1 / 30, 0) == [(10, 90)]
