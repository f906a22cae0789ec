"""The UMT5-XXL text encoder through transformers' `UMT5EncoderModel`, used as the official Wan code does.

Prompts are cleaned (ftfy when installed, HTML unescape, whitespace), tokenised with padding and truncation
to `text_len` (512) with the eos token, encoded with the attention mask, and each output is trimmed to its
true length. `pad_context` zero-pads a list of trimmed embeddings back to `text_len` for the transformer.

Shapes: B batch, L tokens (text_len when padded, L_i the true length of prompt i), D model width (4096).
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import torch

from wantune.models.wrapper import FrozenModule
from wantune.errors import UserError
from wantune.models import umt5_convert
from wantune.models.formats import component_location, file_identity, read_component_weights

TEXT_LEN = 512
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
TOKENIZER_SUBFOLDERS = ("tokenizer", "google/umt5-xxl")


def clean_prompt(text: str) -> str:
    """The official 'whitespace' cleaning: ftfy (if installed), double HTML unescape, collapse whitespace."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class TextEncoder(FrozenModule):
    """A loaded UMT5 encoder plus its tokenizer; `encode` gives trimmed per-prompt embeddings."""

    def __init__(self, model, tokenizer, identity: str, text_len: int = TEXT_LEN):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.identity = identity
        self.text_len = text_len

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids_BL, mask_BL) padded to text_len, truncated, with eos; prompts cleaned first."""
        batch = self.tokenizer([clean_prompt(p) for p in prompts], padding="max_length", truncation=True,
                               max_length=self.text_len, add_special_tokens=True, return_attention_mask=True,
                               return_tensors="pt")
        return batch["input_ids"], batch["attention_mask"]

    @torch.no_grad()
    def encode(self, prompts: list[str] | str, batch_size: int = 8) -> list[torch.Tensor]:
        """Each prompt -> its embedding (L_i, D) in the model's dtype, trimmed to its true token count."""
        if isinstance(prompts, str):
            prompts = [prompts]
        out: list[torch.Tensor] = []
        for start in range(0, len(prompts), batch_size):
            ids_BL, mask_BL = self.tokenize(prompts[start : start + batch_size])
            hidden_BLD = self.model(input_ids=ids_BL.to(self.device),
                                    attention_mask=mask_BL.to(self.device)).last_hidden_state
            lengths = mask_BL.sum(dim=1).tolist()
            out.extend(h[:n] for h, n in zip(hidden_BLD, lengths))
        return out


def pad_context(contexts: list[torch.Tensor], text_len: int = TEXT_LEN) -> torch.Tensor:
    """Zero-pad trimmed embeddings [(L_i, D)] to (B, text_len, D) (longer ones are cut to text_len)."""
    if not contexts:
        raise ValueError("pad_context needs at least one embedding")
    dim = contexts[0].shape[-1]
    out_BLD = contexts[0].new_zeros(len(contexts), text_len, dim)
    for i, ctx_LD in enumerate(contexts):
        n = min(ctx_LD.shape[0], text_len)
        out_BLD[i, :n] = ctx_LD[:n]
    return out_BLD


def load_tokenizer(tokenizer_dir):
    """A local tokenizer folder (google/umt5-xxl layout: spiece.model + tokenizer_config.json)."""
    from transformers import AutoTokenizer

    folder = Path(tokenizer_dir) if tokenizer_dir is not None else None
    if folder is None or not folder.is_dir():
        raise UserError(f"{tokenizer_dir}: no such tokenizer folder; pass --tokenizer DIR holding the "
                        f"google/umt5-xxl tokenizer (spiece.model, tokenizer_config.json)")
    for sub in TOKENIZER_SUBFOLDERS:  # a diffusers pipeline or official Wan folder
        if not (folder / "tokenizer_config.json").exists() and (folder / sub).is_dir():
            folder = folder / sub
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{folder}: cannot load a tokenizer from this folder ({first})") from None


def read_text_encoder_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """HF-named UMT5 encoder weights from an official .pth, HF/ComfyUI safetensors or an HF folder."""
    sd = read_component_weights(path, "text encoder")
    if umt5_convert.is_official_t5(sd):
        return umt5_convert.official_to_hf(sd, str(path))
    return umt5_convert.normalise_hf(sd, str(path))


def load_text_encoder(path, tokenizer_dir, dtype: torch.dtype = torch.bfloat16, device="cpu") -> TextEncoder:
    """Load the UMT5 encoder (official .pth, HF/ComfyUI safetensors) and the tokenizer from local paths."""
    from transformers import UMT5Config, UMT5EncoderModel

    path = component_location(Path(path), "text_encoder", (T5_FILE,))
    tokenizer = load_tokenizer(tokenizer_dir)
    sd = read_text_encoder_state_dict(path)
    config = UMT5Config(**umt5_convert.umt5_config_kwargs(sd))
    if len(tokenizer) > config.vocab_size:
        raise UserError(f"{tokenizer_dir}: tokenizer has {len(tokenizer)} tokens but {path} embeds only "
                        f"{config.vocab_size}; pass the tokenizer that belongs to this encoder")
    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    sd = {k: v.to(dtype) for k, v in sd.items()}
    sd["encoder.embed_tokens.weight"] = sd["shared.weight"]
    try:
        model.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"{path}: weights do not fit a UMT5 encoder ({first})") from None
    model.encoder.embed_tokens = model.shared
    model.to(device)
    identity = f"{file_identity(path)}:{file_identity(Path(tokenizer_dir))}:{str(dtype).removeprefix('torch.')}"
    return TextEncoder(model, tokenizer, identity)
