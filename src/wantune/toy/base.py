"""The toy base model's parts: a real sentencepiece tokenizer for the world's vocabulary, a tiny UMT5
encoder, a tiny Wan 2.1 VAE and a small Wan 2.1 T2V transformer, all in the layouts wantune's loaders read.

`build_base(out_dir)` writes freshly initialised parts (the shells that `train_vae.py` and the pre-training
recipe fill in):

    out_dir/tokenizer/{spiece.model, tokenizer_config.json}   AutoTokenizer (T5Tokenizer): pad 0, eos 1, unk 2
    out_dir/text_encoder.safetensors                          HF UMT5 encoder names (load_text_encoder)
    out_dir/vae.safetensors                                   diffusers AutoencoderKLWan names (load_vae)
    out_dir/transformer.safetensors                           official Wan names (load_transformer)
    out_dir/toy.json                                          sizes, seeds and the transformer variant overrides
"""

from __future__ import annotations

import json
from pathlib import Path

from wantune.toy.spec import NAMED_COLORS, POLYGON_WORDS, load_concept

BASE_DIR = Path(__file__).resolve().parent / "assets" / "base"
"""The shipped toy base model: tokenizer/, text_encoder, vae and transformer .safetensors (docs/toy.md says how
they were made and the command that reproduces them)."""
TOKENIZER_DIR = BASE_DIR / "tokenizer"
"""The shipped toy tokenizer (reproduced by `train_tokenizer`)."""

TOY_VARIANT = "toy-t2v"
"""The toy transformer: a real wantune variant (`wantune.models.variants`, official Wan 2.1 names at toy sizes:
dim 256, 6 layers, 32-token text of width 32; 64x64, 17 frames at 16 fps), so configs name it like any model."""
TOY_TEXT_ENCODER = dict(d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
                        relative_attention_num_buckets=32)
"""UMT5 sizes of the toy text encoder (the fixtures' tiny UMT5; its width is the transformer's text_dim)."""
TOY_VAE = dict(base_dim=16, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
               temperal_downsample=[False, True, True], dropout=0.0)
"""AutoencoderKLWan sizes of the toy VAE (Wan 2.1 layout: 8x spatial, 4x temporal, 16 latent channels; 3.6M
parameters). The fixtures' base_dim 8 could not rebuild the 9-13 px object (docs/toy.md)."""
TOKENIZER_CONFIG = {"tokenizer_class": "T5Tokenizer", "extra_ids": 0, "eos_token": "</s>", "unk_token": "<unk>",
                    "pad_token": "<pad>", "model_max_length": 512}
VOCAB_SIZE = 320
TOKENIZER_CONCEPTS = ("base", "character", "motion", "style", "wide")
"""The built-in concepts whose captions train the tokenizer."""


def toy_variant():
    """The toy transformer's WanVariant."""
    from wantune.models.variants import get_variant

    return get_variant(TOY_VARIANT)


def folder_variant(base: str | Path) -> str:
    """The transformer variant of a toy base folder: its toy.json's, else the shipped toy variant."""
    info = Path(base) / "toy.json"
    return json.loads(info.read_text()).get("variant", TOY_VARIANT) if info.is_file() else TOY_VARIANT


def caption_corpus(per_concept: int = 400, seed: int = 0) -> list[str]:
    """Captions of the built-in concepts plus every default word, for training the tokenizer."""
    from wantune.toy.spec import _background_words, _motion_words, parse_background, parse_motion
    from wantune.toy.world import sample_instance

    lines = []
    for name in TOKENIZER_CONCEPTS:
        spec = load_concept(name)
        lines += [sample_instance(spec, seed, i).caption for i in range(per_concept)]
    words = [*NAMED_COLORS, *POLYGON_WORDS.values(), "circle", "square", "triangle", "diamond", "cross", "star",
             "oval", "rectangle", "pointed", "sided", "polygon"]
    motions = ["still", "linear:1,0", "linear:-1,0", "linear:0,1", "linear:0,-1", "linear:1,1", "linear:-1,1",
               "orbit:5,1", "orbit:5,-1", "zoom:1.1", "zoom:0.9", "rotate:3"]
    lines += [" ".join(words), " ".join(_motion_words(parse_motion(m)) for m in motions)]
    for a, b in zip(NAMED_COLORS, list(NAMED_COLORS)[1:]):
        hexes = [f"#{''.join(f'{c:02x}' for c in NAMED_COLORS[n])}" for n in (a, b)]
        for kind in ("solid:{0}", "stripes:{0},{1},4", "checker:{0},{1},4", "gradient:{0},{1}"):
            lines.append(f"a {a} circle on " + _background_words(parse_background(kind.format(*hexes))))
    lines.append("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?'\"()-_/#%&+=*")
    return lines


def train_tokenizer(out_dir: str | Path, vocab_size: int = VOCAB_SIZE, seed: int = 0) -> Path:
    """Train the toy sentencepiece tokenizer on `caption_corpus` into out_dir (spiece.model + config)."""
    import io

    import sentencepiece as spm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(caption_corpus(seed=seed)), model_writer=model, vocab_size=vocab_size,
        model_type="unigram", character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>", hard_vocab_limit=False,
        num_threads=1, minloglevel=2)
    (out / "spiece.model").write_bytes(model.getvalue())
    (out / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG) + "\n")
    return out


def build_text_encoder(vocab_size: int, seed: int = 0):
    """A freshly initialised tiny UMT5EncoderModel (transformers) for a tokenizer of `vocab_size` pieces."""
    import torch
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    config = UMT5Config(vocab_size=vocab_size, feed_forward_proj="gated-gelu", dropout_rate=0.0,
                        is_encoder_decoder=False, use_cache=False, **TOY_TEXT_ENCODER)
    return UMT5EncoderModel(config).eval()


def build_vae(seed: int = 0, **sizes):
    """A freshly initialised tiny Wan 2.1 VAE (diffusers AutoencoderKLWan) with the official latent stats;
    `sizes` override TOY_VAE (base_dim, dim_mult, ...)."""
    import torch
    from diffusers import AutoencoderKLWan

    from wantune.models.vae import WAN21_MEAN, WAN21_STD

    torch.manual_seed(seed)
    return AutoencoderKLWan(**{**TOY_VAE, **sizes}, latents_mean=WAN21_MEAN, latents_std=WAN21_STD).eval()


def build_transformer(seed: int = 0, variant: str = TOY_VARIANT):
    """A freshly initialised toy WanModel (float32) of `variant`."""
    import torch

    from wantune.models.transformer import WanModel
    from wantune.models.variants import get_variant

    torch.manual_seed(seed)
    model = WanModel(get_variant(variant))
    _init_weights(model)
    return model.eval()


def _init_weights(model) -> None:
    """Xavier-uniform linears and zero biases, as the official Wan init does; zero output head."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
    torch.nn.init.zeros_(model.head.head.weight)
    torch.nn.init.zeros_(model.head.head.bias)


def save_parts(out_dir: str | Path, text_encoder=None, vae=None, transformer=None) -> list[Path]:
    """Write whichever parts are given as safetensors (float32) in the layouts wantune loads."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if text_encoder is not None:
        sd = {k: v.contiguous() for k, v in text_encoder.state_dict().items() if k != "encoder.embed_tokens.weight"}
        save_file(sd, str(out / "text_encoder.safetensors"))
        written.append(out / "text_encoder.safetensors")
    if vae is not None:
        save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(out / "vae.safetensors"))
        written.append(out / "vae.safetensors")
    if transformer is not None:
        save_file({k: v.contiguous() for k, v in transformer.state_dict().items()},
                  str(out / "transformer.safetensors"))
        written.append(out / "transformer.safetensors")
    return written


def build_base(out_dir: str | Path, seed: int = 0, tokenizer_dir: str | Path | None = None) -> Path:
    """Write a freshly initialised toy base model (tokenizer, text encoder, VAE, transformer) to out_dir."""
    from wantune.models.text_encoder import load_tokenizer

    out = Path(out_dir)
    token_dir = out / "tokenizer"
    source = Path(tokenizer_dir) if tokenizer_dir else TOKENIZER_DIR
    if (source / "spiece.model").is_file():
        token_dir.mkdir(parents=True, exist_ok=True)
        for name in ("spiece.model", "tokenizer_config.json"):
            (token_dir / name).write_bytes((source / name).read_bytes())
    else:
        train_tokenizer(token_dir, seed=seed)
    vocab = len(load_tokenizer(token_dir))
    save_parts(out, build_text_encoder(vocab, seed), build_vae(seed), build_transformer(seed))
    (out / "toy.json").write_text(json.dumps({
        "variant": TOY_VARIANT, "text_encoder": TOY_TEXT_ENCODER,
        "vae": TOY_VAE, "vocab_size": vocab, "seed": seed}, indent=1) + "\n")
    return out
