"""PyAV / Pillow media I/O on real files encoded here."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from test_data_helpers import frame_numbers, numbered_frames, numbered_video
from wantune.data.video import _read_after_seek, probe, read_frames, read_image, read_metadata, write_video
from wantune.errors import UserError


@pytest.mark.parametrize("codec,suffix,fps", [("libx264", ".mp4", 24), ("mpeg4", ".mp4", 30),
                                              ("libvpx-vp9", ".webm", 30000 / 1001)])
def test_write_probe_read_round_trip(tmp_path, codec, suffix, fps):
    path = write_video(tmp_path / f"clip{suffix}", numbered_frames(37), fps, {"comment": "wantune test"},
                       codec=codec)
    info = probe(path)
    assert (info.kind, info.width, info.height, info.num_frames) == ("video", 64, 48, 37)
    assert info.fps == pytest.approx(fps, rel=1e-4)
    assert info.duration == pytest.approx(37 / fps, rel=1e-4)
    assert frame_numbers(read_frames(path)) == list(range(37))
    assert frame_numbers(read_frames(path, [5, 3, 3, 36, 0])) == [5, 3, 3, 36, 0]
    assert read_metadata(path)["comment" if suffix == ".mp4" else "COMMENT"] == "wantune test"


def test_read_frames_past_the_end_is_user_error(tmp_path):
    path = numbered_video(tmp_path / "c.mp4", 9, 16)
    with pytest.raises(UserError, match="frame 9 cannot be decoded"):
        read_frames(path, [0, 9])


def test_write_video_rejects_wrong_dtype(tmp_path):
    with pytest.raises(UserError, match="uint8 frames"):
        write_video(tmp_path / "x.mp4", np.zeros((2, 16, 16, 3), np.float32), 16)
    with pytest.raises(UserError, match="63x47 frames cannot be encoded as libx264"):
        write_video(tmp_path / "x.mp4", np.zeros((2, 47, 63, 3), np.uint8), 16)
    odd = write_video(tmp_path / "odd.mkv", numbered_frames(3, 47, 63), 16, codec="ffv1")
    assert probe(odd).width == 63 and frame_numbers(read_frames(odd)) == [0, 1, 2]


@pytest.mark.parametrize("content,reason", [(b"", "empty file"), (b"not a video at all" * 50, "unreadable video")])
def test_bad_video_files(tmp_path, content, reason):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(UserError, match=reason):
        probe(path)


def test_truncated_video_is_user_error(tmp_path):
    path = numbered_video(tmp_path / "c.mp4", 30, 30)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(UserError, match="c.mp4"):
        probe(path)
        read_frames(path)


def test_image_pixel_formats_are_converted(tmp_path):
    base = np.zeros((8, 10, 3), np.uint8)
    base[:, :5] = (255, 0, 0)
    cases = {}
    Image.fromarray(base).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    cases["cmyk.jpg"] = ("CMYK converted to RGB", (255, 0, 0), 12)
    gray16 = np.full((8, 10), 65535, np.uint16)
    gray16[:, :5] = 32896  # 128.5 / 255 of full scale
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    cases["g16.png"] = ("16-bit converted to 8-bit", (128, 128, 128), 1)
    rgba = np.zeros((8, 10, 4), np.uint8)
    rgba[:, :5] = (0, 0, 255, 255)  # opaque blue on the left, transparent on the right
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    cases["alpha.png"] = ("alpha composited over white", (0, 0, 255), 0)
    for name, (note, left, tolerance) in cases.items():
        info = probe(tmp_path / name)
        assert info.notes == (note,), name
        pixels = read_image(tmp_path / name)
        assert pixels.shape == (8, 10, 3) and pixels.dtype == np.uint8
        assert np.abs(pixels[4, 1].astype(int) - left).max() <= tolerance, name
    assert (read_image(tmp_path / "alpha.png")[4, 8] == 255).all()  # transparent -> white
    assert (read_image(tmp_path / "g16.png")[4, 8] == 255).all()


def test_float_image_and_truncated_image_are_refused(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(UserError, match="mode F"):
        read_image(tmp_path / "f.tif")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="unreadable image"):
        probe(tmp_path / "t.png")


def test_10_bit_video_is_decoded_to_8_bit(tmp_path):
    import av

    path = tmp_path / "deep.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=16)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p10le"
        for frame_HWC in numbered_frames(9):
            frame = av.VideoFrame.from_ndarray(frame_HWC, format="rgb24").reformat(format="yuv420p10le")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    info = probe(path)
    assert info.pixel_format == "yuv420p10le" and info.notes == ("yuv420p10le video: converted to 8-bit RGB",)
    frames = read_frames(path)
    assert frames.dtype == np.uint8 and frame_numbers(frames) == list(range(9))


@pytest.mark.parametrize("codec,suffix", [("libx264", ".mp4"), ("mpeg4", ".mkv"), ("libvpx-vp9", ".webm")])
def test_seeking_reads_the_same_frames_as_decoding_from_the_start(tmp_path, codec, suffix):
    path = numbered_video(tmp_path / f"long{suffix}", 200, 30, codec=codec, height=32, width=32)
    wanted = [150, 151, 199, 160, 150]
    assert frame_numbers(read_frames(path, wanted)) == wanted
    assert frame_numbers(read_frames(path, [60, 61, 62])) == [60, 61, 62]
    sought = _read_after_seek(path, {150, 199})  # the seek path itself, not its fallback
    assert sorted(sought) == [150, 199] and frame_numbers(np.stack([sought[150], sought[199]])) == [150, 199]
