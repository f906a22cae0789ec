"""`python -m wantune.toy.evaluate`: prompt adherence of the shipped toy model, with per-clip judgements."""

from __future__ import annotations

import json

from wantune.toy.base import BASE_DIR
from wantune.toy.evaluate import main


def test_details_explain_the_summary(capsys):
    main(["--base", str(BASE_DIR), "--concept", "base", "--clips", "3", "--seed", "2000", "--steps", "6",
          "--device", "cpu", "--details"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    clips = result["clips"]
    assert [c["seed"] for c in clips] == [2000, 2001, 2002]
    assert [c["prompt"] for c in clips] == result["prompts"][:3]
    assert result["adherence"] == round(sum(c["adherence"] for c in clips) / 3, 4)
    for attr, fraction in result["passed"].items():
        assert fraction == round(sum(c["passed"][attr] for c in clips) / 3, 4)
    for clip in clips:  # each verdict says what was measured and which spec option it matched
        assert set(clip["scores"]) >= {"shape", "color", "motion", "background"}
        assert clip["adherence"] == float(all(clip["passed"][a] for a in ("shape", "color", "motion", "background")))
        assert clip["measured"] and clip["matched"]
    # the same adherence grouped by the option each prompt was drawn with (which shape the failures sit on)
    from wantune.toy.spec import load_concept
    from wantune.toy.world import sample_instance

    drawn = [sample_instance(load_concept("base"), 2000, i) for i in range(3)]
    assert result["adherence_by_option"]  # three base-world prompts vary at least one attribute
    for attr in ("shape", "color", "motion", "background"):
        values = [getattr(inst, attr) for inst in drawn]
        if len(set(values)) < 2:
            assert attr not in result["adherence_by_option"]
            continue
        assert set(result["adherence_by_option"][attr]) == set(values)
        for value, rate in result["adherence_by_option"][attr].items():
            mine = [c["adherence"] for c, v in zip(clips, values) if v == value]
            assert rate == round(sum(mine) / len(mine), 4)


def test_shift_reaches_the_sampler(tmp_path, capsys):
    """--shift is the flow shift every clip was sampled with (default: the variant's), as each video records."""
    from wantune.models.variants import get_variant
    from wantune.sample.output import read_settings

    for shift, folder in ((1.5, tmp_path / "low"), (None, tmp_path / "default")):
        main(["--base", str(BASE_DIR), "--concept", "base", "--clips", "1", "--seed", "2000", "--steps", "2",
              "--device", "cpu", "--out", str(folder)] + ([] if shift is None else ["--shift", str(shift)]))
        capsys.readouterr()
        (video,) = folder.glob("*.mp4")
        assert read_settings(video)["shift"] == (shift or get_variant("toy-t2v").shift)
