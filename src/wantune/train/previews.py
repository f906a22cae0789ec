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
            if image and not Path(_image_path(image, cfg)).is_file():
                raise UserError(f"{cfg.prompts_file}: prompt {number}: image {image} not found")
    return specs


def render_previews(models: dict, cfg, variant: WanVariant, step: int, run_dir: Path, device,
                    frozen: dict | None = None) -> list[Path]:
    """Sample every preview prompt with the current weights (sampler of `wantune generate`); returns the files.

    `frozen` caches an A14B expert that is not trained but needed for previews (loaded once per run).
    """
    import dataclasses

    from wantune.sample.pipeline import ModelSpec, RunSettings, denoise, encode_prompts, load_image_models, \
        resolve_request, write_output

    mcfg, pcfg = cfg.model, cfg.previews
    if mcfg.vae is None or mcfg.text_encoder is None or mcfg.tokenizer is None:
        raise UserError("previews: set model.vae, model.text_encoder and model.tokenizer to render previews")
    spec = ModelSpec(model=str(mcfg.checkpoint or "<training>"), vae=str(mcfg.vae), text_encoder=str(mcfg.text_encoder),
                     tokenizer=str(mcfg.tokenizer), clip=None if mcfg.clip is None else str(mcfg.clip),
                     variant=variant.name)
    settings = RunSettings(progress=False)
    requests = [resolve_request(s.with_defaults(width=pcfg.width, height=pcfg.height, frames=pcfg.frames,
                                                seed=pcfg.seed, steps=pcfg.steps, guidance=pcfg.guidance), variant)
                for s in check_prompts(pcfg, variant)]
    requests = [dataclasses.replace(r, image=_image_path(r.image, pcfg), last_image=_image_path(r.last_image, pcfg))
                for r in requests]
    contexts = encode_prompts(spec, variant, requests, device)
    vae, clip = load_image_models(spec, variant, device)
    denoiser = _denoiser(models, cfg, variant, device, {} if frozen is None else frozen)
    modes = {name: m.training for name, m in models.items()}
    written = []
    try:
        for m in models.values():
            m.eval()
        for number, (request, (context, negative)) in enumerate(zip(requests, contexts)):
            latents = denoise(denoiser, variant, request, context, negative, vae, clip, settings, device)
            path = run_dir / "previews" / f"step_{step:06d}_{number}.mp4"
            path.parent.mkdir(parents=True, exist_ok=True)
            written.append(write_output(path, vae.decode(latents.to(device)), variant, request, spec, settings))
    finally:
        for name, m in models.items():
            m.train(modes[name])
    return written


def _image_path(image: str | None, pcfg: PreviewConfig) -> str | None:
    if image is None or Path(image).is_absolute() or Path(image).is_file():
        return image
    return str(Path(pcfg.prompts_file).parent / image)


def _denoiser(models: dict, cfg, variant: WanVariant, device, frozen: dict):
    """The model, or the A14B pair (an expert not being trained is loaded frozen, so previews use both)."""
    if not variant.is_expert_pair:
        return next(iter(models.values()))
    import dataclasses

    from wantune.sample.experts import ExpertPair
    from wantune.train.experts import build_models

    pair = dict(models)
    for name in ("high", "low"):
        if name not in pair:
            if name not in frozen:
                other = dataclasses.replace(cfg, experts=dataclasses.replace(cfg.experts, train=name))
                frozen[name] = build_models(other, variant)[name].to(device).eval().requires_grad_(False)
            pair[name] = frozen[name]
    return ExpertPair(pair["high"], pair["low"], variant.boundary)
