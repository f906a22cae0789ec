"""Preview videos during training, from a prompts file (`wantune generate --prompts` syntax).

`check_prompts` runs when the config loads, so an I2V preview without an image fails before training,
not hours into it. `render_previews` samples with the models being trained (A14B: both experts routed
by timestep, the one not trained still takes its range) and writes mp4 files into the run folder.
"""

from __future__ import annotations

from pathlib import Path

from wantune.errors import UserError
from wantune.models.variants import WanVariant
from wantune.train.config import PreviewConfig


def check_prompts(cfg: PreviewConfig, variant: WanVariant) -> list:
    """Parse the previews' prompt file; image-conditioned variants need `--i IMAGE` on every prompt."""
    from wantune.sample.prompts import read_prompt_file

    if cfg.prompts_file is None:
        raise UserError("previews.prompts_file: set a prompt file when previews.every_steps > 0")
    specs = read_prompt_file(cfg.prompts_file)
    for number, spec in enumerate(specs, start=1):
        if variant.needs_image and not spec.image:
            raise UserError(f"{cfg.prompts_file}: prompt {number} has no image; {variant.name} previews need "
                            "`--i IMAGE` on every prompt")
        for image in (spec.image, spec.last_image):
            if image and not (Path(cfg.prompts_file).parent / image).is_file() and not Path(image).is_file():
                raise UserError(f"{cfg.prompts_file}: prompt {number}: image {image} not found")
    return specs


def render_previews(models: dict, cfg, variant: WanVariant, step: int, run_dir: Path, device) -> list[Path]:
    """Sample every preview prompt with the current weights; returns the written video files."""
    import torch

    from wantune.models.text_encoder import load_text_encoder, pad_context
    from wantune.models.vae import load_vae
    from wantune.data.video import write_video
    from wantune.sample.experts import ExpertPair
    from wantune.sample.sampler import latent_shape, make_noise, sample_video
    from wantune.sample.schedulers import make_scheduler

    if cfg.model.vae is None or cfg.model.text_encoder is None:
        raise UserError("previews: set model.vae and model.text_encoder (and model.tokenizer) to render previews")
    pcfg = cfg.previews
    specs = check_prompts(pcfg, variant)
    encoder = load_text_encoder(cfg.model.text_encoder, cfg.model.tokenizer, dtype=torch.bfloat16, device=device)
    vae = load_vae(cfg.model.vae, dtype=torch.float32, device=device)
    model = ExpertPair(models["high"], models["low"], variant.boundary) if "low" in models and "high" in models \
        else next(iter(models.values()))
    written = []
    for number, spec in enumerate(specs):
        spec = spec.with_defaults(width=pcfg.width, height=pcfg.height, frames=pcfg.frames, seed=pcfg.seed,
                                  steps=pcfg.steps, guidance=pcfg.guidance, shift=variant.shift,
                                  negative_prompt=variant.negative_prompt)
        ctx, neg = (pad_context(encoder.encode([p]), variant.text_len).to(device)
                    for p in (spec.prompt, spec.negative_prompt))
        noise = make_noise(latent_shape(variant, spec.frames, spec.height, spec.width), spec.seed).to(device)
        latents = sample_video(model, noise, ctx, neg, spec.guidance, make_scheduler("unipc", spec.shift),
                               spec.steps, progress=False)
        video = vae.decode(latents)[0]
        frames = ((video.permute(1, 2, 3, 0).clamp(-1, 1) + 1) * 127.5).round().byte().cpu().numpy()
        path = run_dir / "previews" / f"step_{step:06d}_{number}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video(path, frames, variant.fps, {"comment": spec.prompt})
        written.append(path)
    return written
