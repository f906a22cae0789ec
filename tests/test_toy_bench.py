"""`wantune bench learn`: input checks, and the whole recipe at smoke size on a smoke-pretrained toy base."""

from __future__ import annotations

import json

import pytest

from wantune.cli import main as cli_main


def test_bench_learn_checks_inputs(tmp_path, capsys):
    assert cli_main(["bench", "learn", "--concept", "base", "--out", str(tmp_path)]) == 2
    assert "has no trigger word" in capsys.readouterr().err
    code = cli_main(["bench", "learn", "--concept", "motion", "--base", str(tmp_path / "none"),
                     "--out", str(tmp_path / "o")])
    assert code == 2
    assert "pre-trained toy base model is missing" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_learn_smoke(tmp_path, capsys):
    """Pretrain 2 steps, then learn the motion concept for 3 steps with and without DOP; 1 clip per set."""
    from wantune.toy.pretrain import pretrain

    base = pretrain(tmp_path / "pre", clips=2, device="cpu",
                    overrides=["training.steps=2", "training.batch_size=2", "logging.progress_bar=false",
                               "logging.tensorboard=false"])
    code = cli_main(["bench", "learn", "--concept", "motion", "--base", str(base), "--out", str(tmp_path / "o"),
                     "--clips", "2", "--steps", "3", "--eval-clips", "1", "--sample-steps", "2", "--device", "cpu",
                     "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"][0]
    for key in ("no_dop", "dop"):
        assert 0.0 <= result[key]["adherence_with_lora"] <= 1.0
        assert (tmp_path / "o" / "motion" / "runs" / f"motion_{'dop' if key == 'dop' else 'plain'}").is_dir()
    assert 0.0 <= result["adherence_without_lora"] <= 1.0
