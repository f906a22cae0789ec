"""Training straight from a `wantune cache` of real encoded clips (tiny VAE / UMT5 fixtures, tiny transformer)."""

import json

import pytest

from tests.conftest import FIXTURES
from tests.test_data_helpers import numbered_video, solid_image
from wantune.cli import main as cli_main

VAE = FIXTURES / "wan21_vae_tiny.safetensors"
UMT5 = FIXTURES / "umt5_tiny_official.pth"
TOKENIZER = FIXTURES / "tokenizer_tiny"


def test_train_on_a_cached_dataset(tmp_path, capsys):
    pytest.importorskip("wantune.models.text_encoder")
    clips = tmp_path / "clips"
    numbered_video(clips / "a.mp4", 20, 16)
    numbered_video(clips / "b.mp4", 24, 16)
    solid_image(clips / "c.png", 40, 40, value=90)
    for name, caption in (("a", "a red circle"), ("b", "a blue square"), ("c", "a grey card")):
        (clips / f"{name}.txt").write_text(caption)
    (tmp_path / "data.toml").write_text('[[datasets]]\npath = "clips"\nresolution = [32, 32]\n'
                                        'target_frames = [5]\nframe_extraction = "head"\n')
    train = tmp_path / "train.toml"
    train.write_text(f'[model]\nvariant = "wan2.1-t2v-1.3b"\ntiny = true\ndtype = "fp32"\nvae = "{VAE}"\n'
                     f'text_encoder = "{UMT5}"\ntokenizer = "{TOKENIZER}"\n'
                     '[data]\ndataset_config = "data.toml"\n[validation]\nsplit = 0.34\nevery_steps = 2\n'
                     '[saving]\noutput_dir = "runs"\nname = "cached"\n[logging]\ntensorboard = false\n'
                     'progress_bar = false\n[training]\nsteps = 4\nbatch_size = 1\nmixed_precision = "no"\n')
    assert cli_main(["cache", str(train), "--dtype", "fp32", "--no-progress"]) == 0, capsys.readouterr().err
    assert (tmp_path / "cache" / "cache_info.json").is_file()
    assert cli_main(["train", str(train)]) == 0, capsys.readouterr().err
    run = tmp_path / "runs" / "cached"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4] and sum("val/loss" in r for r in records) == 2
    assert (run / "wan2.1_t2v_cached_v1.safetensors").is_file()
    assert "2 training samples, 1 validation samples" in (run / "train.log").read_text()
    # the largest training clip in pixels (frames, height, width), as `performance.plain_blocks = "auto"` sizes by it
    from wantune.train.config import load_train_config
    from wantune.train.experts import run_variant
    from wantune.train.sources import build_data

    cfg = load_train_config(train)
    assert build_data(cfg, run_variant(cfg)).largest_FHW == (5, 32, 32)


def test_dop_on_cached_data_encodes_the_class_prompts(tmp_path, capsys):
    pytest.importorskip("wantune.models.text_encoder")
    clips = tmp_path / "clips"
    for name, value in (("a", 60), ("b", 200)):
        solid_image(clips / f"{name}.png", 40, 40, value=value)
        (clips / f"{name}.txt").write_text(f"sks dog number {name}")
    (tmp_path / "data.toml").write_text('[[datasets]]\npath = "clips"\nresolution = [32, 32]\n')
    train = tmp_path / "train.toml"
    train.write_text(f'[model]\nvariant = "wan2.1-t2v-1.3b"\ntiny = true\ndtype = "fp32"\nvae = "{VAE}"\n'
                     f'text_encoder = "{UMT5}"\ntokenizer = "{TOKENIZER}"\n[data]\ndataset_config = "data.toml"\n'
                     '[regularisation.dop]\nenabled = true\ntrigger = "sks"\nclass_word = "a"\n'
                     '[saving]\noutput_dir = "runs"\nname = "dop"\n[logging]\ntensorboard = false\n'
                     'progress_bar = false\n[training]\nsteps = 2\nmixed_precision = "no"\n')
    assert cli_main(["cache", str(train), "--dtype", "fp32", "--no-progress"]) == 0, capsys.readouterr().err
    assert cli_main(["train", str(train)]) == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (tmp_path / "runs/dop/metrics.jsonl").read_text().splitlines()]
    assert all("loss/dop" in r for r in records)
