"""Resolution buckets: generation, nearest-aspect assignment, no-upscale and cover + center crop."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from test_data_helpers import numbered_video, solid_image
from wantune.data.buckets import assign_bucket, cover_crop_box, generate_buckets, resize_crop
from wantune.data.config import DatasetConfig, DatasetEntry
from wantune.data.samples import enumerate_samples, load_sample_pixels


@pytest.mark.parametrize("resolution,multiple", [((512, 512), 16), ((768, 416), 16), ((1280, 704), 32)])
def test_generated_buckets_respect_area_and_multiple(resolution, multiple):
    buckets = generate_buckets(resolution, multiple)
    area = resolution[0] * resolution[1]
    assert buckets and all(w * h <= area and w % multiple == 0 and h % multiple == 0 for w, h in buckets)
    assert all((h, w) in buckets for w, h in buckets)  # both orientations
    assert resolution in buckets
    square = max(b for b in buckets if b[0] == b[1])
    assert square[0] == int(math.sqrt(area)) // multiple * multiple


def test_nearest_aspect_assignment():
    buckets = generate_buckets((512, 512), 16)
    assert assign_bucket((1920, 1080), buckets, 16) == min(
        buckets, key=lambda b: abs(math.log(b[0] / b[1]) - math.log(1920 / 1080)))
    assert assign_bucket((1000, 1000), buckets, 16) == (512, 512)
    assert assign_bucket((100, 400), [(512, 512), (256, 768), (768, 256)], 16) == (256, 768)


def test_no_upscale_never_exceeds_the_source():
    multiple = 16
    for resolution in [(512, 512), (768, 416)]:
        generated = generate_buckets(resolution, multiple)
        explicit = [(512, 512), (768, 416), (416, 768), (256, 256)]
        for w, h in itertools.product([16, 50, 129, 300, 415, 640, 800, 1920, 4000], repeat=2):
            for buckets, is_generated in ((generated, True), (explicit, False)):
                bucket = assign_bucket((w, h), buckets, multiple, no_upscale=True,
                                       area=resolution[0] * resolution[1], generated=is_generated)
                if bucket is None:
                    assert not is_generated and not any(bw <= w and bh <= h for bw, bh in explicit)
                    continue
                assert bucket[0] <= w and bucket[1] <= h, (w, h, bucket)
                assert bucket[0] % multiple == 0 and bucket[1] % multiple == 0
                if is_generated:
                    assert bucket[0] * bucket[1] <= resolution[0] * resolution[1]


def test_cover_crop_is_centered():
    (rw, rh), (left, top) = cover_crop_box((200, 100), (64, 64))
    assert (rw, rh) == (128, 64) and (left, top) == (32, 0)
    columns = np.tile(np.arange(200, dtype=np.uint8)[None, :, None], (100, 1, 3))[None]  # value = x
    cropped = resize_crop(columns, (64, 64))
    assert cropped.shape == (1, 3, 64, 64)
    center = cropped[0, 0, 32].numpy()
    assert abs(center[0] - 50.5) < 2.5 and abs(center[-1] - 148.5) < 2.5  # x 50..149 of 200 kept


def test_samples_with_no_upscale_on_real_files(tmp_path):
    solid_image(tmp_path / "small.png", 100, 60)
    solid_image(tmp_path / "big.png", 900, 500)
    numbered_video(tmp_path / "clip.mp4", 17, 16, width=96, height=64)
    cfg = DatasetConfig([DatasetEntry(path=tmp_path, default_caption="x", resolution=(256, 256),
                                      bucket_no_upscale=True, target_frames=[17])], variant="wan2.1-t2v-1.3b")
    samples, skipped = enumerate_samples(cfg)
    assert not skipped
    by_name = {s.path.name: s for s in samples}
    assert by_name["small.png"].bucket == (96, 48)
    assert by_name["clip.mp4"].bucket == (96, 64)
    big = by_name["big.png"].bucket
    assert big[0] * big[1] <= 256 * 256 and big[0] > big[1]
    for sample in samples:
        assert sample.bucket[0] <= sample.source_size[0] and sample.bucket[1] <= sample.source_size[1]
        pixels = load_sample_pixels(sample)
        assert pixels.shape == (3, sample.num_frames, sample.bucket[1], sample.bucket[0])
        assert pixels.min() >= -1 and pixels.max() <= 1


def test_explicit_buckets_skip_sources_too_small_without_upscaling(tmp_path):
    solid_image(tmp_path / "tiny.png", 40, 40)
    cfg = DatasetConfig([DatasetEntry(path=tmp_path, default_caption="x", buckets=[(64, 64)],
                                      bucket_no_upscale=True)], variant="wan2.1-t2v-1.3b")
    samples, skipped = enumerate_samples(cfg)
    assert not samples and "fits no bucket without upscaling" in skipped[0].reason
    cfg.datasets[0].bucket_no_upscale = False
    samples, _ = enumerate_samples(cfg)
    assert samples[0].bucket == (64, 64)
    assert load_sample_pixels(samples[0]).shape == (3, 1, 64, 64)
