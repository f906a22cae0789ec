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
    assert cli_main(["bench", "learn", "--concept", "motion", "--prior-clips", "-1", "--out", str(tmp_path / "p")]) == 2
    assert capsys.readouterr().err.strip() == "error: concept 'motion' (flag or its [recipe]): --prior-clips -1: must be >= 0"
    assert not (tmp_path / "p").exists()  # refused before anything was rendered
    assert cli_main(["bench", "learn", "--concept", "motion", "--strength", "0", "--out", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err.strip() == "error: concept 'motion' (flag or its [recipe]): --strength 0.0: must be > 0"
    for flag, value, rule in (("--lr", "-1", "--lr -1.0: must be > 0"),
                              ("--dop-multiplier", "-1", "--dop-multiplier -1.0: must be >= 0"),
                              ("--temporal-weight", "-1", "--temporal-weight -1.0: must be >= 0"),
                              ("--mask-min-weight", "1.5", "--mask-min-weight 1.5: must be within [0, 1]"),
                              ("--eval-seed", "-1", "--eval-seed -1: must be >= 0")):
        assert cli_main(["bench", "learn", "--concept", "motion", flag, value, "--out", str(tmp_path / "r")]) == 2
        assert capsys.readouterr().err.strip() == f"error: concept 'motion' (flag or its [recipe]): {rule}"
    assert not (tmp_path / "r").exists()
    assert cli_main(["bench", "learn", "--concept", "motion", "--set", "optimizer.bogus=1",
                     "--out", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --set: unknown key 'optimizer.bogus'") and "\n" not in err
    assert not (tmp_path / "q").exists()


def _concept_with_recipe(path, recipe: str):
    from wantune.toy.spec import CONCEPTS_DIR

    spec = (CONCEPTS_DIR / "motion.toml").read_text().split("\n[recipe]")[0]  # its own recipe replaced
    path.write_text(spec + "\n[recipe]\n" + recipe)
    return path


def test_concept_recipe_sits_between_flags_and_defaults(tmp_path):
    from wantune.toy.learn import LearnSettings, settings_for, train_config
    from wantune.toy.spec import load_concept

    spec = load_concept(_concept_with_recipe(tmp_path / "m.toml", 'steps = 7\nprior_target = "base"\nlr = 2e-3\n'
                                                                   "strength = 1.2\n"))
    defaults = LearnSettings(prior_clips=32, eval_clips=3)
    settings = settings_for(spec, defaults, {"steps": None, "lr": 5e-4, "prior_clips": 5})
    assert (settings.steps, settings.prior_target, settings.lr, settings.prior_clips) == (7, "base", 5e-4, 5)
    assert settings.strength == 1.2 and settings_for(spec, defaults, {"strength": 0.8}).strength == 0.8
    assert (settings.rank, settings.eval_clips) == (16, 3)  # neither flag nor recipe: the bench's defaults
    assert settings.dop_multiplier == 1.0  # motion's own recipe (0.25) was replaced by the test's
    shipped = settings_for(load_concept("character"), defaults, {})
    assert (shipped.steps, shipped.batch_size, shipped.prior_clips, shipped.prior_target, shipped.strength) == (
        1800, 32, 256, "base", 1.1)
    motion = settings_for(load_concept("motion"), defaults, {})
    config = train_config(load_concept("motion"), tmp_path, motion, dop=True)
    assert config["regularisation"]["temporal_weight"] == 1.0 and config["regularisation"]["dop"]["multiplier"] == 0.25
    assert "temporal_weight" not in train_config(spec, tmp_path, settings, dop=True)["regularisation"]
    plain = settings_for(load_concept("base"), defaults, {})  # a spec without a recipe
    assert (plain.steps, plain.prior_target, plain.prior_clips, plain.strength) == (1200, "data", 32, 1.0)
    assert "ema_decay" not in train_config(spec, tmp_path, settings, dop=True)["regularisation"]
    style = settings_for(load_concept("style"), defaults, {})  # its recipe keeps an EMA of the LoRA weights
    assert (style.clips, style.steps, style.ema_decay) == (256, 2400, 0.995)
    assert train_config(load_concept("style"), tmp_path, style, dop=True)["regularisation"]["ema_decay"] == 0.995
    assert settings_for(load_concept("style"), defaults, {"ema_decay": 0.0}).ema_decay == 0.0  # a flag turns it off


def test_bench_learn_refuses_a_bad_recipe_before_training(tmp_path, capsys):
    bad = _concept_with_recipe(tmp_path / "bad.toml", 'prior_target = "latents"\n')
    assert cli_main(["bench", "learn", "--concept", str(bad), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert "recipe.prior_target 'latents'" in err and "\n" not in err
    ema = _concept_with_recipe(tmp_path / "ema.toml", "ema_decay = 1.0\n")
    assert cli_main(["bench", "learn", "--concept", str(ema), "--out", str(tmp_path / "e")]) == 2
    assert "recipe.ema_decay 1.0: must be within [0, 1)" in capsys.readouterr().err
    assert cli_main(["bench", "learn", "--concept", "style", "--ema-decay", "-0.5", "--out", str(tmp_path / "f")]) == 2
    assert "--ema-decay -0.5: must be within [0, 1)" in capsys.readouterr().err
    typo = _concept_with_recipe(tmp_path / "typo.toml", "stepz = 10\n")
    assert cli_main(["bench", "learn", "--concept", str(typo), "--out", str(tmp_path / "b")]) == 2
    assert "recipe.stepz" in capsys.readouterr().err
    # the second concept's recipe is checked before the first concept renders or trains anything
    zero = _concept_with_recipe(tmp_path / "zero.toml", "steps = 0\n")
    assert cli_main(["bench", "learn", "--concept", "motion", "--concept", str(zero), "--out", str(tmp_path / "c")]) == 2
    assert capsys.readouterr().err.strip() == "error: concept 'motion' (flag or its [recipe]): --steps 0: must be >= 1"
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_bench_learn_smoke(tmp_path, capsys):
    """Pretrain 2 steps, then learn the motion concept for 3 steps with and without DOP, with 2 prior clips
    (base world, no trigger) as a regularisation dataset; 1 clip per set; --json prints JSON only."""
    from wantune.toy.pretrain import pretrain

    base = pretrain(tmp_path / "pre", clips=2, device="cpu",
                    overrides=["training.steps=2", "training.batch_size=2", "logging.progress_bar=false",
                               "logging.tensorboard=false"])
    capsys.readouterr()  # the pre-training's own messages
    code = cli_main(["bench", "learn", "--concept", "motion", "--base", str(base), "--out", str(tmp_path / "o"),
                     "--clips", "2", "--steps", "3", "--eval-clips", "1", "--sample-steps", "2", "--device", "cpu",
                     "--prior-clips", "2", "--prior-target", "base", "--strength", "1.3", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    for key in ("no_dop", "dop"):
        assert 0.0 <= result[key]["adherence_with_lora"] <= 1.0 and result[key]["strength"] == 1.3
        assert (tmp_path / "o" / "motion" / "runs" / f"motion_{'dop' if key == 'dop' else 'plain'}").is_dir()
    assert 0.0 <= result["adherence_without_lora"] <= 1.0
    assert set(result["passed_per_attribute"]["concept_with_lora_dop"]) == {"shape", "color", "motion", "background"}
    work = tmp_path / "o" / "motion"
    assert "is_regularization = true" in (work / "dataset.toml").read_text()
    prior = sorted((work / "prior" / "captions").glob("*.txt"))
    assert len(prior) == 2 and not any("orbix" in p.read_text() for p in prior)
    assert "4 training samples" in (work / "runs" / "motion_dop" / "train.log").read_text()
    assert 'prior_target = "base"' in (work / "runs" / "motion_dop" / "config.toml").read_text()
    assert result["recipe"]["prior_target"] == "base" and result["recipe"]["steps"] == 3
    from wantune.toy.spec import load_concept
    from wantune.toy.world import sample_instance

    def drawn(concept, seed):
        return [sample_instance(load_concept(concept), seed, 0).caption]
    assert result["eval"] == {"seed": 5000, "clips": 1, "first_prompts": {"concept": drawn("motion", 5000),
                                                                          "base": drawn("base", 5000)}}
    # one LoRA only (no DOP), a training key overridden: the EMA weights are the ones judged
    code = cli_main(["bench", "learn", "--concept", "motion", "--base", str(base), "--out", str(tmp_path / "e"),
                     "--clips", "2", "--steps", "3", "--eval-clips", "1", "--sample-steps", "2", "--device", "cpu",
                     "--prior-clips", "0", "--dop", "off", "--set", "regularisation.ema_decay=0.9", "--eval-seed",
                     "6000", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert result["eval"] == {"seed": 6000, "clips": 1, "first_prompts": {"concept": drawn("motion", 6000),
                                                                          "base": drawn("base", 6000)}}
    assert "dop" not in result and result["no_dop"]["lora"].endswith("_ema.safetensors")
    assert "ema_decay = 0.9" in (tmp_path / "e" / "motion" / "runs" / "motion_plain" / "config.toml").read_text()


def test_loss_svg_plots_every_step():
    import xml.etree.ElementTree as ET

    from wantune.toy.demo import loss_svg

    root = ET.fromstring(loss_svg([1.0, 0.8, 0.6, 0.5, 0.45], "loss"))
    raw, smooth = [[tuple(map(float, p.split(","))) for p in e.get("points").split()]
                   for e in root.iter() if e.tag.endswith("polyline")]
    assert len(raw) == len(smooth) == 5
    assert raw[0][1] < raw[-1][1] and raw[0][0] < raw[-1][0]  # SVG y grows downwards: a falling loss descends


def test_toy_demo_learns_on_the_shipped_model(tmp_path, capsys):
    """CI's shortened learn run: a motion LoRA on the shipped toy base for a few steps; the loss falls and the
    LoRA changes what the model generates for the same prompt and seed."""
    import numpy as np

    from wantune.data.video import read_frames

    code = cli_main(["toy", "demo", "--out", str(tmp_path), "--steps", "120", "--clips", "8", "--eval-clips", "1",
                     "--device", "cpu", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["last_loss"] < result["first_loss"]
    before = read_frames(next((tmp_path / "before").glob("*.mp4"))).astype(np.int16)
    after = read_frames(next((tmp_path / "after").glob("*.mp4"))).astype(np.int16)
    assert before.shape == after.shape == (17, 64, 64, 3)
    assert np.abs(before - after).mean() > 2.0
    assert (tmp_path / "loss.svg").is_file() and result["lora"].endswith(".safetensors")
