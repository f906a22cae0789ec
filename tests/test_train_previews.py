"""Previews during training: videos from a prompt file with the weights being trained (tiny VAE / UMT5 fixtures)."""

import pytest

from tests.conftest import FIXTURES
from wantune.cli import main as cli_main

VAE = FIXTURES / "wan21_vae_tiny.safetensors"
UMT5 = FIXTURES / "umt5_tiny_official.pth"
TOKENIZER = FIXTURES / "tokenizer_tiny"


@pytest.mark.parametrize("variant,train", [("wan2.1-t2v-1.3b", "both"), ("wan2.2-t2v-a14b", "low")])
def test_previews_are_written_every_n_steps(tmp_path, capsys, variant, train):
    pytest.importorskip("wantune.models.text_encoder")
    import av

    (tmp_path / "prompts.txt").write_text("a red circle --f 5\n# a comment\na blue square --s 3\n")
    config = tmp_path / "train.toml"
    config.write_text(f'[model]\nvariant = "{variant}"\ntiny = true\ndtype = "fp32"\nvae = "{VAE}"\n'
                      f'text_encoder = "{UMT5}"\ntokenizer = "{TOKENIZER}"\n[data.synthetic]\nsamples = 4\n'
                      f'[experts]\ntrain = "{train}"\n'
                      '[previews]\nevery_steps = 2\nprompts_file = "prompts.txt"\nsteps = 2\nwidth = 32\n'
                      'height = 32\nframes = 5\n[saving]\noutput_dir = "runs"\nname = "p"\n'
                      '[logging]\ntensorboard = false\nprogress_bar = false\n'
                      '[training]\nsteps = 2\nbatch_size = 2\nmixed_precision = "no"\n')
    assert cli_main(["train", str(config)]) == 0, capsys.readouterr().err
    files = sorted((tmp_path / "runs" / "p" / "previews").glob("*.mp4"))
    assert [f.name for f in files] == ["step_000002_0.mp4", "step_000002_1.mp4"]
    with av.open(str(files[0])) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 5 and frames[0].width == 32
