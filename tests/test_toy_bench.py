"""`wantune bench learn`: inputs are checked and the LoRA datasets rendered before the base model is needed."""

from __future__ import annotations

from wantune.cli import main as cli_main


def test_bench_learn_checks_inputs(tmp_path, capsys):
    assert cli_main(["bench", "learn", "--concept", "base", "--out", str(tmp_path)]) == 2
    assert "has no trigger word" in capsys.readouterr().err
    code = cli_main(["bench", "learn", "--concept", "motion", "--base", str(tmp_path / "none"),
                     "--out", str(tmp_path / "o"), "--clips", "2"])
    assert code == 2
    assert "pre-trained toy base model is missing" in capsys.readouterr().err
    assert len(list((tmp_path / "o" / "motion" / "data" / "videos").glob("*.mp4"))) == 2
