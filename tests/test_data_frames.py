"""Frame extraction windows and fps resampling, checked on real encoded clips by decoding frame numbers."""

from __future__ import annotations

import pytest

from test_data_helpers import frame_numbers, numbered_video
from wantune.data.config import DatasetConfig, DatasetEntry
from wantune.data.frames import frame_windows, resample_timeline
from wantune.data.samples import enumerate_samples, load_sample_pixels


def test_documented_windows():
    # musubi-tuner semantics on a 50-frame timeline
    assert frame_windows(50, "head", [9, 17, 65]) == [(0, 9), (0, 17)]
    assert frame_windows(50, "chunk", [17]) == [(0, 17), (17, 17)]
    assert frame_windows(50, "chunk", [9]) == [(0, 9), (9, 9), (18, 9), (27, 9), (36, 9)]
    assert frame_windows(50, "slide", [33], frame_stride=5) == [(0, 33), (5, 33), (10, 33), (15, 33)]
    assert frame_windows(50, "uniform", [21], frame_sample=4) == [(0, 21), (9, 21), (19, 21), (29, 21)]
    assert frame_windows(50, "uniform", [21], frame_sample=1) == [(0, 21)]  # 1 sample = head
    assert frame_windows(50, "full", [1], max_frames=129) == [(0, 49)]
    assert frame_windows(50, "full", [1], max_frames=33) == [(0, 33)]
    assert frame_windows(3, "full", [1]) == [(0, 1)]
    assert frame_windows(8, "slide", [9]) == []
    assert frame_windows(9, "uniform", [9], frame_sample=3) == [(0, 9)]  # coinciding windows kept once


def test_resampling_keeps_duration():
    timeline = resample_timeline(61, 30, 16)  # 2 s span at 30 fps
    assert len(timeline) == 33 and (len(timeline) - 1) / 16 == pytest.approx(60 / 30)
    for k, src in enumerate(timeline):  # nearest source frame in time
        assert abs(src / 30 - k / 16) <= 0.5 / 30 + 1e-9
    assert timeline[0] == 0 and timeline[-1] == 60
    assert len(resample_timeline(60, 30, 16)) == 32  # 60 frames shown for 2 s -> 32 frames shown for 2 s
    assert resample_timeline(33, 16, 16) == list(range(33))
    assert resample_timeline(49, 24, 16)[:7] == [0, 2, 3, 5, 6, 8, 9]  # t = k/16 -> round(1.5 k), halves up
    assert len(resample_timeline(49, 24, 16)) == 33
    slow = resample_timeline(9, 8, 16)  # 8 fps source: each frame shown twice
    assert slow == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8] and len(slow) == 17
    ntsc = resample_timeline(60, 30000 / 1001, 16)
    assert len(ntsc) == int(59 * 1001 / 30000 * 16) + 1


def _samples(path, **entry):
    cfg = DatasetConfig([DatasetEntry(path=path, default_caption="x", resolution=(64, 48), **entry)],
                        variant="wan2.1-t2v-1.3b")
    return enumerate_samples(cfg)


def test_30fps_clip_resampled_to_16fps_on_real_file(tmp_path):
    numbered_video(tmp_path / "clip.mp4", 61, 30)
    samples, skipped = _samples(tmp_path, frame_extraction="full")
    assert not skipped and len(samples) == 1
    sample = samples[0]
    assert sample.num_frames == 33 and sample.fps == 16 and sample.source_fps == pytest.approx(30)
    decoded = frame_numbers(load_sample_pixels(sample).numpy())
    assert decoded == list(sample.frame_indices) == resample_timeline(61, 30, 16)
    assert (decoded[-1] - decoded[0]) / 30 == pytest.approx((sample.num_frames - 1) / 16)  # same duration


def test_every_extraction_mode_on_real_file(tmp_path):
    numbered_video(tmp_path / "clip.mp4", 50, 16, codec="mpeg4")  # 16 fps: timeline = source frames
    cases = {
        "head": (dict(target_frames=[9, 17]), [(0, 9), (0, 17)]),
        "chunk": (dict(target_frames=[17]), [(0, 17), (17, 17)]),
        "slide": (dict(target_frames=[33], frame_stride=5), [(0, 33), (5, 33), (10, 33), (15, 33)]),
        "uniform": (dict(target_frames=[21], frame_sample=4), [(0, 21), (9, 21), (19, 21), (29, 21)]),
        "full": (dict(max_frames=41), [(0, 41)]),
    }
    for mode, (options, expected) in cases.items():
        samples, skipped = _samples(tmp_path, frame_extraction=mode, **options)
        assert not skipped, mode
        got = [(s.frame_indices[0], s.num_frames) for s in samples]
        assert got == expected, mode
        for sample in samples[:2]:
            assert frame_numbers(load_sample_pixels(sample).numpy()) == list(sample.frame_indices)
            assert list(sample.frame_indices) == list(range(sample.frame_indices[0],
                                                            sample.frame_indices[0] + sample.num_frames))


def test_24fps_windows_pick_source_frames_by_time(tmp_path):
    numbered_video(tmp_path / "clip.mp4", 48, 24)  # 47/24 s span: 32 frames at 16 fps
    samples, skipped = _samples(tmp_path, frame_extraction="chunk", target_frames=[9])
    assert not skipped
    timeline = resample_timeline(48, 24, 16)
    assert len(timeline) == 32 and [s.frame_indices for s in samples] == [
        tuple(timeline[i:i + 9]) for i in (0, 9, 18)]
    assert frame_numbers(load_sample_pixels(samples[1]).numpy()) == list(samples[1].frame_indices)


def _vfr_video(path, times_ms, codec="libx264"):
    """Frames i shown at times_ms[i] (a variable frame rate), frame numbers encoded as colours."""
    from fractions import Fraction

    import av

    from test_data_helpers import numbered_frames

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=40)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for frame_HWC, t in zip(numbered_frames(len(times_ms)), times_ms):
            frame = av.VideoFrame.from_ndarray(frame_HWC, format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize("codec,suffix", [("libx264", ".mp4"), ("mpeg4", ".mkv")])
def test_variable_frame_rate_picks_frames_by_timestamp(tmp_path, codec, suffix):
    times_ms = [i * 100 for i in range(10)] + [1000 + i * 25 for i in range(1, 41)]  # 10 fps, then 40 fps
    path = _vfr_video(tmp_path / f"vfr{suffix}", times_ms, codec)
    samples, skipped = _samples(tmp_path, frame_extraction="full")
    assert not skipped and samples[0].variable_rate
    picked = samples[0].frame_indices
    assert len(picked) == int(2.0 * 16) + 1  # 2 s span at 16 fps
    for k, i in enumerate(picked):  # nearest frame in time, never off by more than half a gap
        t = k / 16
        assert abs(times_ms[i] / 1000 - t) == pytest.approx(min(abs(s / 1000 - t) for s in times_ms), abs=1e-9)
    assert frame_numbers(load_sample_pixels(samples[0]).numpy()) == list(picked)
    assert path.exists()
