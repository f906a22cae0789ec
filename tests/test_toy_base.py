"""Toy base-model parts: the shipped sentencepiece tokenizer and the tiny UMT5 / Wan VAE / Wan transformer
shells, loaded back through wantune's own loaders and checked against transformers / diffusers."""

from __future__ import annotations

import pytest
import torch

from wantune.toy.base import (TOKENIZER_DIR, build_base, build_text_encoder, build_transformer, build_vae,
                              caption_corpus, toy_variant, train_tokenizer)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return build_base(tmp_path_factory.mktemp("toy_base"), seed=3)


def test_shipped_tokenizer_is_reproduced(tmp_path):
    out = train_tokenizer(tmp_path / "tok")
    assert (out / "spiece.model").read_bytes() == (TOKENIZER_DIR / "spiece.model").read_bytes()
    assert (out / "tokenizer_config.json").read_text() == (TOKENIZER_DIR / "tokenizer_config.json").read_text()


def test_tokenizer_is_a_t5_sentencepiece_tokenizer():
    import sentencepiece as spm
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    sp = spm.SentencePieceProcessor(model_file=str(TOKENIZER_DIR / "spiece.model"))
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    lines = caption_corpus(per_concept=50, seed=9) + ["a teal blorp skating upward", "QUIZ 42 #ff00aa"]
    assert all(tok(s).input_ids == sp.encode(s) + [1] for s in lines)
    assert 2 not in tok("a magenta blorp zigzagging").input_ids  # new words split into known pieces


def test_parts_load_through_wantune_loaders(base_dir):
    from wantune.models.checkpoint import load_transformer
    from wantune.models.text_encoder import load_text_encoder, pad_context
    from wantune.models.vae import load_vae

    encoder = load_text_encoder(base_dir / "text_encoder.safetensors", base_dir / "tokenizer", dtype=torch.float32)
    vae = load_vae(base_dir / "vae.safetensors", dtype=torch.float32)
    model = load_transformer(base_dir / "transformer.safetensors", variant=toy_variant(), dtype=torch.float32)
    prompt = "a red circle moving left on a black background"
    context = encoder.encode([prompt])
    ids = encoder.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():  # oracle: the same-seed transformers model on the same ids
        expected = build_text_encoder(len(encoder.tokenizer), seed=3)(input_ids=ids).last_hidden_state[0]
    assert torch.allclose(context[0], expected, atol=1e-5)
    torch.manual_seed(0)
    video = torch.rand(1, 3, 17, 64, 64) * 2 - 1
    latents = vae.encode(video)
    assert latents.shape == (1, 16, 5, 8, 8) and vae.version == "2.1"
    with torch.no_grad():  # oracle: diffusers' own encoder mean, normalised with the official stats
        reference = build_vae(seed=3)
        mean = torch.tensor(reference.config.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(reference.config.latents_std).view(1, -1, 1, 1, 1)
        mu = reference.encode(video).latent_dist.mean
    assert torch.allclose(latents, (mu - mean) / std, atol=1e-4)
    with torch.no_grad():
        out = model(latents, torch.tensor([500.0]), pad_context(context, model.variant.text_len))
    assert out.shape == latents.shape
    fresh = build_transformer(seed=3).state_dict()
    assert all(torch.equal(v, fresh[k]) for k, v in model.state_dict().items())


def test_toy_sizes_stay_small(base_dir):
    from wantune.toy.base import BASE_DIR

    shipped = sum(p.stat().st_size for p in BASE_DIR.rglob("*") if p.is_file())
    assert shipped < 25e6  # the budget for the weights in the repository
    variant = toy_variant()
    assert variant.height == variant.width == 64 and variant.frames == 17 and variant.text_len == 32
    from wantune.models.detect import infer_variant
    from wantune.models.checkpoint import read_state_dict

    assert infer_variant(read_state_dict(base_dir / "transformer.safetensors")) == ["toy-t2v"]


def test_pretrain_recipe_runs_wantune_cache_and_train(tmp_path):
    """The toy pre-training recipe end to end at smoke size: render, cache, full fine-tuning, base updated;
    `--focus shape=cross:2` adds two cross clips as a second dataset."""
    import json

    from wantune.models.checkpoint import load_transformer
    from wantune.toy.pretrain import pretrain

    base = pretrain(tmp_path, clips=4, seed=1, device="cpu", focus=["shape=cross:2"],
                    overrides=["training.steps=2", "training.batch_size=2", "logging.progress_bar=false",
                               "logging.tensorboard=false"])
    model = load_transformer(base / "transformer.safetensors", variant=toy_variant(), dtype=torch.float32)
    assert model.head.head.weight.abs().sum() > 0  # the shell's head is zero; training moved it
    rows = [json.loads(line) for line in (tmp_path / "runs" / "toy_base" / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in rows)
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) >= 6
    truths = [json.loads(p.read_text()) for p in (tmp_path / "data_shape_cross" / "truth").glob("base_*.json")]
    assert [t["shape"] for t in truths] == ["cross", "cross"]
    assert (tmp_path / "dataset.toml").read_text().count("[[datasets]]") == 2


def test_pretrain_focus_rejects_unknown_option():
    from wantune.errors import UserError
    from wantune.toy.pretrain import focus_spec, parse_focus

    with pytest.raises(UserError, match="not a base-world shape"):
        focus_spec(*parse_focus("shape=star:5:10")[:2])
    with pytest.raises(UserError, match="ATTRIBUTE=VALUE:CLIPS"):
        parse_focus("size=9:10")


def test_fold_latent_stats_normalises_latents_and_keeps_reconstructions():
    """Folding the measured latent statistics into quant_conv / post_quant_conv: the official-statistics
    latents of the clips become zero-mean unit-variance per channel and decoding is unchanged."""
    from wantune.toy.train_vae import decode_unclamped, fold_latent_stats

    vae = build_vae(seed=5).float().eval()
    torch.manual_seed(0)
    video = torch.rand(4, 3, 5, 32, 32) * 2 - 1
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        before = decode_unclamped(vae, vae.encode(video).latent_dist.mean)
        z_before = (vae.encode(video).latent_dist.mean - mean) / std
        fold_latent_stats(vae, video)
        mu = vae.encode(video).latent_dist.mean
        after = decode_unclamped(vae, mu)
    z = ((mu - mean) / std).transpose(0, 1).reshape(16, -1)
    assert z_before.transpose(0, 1).reshape(16, -1).std(1).sub(1).abs().max() > 0.2  # not normalised before
    torch.testing.assert_close(z.mean(1), torch.zeros(16), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std(1), torch.ones(16), atol=1e-4, rtol=0)
    torch.testing.assert_close(after, before, atol=2e-4, rtol=1e-4)


def test_decoder_only_vae_training_keeps_the_latent_space(tmp_path):
    """`train_vae --decoder-only --init FILE`: the encoder (and so every cached latent) is unchanged, the decoder
    moved; without --init it is a one-line error."""
    from wantune.errors import UserError
    from wantune.models.vae import load_vae
    from wantune.toy.base import save_parts
    from wantune.toy.train_vae import VaeTrainConfig, train

    save_parts(tmp_path / "init", vae=build_vae(seed=2, base_dim=4).float())
    init = tmp_path / "init" / "vae.safetensors"
    train(VaeTrainConfig(out=tmp_path / "dec", steps=3, batch_size=1, pool=2, eval_clips=1, device="cpu",
                         train_frames=5, short_fraction=0.0, init=init, decoder_only=True, lr=1e-3))
    before, after = load_vae(init).model.eval(), load_vae(tmp_path / "dec" / "vae.safetensors").model.eval()
    video = torch.rand(1, 3, 5, 64, 64) * 2 - 1
    with torch.no_grad():
        mu_before, mu_after = before.encode(video).latent_dist.mean, after.encode(video).latent_dist.mean
    torch.testing.assert_close(mu_after, mu_before, atol=0, rtol=0)
    moved = [k for k, v in after.state_dict().items() if not torch.equal(v, before.state_dict()[k])]
    assert moved and all(k.startswith(("decoder.", "post_quant_conv.")) for k in moved)
    with pytest.raises(UserError, match="--decoder-only: needs --init"):
        train(VaeTrainConfig(out=tmp_path / "bad", steps=1, pool=1, device="cpu", decoder_only=True))
