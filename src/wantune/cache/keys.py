"""Cache keys: a cached tensor is found by the identity of what made it, never by position.

A latent key hashes the sample id (source bytes identity, frame window, bucket, control), the flip
applied, the conditioning kind, and the encoder identity and dtype. A text key hashes the caption text
and the text encoder identity and dtype. A mask key hashes the sample id, the mask file's identity, the flip
and the VAE stride (no encoder runs), so adding or editing masks never re-encodes latents. Change any of them
and the key changes, so a stale or mismatched cache entry can never be read.
"""

from __future__ import annotations

import hashlib
import json


def _digest(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def latent_key(sample_id: str, flip: tuple[bool, bool], cond_kind: str, vae_identity: str,
               clip_identity: str = "") -> str:
    """Key of a sample's latents (+ conditioning) as encoded by a given VAE (and CLIP)."""
    return _digest({"sample": sample_id, "flip": [bool(flip[0]), bool(flip[1])], "cond": cond_kind,
                    "vae": vae_identity, "clip": clip_identity})


def mask_key(sample_id: str, mask_id: str, flip: tuple[bool, bool], stride: tuple[int, int, int]) -> str:
    """Key of a sample's loss mask pooled onto the latent grid of a VAE with `stride`."""
    return _digest({"sample": sample_id, "mask": mask_id, "flip": [bool(flip[0]), bool(flip[1])],
                    "stride": list(stride)})


def text_key(caption: str, text_identity: str) -> str:
    """Key of a caption's embedding as encoded by a given text encoder."""
    return _digest({"caption": caption, "text_encoder": text_identity})


def flips_of(sample) -> list[tuple[bool, bool]]:
    """The flip variants cached for a sample: always the original, plus the mirrored ones it allows."""
    variants = [(False, False)]
    if sample.flip_x:
        variants.append((True, False))
    if sample.flip_y:
        variants.append((False, True))
    return variants


def cond_kind(model_type: str, control_frames: tuple[int, ...]) -> str:
    """What conditioning a sample's cache entry carries: 'none', or 'image:<frame positions>'."""
    if model_type not in ("i2v", "flf2v") or not control_frames:
        return "none"
    return "image:" + ",".join(map(str, control_frames))
