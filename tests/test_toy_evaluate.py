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
