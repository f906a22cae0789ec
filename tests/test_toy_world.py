"""Toy world: concept specs, deterministic rendering with exact ground truth, dataset layout, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from wantune.cli import main as cli_main
from wantune.data.config import DatasetConfig, DatasetEntry
from wantune.data.samples import enumerate_samples
from wantune.data.video import probe, read_frames
from wantune.errors import UserError
from wantune.toy.spec import builtin_concepts, load_concept, parse_background, parse_motion, parse_shape
from wantune.toy.world import render_background, render_clip, shape_coverage, write_dataset

BUILTINS = ("base", "character", "style", "motion")


def _spec(**changes):
    data = {"name": "t", "shape": "circle", "color": "#dc2828", "background": "solid:#808080"}
    data.update(changes)
    return load_concept(data)


def test_builtin_concepts_load_with_triggers():
    assert set(BUILTINS) <= set(builtin_concepts())
    triggers = {name: load_concept(name).trigger for name in BUILTINS}
    assert triggers["base"] == "" and all(triggers[n] for n in ("character", "style", "motion"))
    assert len(set(triggers.values())) == 4


def test_spec_from_json_equals_toml(tmp_path):
    data = {"name": "j", "shape": ["circle", {"value": "star:5", "words": "{trigger}"}], "color": "#2850dc",
            "motion": "linear:1,0", "background": ["checker:#f5f5f5,#141414,6"], "trigger": "zup"}
    (tmp_path / "c.json").write_text(json.dumps(data))
    spec = load_concept(tmp_path / "c.json")
    assert [o.value for o in spec.options("shape")] == ["circle", "star:5"]
    assert spec.options("color")[0].value == "#2850dc"


@pytest.mark.parametrize("changes, words", [
    ({"shape": "hexagonal"}, "shape 'hexagonal': unknown"),
    ({"shape": "polygon:2"}, "integer N >= 3"),
    ({"color": "#12345"}, "expected #RRGGBB"),
    ({"motion": "spiral:3"}, "motion 'spiral:3': unknown"),
    ({"background": "stripes:#fff,#000"}, "expected 1..2 numbers"),
    ({"background": "solid:#d02a2a"}, "too close to background"),
    ({"size": [5.0, 2.0]}, "'size' must be [low, high]"),
    ({"colour": "#ffffff"}, "unknown key 'colour'; did you mean 'color'"),
])
def test_bad_specs_are_user_errors(changes, words):
    with pytest.raises(UserError, match=words.replace("[", r"\[").replace("]", r"\]")):
        _spec(**changes)


def test_missing_spec_names_builtins():
    with pytest.raises(UserError, match="built-in name.*base"):
        load_concept("no_such_concept")


def test_parsers():
    assert parse_shape("star:6,0.5").n == 6 and parse_shape("star:6,0.5").ratio == 0.5
    assert parse_motion("orbit:10").params == (10.0, 1.0)
    assert parse_background("stripes:#fff,#000,4,90").colors == ((255, 255, 255), (0, 0, 0))


@pytest.mark.parametrize("value, area", [
    ("circle", math.pi), ("square", 2.0), ("triangle", 3 * math.sqrt(3) / 4), ("polygon:6", 3 * math.sqrt(3) / 2),
    ("ellipse:2", None), ("star:5,0.45", 5 * math.sin(2 * math.pi / 10) * 0.45),
])
def test_coverage_area_matches_geometry(value, area):
    """Anti-aliased coverage integrates to the analytic area (radius 12)."""
    cover = shape_coverage(parse_shape(value), (32.3, 31.7), 12.0, 0.0, 64, 64)
    if area is None:  # 32-gon ellipse inscribed in axes 1 x 0.5
        area = 0.5 * 32 * math.sin(2 * math.pi / 32) * 0.5
    assert cover.sum() == pytest.approx(area * 144, rel=0.01)
    ys, xs = np.mgrid[0:64, 0:64] + 0.5
    if value in ("circle", "square", "polygon:6"):  # centrally symmetric: centroid is the centre
        assert (cover * xs).sum() / cover.sum() == pytest.approx(32.3, abs=0.02)
        assert (cover * ys).sum() / cover.sum() == pytest.approx(31.7, abs=0.02)


def test_stripes_and_checker_are_periodic():
    stripes = render_background("stripes:#f5f5f5,#141414,4", 32, 32, (1.0, 0.0))
    assert np.allclose(stripes[:, :24], stripes[:, 8:]) and np.allclose(stripes[:-1], stripes[1:])
    assert not np.allclose(stripes[:, :28], stripes[:, 4:])
    checker = render_background("checker:#f5f5f5,#141414,4", 32, 32)
    assert np.allclose(checker[:28, :28], checker[4:, 4:])  # diagonal cell: same colour
    assert np.allclose(checker[:, :28] + checker[:, 4:], 0xf5 + 0x14)  # neighbour cell: the other colour


def test_render_is_deterministic_and_truth_is_exact():
    spec = load_concept("base")
    a, truth = render_clip(spec, 3, 7)
    b, _ = render_clip(spec, 3, 7)
    c, _ = render_clip(spec, 4, 7)
    assert a.shape == (17, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    bg = np.array([int(truth["background"][7 + 2 * i:9 + 2 * i], 16) for i in range(3)], dtype=float)
    color = np.array([int(truth["color"][1 + 2 * i:3 + 2 * i], 16) for i in range(3)], dtype=float)
    ys, xs = np.mgrid[0:64, 0:64] + 0.5
    for f in (0, 8, 16):  # the coverage recovered from the pixels puts the object where the truth says
        alpha = np.clip(((a[f] - bg) @ (color - bg)) / ((color - bg) @ (color - bg)), 0, 1)
        if truth["shape"] in ("circle", "square", "cross"):
            centre = ((alpha * xs).sum() / alpha.sum(), (alpha * ys).sum() / alpha.sum())
            assert centre == pytest.approx(tuple(truth["centroid"][f]), abs=0.1)
        assert alpha.min() == 0 and alpha.max() == 1
    assert truth["shape"] in truth["caption"] or truth["shape"] == "cross"


def test_motion_trajectories_follow_the_spec():
    linear = _spec(motion="linear:1.5,-0.5", speed=[1.0, 1.0], size=[6.0, 6.0])
    _, truth = render_clip(linear, 0, 0)
    track = np.array(truth["centroid"])
    assert np.allclose(np.diff(track, axis=0), [1.5, -0.5])
    assert track.min() >= 6 and track.max() <= 58  # kept inside the frame
    orbit = _spec(motion="orbit:10,1", speed=[1.0, 1.0])
    track = np.array(render_clip(orbit, 0, 1)[1]["centroid"])
    centre = track.mean(axis=0)
    assert np.allclose(np.hypot(*(track - centre).T), 10, atol=0.7)
    zoom = _spec(motion="zoom:0.95", speed=[1.0, 1.0], size=[12.0, 12.0])
    radius = np.array(render_clip(zoom, 0, 2)[1]["radius"])
    assert np.allclose(radius, 12 * 0.95 ** np.arange(17), atol=1e-3)


def test_captions_use_words_and_trigger():
    spec = load_concept("character")
    captions = {render_clip(spec, 0, i)[1]["caption"] for i in range(6)}
    assert all("zorbl" in c and "star" not in c for c in captions)
    assert any(" on a " in c for c in captions)


def test_dataset_layout_is_read_by_the_data_pipeline(tmp_path):
    spec = load_concept("motion")
    paths = write_dataset(spec, tmp_path / "ds", 3, seed=11)
    assert [p.parent.name for p in paths] == ["videos"] * 3
    info = probe(paths[0])
    assert (info.width, info.height, info.num_frames, info.fps) == (64, 64, 17, 16)
    frames, truth = render_clip(spec, 11, 0)
    decoded = read_frames(paths[0])
    assert np.abs(decoded.astype(int) - frames).mean() < 4
    assert json.loads((tmp_path / "ds" / "truth" / paths[0].with_suffix(".json").name).read_text()) == truth
    cfg = DatasetConfig([DatasetEntry(tmp_path / "ds", resolution=(64, 64), target_frames=[17])],
                        variant="wan2.1-t2v-1.3b")
    samples, skipped = enumerate_samples(cfg)
    assert not skipped and len(samples) == 3
    assert {s.caption for s in samples} == {
        (tmp_path / "ds" / "captions" / (p.stem + ".txt")).read_text().strip() for p in paths}
    assert all(s.bucket == (64, 64) and len(s.frame_indices) == 17 for s in samples)


def test_masks_are_each_objects_exact_coverage_and_pair_with_their_clips(tmp_path):
    spec = load_concept("style")
    paths = write_dataset(spec, tmp_path / "ds", 2, seed=3, masks=True)
    frames, truth = render_clip(spec, 3, 1)
    mask_FHW = read_frames(tmp_path / "ds" / "masks" / paths[1].name)[..., 0].astype(float) / 255
    background = render_background(truth["background"], 64, 64, tuple(truth["phase"]))
    color = np.array([int(truth["color"][i:i + 2], 16) for i in (1, 3, 5)], float)
    # the coverage c each rendered pixel was blended with (frame = background (1 - c) + colour c), on the channel
    # where colour and background differ most
    diff = color - background
    channel = np.abs(diff).argmax(-1)[..., None]
    denom = np.take_along_axis(diff, channel, -1)[..., 0]
    usable = np.abs(denom) > 40
    blended_FHW = np.take_along_axis(frames - background, channel[None], -1)[..., 0]
    cover_FHW = np.clip(blended_FHW / np.where(usable, denom, 1), 0, 1)
    where = usable[None] & ((cover_FHW > 0.05) | (mask_FHW > 0.05))
    assert where.sum() > 17 * 20 and np.abs(mask_FHW - cover_FHW)[where].mean() < 0.05
    ys, xs = np.mgrid[0:64, 0:64] + 0.5
    for f in (0, 8, 16):  # the mask's centroid is the truth's
        w = mask_FHW[f]
        assert np.hypot((w * xs).sum() / w.sum() - truth["centroid"][f][0],
                        (w * ys).sum() / w.sum() - truth["centroid"][f][1]) < 0.5
    cfg = DatasetConfig([DatasetEntry(tmp_path / "ds", resolution=(64, 64), target_frames=[17],
                                      mask_path=tmp_path / "ds" / "masks")], variant="wan2.1-t2v-1.3b")
    samples, skipped = enumerate_samples(cfg)
    assert not skipped and [s.mask_path.name for s in samples] == [p.name for p in paths]


def test_cli_render_and_errors(tmp_path, capsys):
    assert cli_main(["toy", "render", "--concept", "style", "--out", str(tmp_path / "o"), "--clips", "2"]) == 0
    assert len(list((tmp_path / "o" / "videos").glob("*.mp4"))) == 2
    assert cli_main(["toy", "render", "--concept", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "concept spec not found" in capsys.readouterr().err
    (tmp_path / "bad.toml").write_text('name = "x"\nshape = "blob"\ncolor = "#ff0000"\n')
    assert cli_main(["toy", "render", "--concept", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "p")]) == 2
    assert "shape 'blob': unknown" in capsys.readouterr().err
