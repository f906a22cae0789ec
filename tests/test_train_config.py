"""The training config tree: shipped examples and presets parse, bad keys fail with their path."""

from pathlib import Path

import pytest

from wantune import config as typed
from wantune.cli import main as cli_main
from wantune.errors import UserError
from wantune.train.config import TrainConfig, load_train_config
from wantune.train.presets import PRESETS, apply_preset, recommend

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("train_*.toml"))


def test_there_are_examples():
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_parses_and_round_trips(path, tmp_path):
    cfg = load_train_config(path)
    again = tmp_path / "resolved.toml"
    again.write_text(typed.dumps(cfg))
    assert load_train_config(again) == cfg


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_parses(name, tmp_path):
    f = tmp_path / "c.toml"
    f.write_text(f'preset = "{name}"\n[model]\ntiny = true\n[data.synthetic]\n[regularisation.dop]\ntrigger = "sks"\n')
    cfg = load_train_config(f)
    assert cfg.preset == name and cfg.network.rank == PRESETS[name]["network"]["rank"]
    assert cfg.training.steps == PRESETS[name]["training"]["steps"]


def test_user_keys_win_over_preset_and_epochs_replace_steps():
    user = {"network": {"rank": 8}, "training": {"epochs": 3}, "model": {"tiny": True}, "data": {"synthetic": {}},
            "regularisation": {"dop": {"trigger": "x"}}}
    cfg = typed.load(TrainConfig, apply_preset(user, "character"))
    assert cfg.network.rank == 8 and cfg.network.alpha == 16.0 and cfg.training.epochs == 3
    assert cfg.training.steps is None and cfg.regularisation.dop.class_word == "person"


def test_bad_key_fails_with_path_and_suggestion(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[model]\ntiny = true\n[optimizer]\nlearning_rate = 1e-4\n")
    with pytest.raises(UserError, match=rf"{f}: unknown key 'optimizer.learning_rate'"):
        load_train_config(f)
    f.write_text("[model]\ntiny = true\n[timesteps]\nsampling = 'sigmoidal'\n")
    with pytest.raises(UserError, match=r"timesteps.sampling' must be one of .*did you mean 'sigmoid'"):
        load_train_config(f)
    with pytest.raises(UserError, match=r"unknown preset 'charcter'; did you mean 'character'"):
        load_train_config(f, ["preset=charcter"])


@pytest.mark.parametrize("override, message", [
    ("optimizer.lr=-1e-4", "optimizer.lr -0.0001: must be > 0"),
    ("optimizer.lr=0", "optimizer.lr 0.0: must be > 0"),
    ("regularisation.dop.multiplier=-0.5", "regularisation.dop.multiplier -0.5: must be >= 0"),
    ("regularisation.temporal_weight=-1", "regularisation.temporal_weight -1.0: must be >= 0"),
])
def test_bad_numbers_fail_at_load_naming_the_key(tmp_path, override, message):
    f = tmp_path / "c.toml"
    f.write_text("[model]\ntiny = true\n[data.synthetic]\n")
    with pytest.raises(UserError, match=message) as exc:
        load_train_config(f, [override])
    assert "\n" not in str(exc.value)


def test_mask_min_weight_outside_0_1_fails_naming_the_key(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[model]\ntiny = true\n[data.synthetic]\n[training]\nsteps = 1\n")
    with pytest.raises(UserError) as exc:
        load_train_config(f, ["training.mask_min_weight=1.5"])
    assert str(exc.value) == "training.mask_min_weight 1.5: must be in [0, 1]"
    assert load_train_config(f, ["training.mask_min_weight=0.25"]).training.mask_min_weight == 0.25


def test_cross_field_checks(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[model]\ntiny = true\n")
    with pytest.raises(UserError, match="set exactly one of data.dataset_config"):
        load_train_config(f)
    f.write_text("[model]\nvariant = 'wan2.1-t2v-1.3b'\n[data.synthetic]\n")
    with pytest.raises(UserError, match="model.checkpoint"):
        load_train_config(f)
    f.write_text("[model]\nvariant = 'wan2.2-t2v-a14'\ntiny = true\n[data.synthetic]\n")
    with pytest.raises(UserError, match="model.variant: unknown model variant 'wan2.2-t2v-a14'; did you mean"):
        load_train_config(f)
    f.write_text("[model]\ntiny = true\n[data.synthetic]\n[training]\nsteps = 5\nepochs = 2\n")
    with pytest.raises(UserError, match="exactly one of steps or epochs"):
        load_train_config(f)
    f.write_text("[model]\ntiny = true\n[data]\nlatents_file = 'a.safetensors'\n[data.synthetic]\n")
    with pytest.raises(UserError, match="exactly one of"):
        load_train_config(f)


def test_overrides_apply(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[model]\ntiny = true\n[data.synthetic]\n")
    cfg = load_train_config(f, ["optimizer.lr=5e-5", "experts.train=high"])
    assert cfg.optimizer.lr == 5e-5 and cfg.experts.train == "high"


def test_i2v_preview_without_image_rejected_at_load(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a fox runs --w 64 --h 64\n")
    f = tmp_path / "c.toml"
    f.write_text(f"[model]\nvariant = 'wan2.2-i2v-a14b'\ntiny = true\n[data.synthetic]\n"
                 f"[previews]\nevery_steps = 10\nprompts_file = '{prompts}'\n")
    with pytest.raises(UserError, match="prompt 1 has no image"):
        load_train_config(f)
    (tmp_path / "fox.png").write_bytes(b"")
    prompts.write_text("a fox runs --i fox.png\n")
    assert load_train_config(f).previews.every_steps == 10


def test_cli_check_prints_resolved_config_and_bad_key_exits_2(tmp_path, capsys):
    f = tmp_path / "c.toml"
    f.write_text("preset = 'motion'\n[model]\ntiny = true\n[data.synthetic]\n")
    assert cli_main(["train", str(f), "--check"]) == 0
    assert "rank = 16" in capsys.readouterr().out
    f.write_text("[model]\ntiny = true\nrnak = 3\n")
    assert cli_main(["train", str(f)]) == 2
    assert "unknown key 'model.rnak'" in capsys.readouterr().err


def test_recommendations_follow_the_guides_tables():
    assert recommend(150).rank in range(32, 49) and recommend(150).epochs in range(15, 21)
    assert recommend(300).rank in range(48, 65) and recommend(300).epochs in range(12, 19)
    assert recommend(600).rank in range(64, 97) and recommend(600).epochs in range(10, 16)
    assert recommend(1000).rank in range(96, 129) and recommend(1000).epochs in range(8, 13)
    small = recommend(20)
    assert small.rank == 16 and small.epochs == 100 and small.alpha == small.rank


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    f = tmp_path / "sub" / "c.toml"
    f.parent.mkdir()
    f.write_text("[model]\ntiny = true\n[data]\ndataset_config = 'data.toml'\n[saving]\noutput_dir = 'runs'\n")
    cfg = load_train_config(f)
    assert cfg.data.dataset_config == f.parent / "data.toml" and cfg.data.cache_dir == f.parent / "cache"
    assert cfg.saving.output_dir == f.parent / "runs"
