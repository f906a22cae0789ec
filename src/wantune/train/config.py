"""The training config tree: one dataclass per TOML table (`wantune train CONFIG.toml`).

The model spec (what) lives in `[model]`; everything else is run settings (how). `load_train_config`
reads a TOML file, lays a preset (`preset = "character"`) under it, applies `--set` overrides and
validates cross-field rules, so that a bad run fails before any weight is loaded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from wantune import config as typed
from wantune.errors import UserError, require
from wantune.train.perf_config import PerformanceConfig


@dataclass
class ModelConfig:
    """Which Wan model to train and where its weights are."""

    variant: str = "wan2.1-t2v-1.3b"
    """A name from `wantune.models.variants.VARIANTS`."""
    checkpoint: Path | None = None
    """Transformer weights: a file or folder (A14B: the folder holding high_noise_model/ and low_noise_model/)."""
    checkpoint_high: Path | None = None
    """A14B: the high-noise expert's weights, when not found under `checkpoint`."""
    checkpoint_low: Path | None = None
    """A14B: the low-noise expert's weights, when not found under `checkpoint`."""
    dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    """Storage dtype of the frozen base weights."""
    tiny: bool = False
    """Test/demo only: the variant at the fixtures' tiny sizes; random weights unless a checkpoint is given."""
    vae: Path | None = None
    """VAE weights (previews only)."""
    text_encoder: Path | None = None
    """UMT5 encoder weights (previews, and DOP when the data carries no class-prompt embeddings)."""
    tokenizer: Path | None = None
    """Tokenizer folder for the text encoder."""
    clip: Path | None = None
    """CLIP vision weights (Wan 2.1 I2V/FLF2V caching only)."""


@dataclass
class SyntheticData:
    """A learnable in-memory toy dataset (tests and demos, not real training)."""

    samples: int = 8
    """Number of training samples (half per prompt)."""
    frames: int = 1
    """Latent frames per sample."""
    height: int = 4
    """Latent height."""
    width: int = 4
    """Latent width."""
    text_tokens: int = 3
    """Tokens per text embedding."""
    noise: float = 0.05
    """Per-sample noise around the two prompt-dependent patterns."""
    seed: int = 0
    """Seed of the generated data."""


@dataclass
class DataConfig:
    """Where training samples come from: exactly one of the three sources."""

    dataset_config: Path | None = None
    """A wantune dataset TOML whose latents and text embeddings are cached (`wantune cache`)."""
    cache_dir: Path | None = None
    """Where `wantune cache` wrote the cache (default: `cache/` beside the training config)."""
    latents_file: Path | None = None
    """A safetensors file of precomputed samples (`latents.N`, `context.N`, optional `cond.N`, `clip.N`)."""
    synthetic: SyntheticData | None = None
    """A generated toy dataset (tests, demos, smoke runs)."""
    shuffle: bool = True
    """Shuffle sample order each epoch (seeded, so resume is exact)."""
    cache_in_memory: bool = False
    """Keep every cached tensor in RAM after its first read (small latents: the per-file read, not the GPU, is
    what bounds a step); the cache files are read once per run instead of once per epoch."""
    caption_dropout: float = 0.0
    """Probability of training a sample with an empty prompt (5-10% when captions are encoded live)."""
    regularisation_file: Path | None = None
    """Optional regularisation samples (same format as latents_file), mixed in at `regularisation_weight`."""
    regularisation_weight: float = 1.0
    """Loss weight of regularisation samples."""

    def validate(self) -> None:
        sources = [s for s in (self.dataset_config, self.latents_file, self.synthetic) if s is not None]
        require(len(sources) == 1, "data: set exactly one of data.dataset_config, data.latents_file, "
                                   "data.synthetic")
        require(0.0 <= self.caption_dropout < 1.0, "data.caption_dropout: must be in [0, 1)")


@dataclass
class NetworkConfig:
    """What is trained: a LoRA on the transformer's linear layers, or the whole transformer."""

    type: Literal["lora", "full"] = "lora"
    """`lora` or `full` fine-tuning."""
    rank: int = 16
    """LoRA rank."""
    alpha: float = 16.0
    """LoRA alpha (scale alpha/rank)."""
    dropout: float = 0.0
    """Dropout on the LoRA input."""
    include: list[str] | None = None
    """Regexes of module paths to wrap (default: attention q/k/v/o and ffn of every block)."""
    exclude: list[str] | None = None
    """Regexes of module paths never to wrap."""
    loraplus_lr_ratio: float = 1.0
    """LoRA+: learning rate of the B matrices is lr times this (1 = off; 4-16 typical)."""

    def validate(self) -> None:
        require(self.rank > 0, "network.rank: must be positive")
        require(self.loraplus_lr_ratio > 0, "network.loraplus_lr_ratio: must be positive (1 = off)")


@dataclass
class OptimizerConfig:
    """The optimiser."""

    name: Literal["adamw", "adamw8bit", "adafactor", "prodigy"] = "adamw"
    """adamw (torch), adamw8bit (bitsandbytes, GPU), adafactor (transformers), prodigy (prodigyopt)."""
    lr: float = 1e-4
    """Peak learning rate (prodigy: 1.0)."""
    weight_decay: float = 1e-4
    """Decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    eps: float = 1e-8
    """Adam epsilon."""

    def validate(self) -> None:
        require(self.lr > 0, f"optimizer.lr {self.lr}: must be > 0")


@dataclass
class ScheduleConfig:
    """How the learning rate moves over the run."""

    name: Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                  "polynomial"] = "constant"
    """Scheduler shape after warmup."""
    warmup_steps: int = 0
    """Linear warmup steps (wins over warmup_ratio when > 0)."""
    warmup_ratio: float = 0.0
    """Warmup as a fraction of the total steps (5-10% is usual)."""
    num_cycles: int = 1
    """cosine_with_restarts: number of hard restarts."""
    power: float = 1.0
    """polynomial: decay power."""
    min_lr_ratio: float = 0.0
    """Floor of the decay as a fraction of the peak lr."""


@dataclass
class TimestepConfig:
    """How σ (the noise level) is drawn for each training sample."""

    sampling: Literal["uniform", "sigmoid", "shift", "logit_normal"] = "shift"
    """uniform; sigmoid = sigmoid(scale·N(0,1)); shift = sigmoid then σ' = sσ/(1+(s-1)σ); logit_normal."""
    sigmoid_scale: float = 1.0
    """Scale of the normal draw for sigmoid and shift sampling."""
    discrete_flow_shift: float = 3.0
    """s of the shift mode."""
    logit_mean: float = 0.0
    """logit_normal: mean."""
    logit_std: float = 1.0
    """logit_normal: standard deviation."""
    bias: Literal["balanced", "high_noise", "low_noise"] = "balanced"
    """Favour high noise (layout, motion, style) or low noise (detail, identity)."""
    bias_strength: float = 2.0
    """Exponent of the bias: high_noise σ -> 1-(1-σ)^k, low_noise σ -> σ^k."""
    min_timestep: int = 0
    """Lowest σ·1000 trained (inclusive)."""
    max_timestep: int = 1000
    """Highest σ·1000 trained (inclusive)."""

    def validate(self) -> None:
        require(0 <= self.min_timestep < self.max_timestep <= 1000,
                "timesteps: need 0 <= min_timestep < max_timestep <= 1000")
        require(self.discrete_flow_shift > 0, "timesteps.discrete_flow_shift: must be positive")


@dataclass
class ExpertsConfig:
    """Wan 2.2 A14B: which noise expert(s) to train."""

    train: Literal["high", "low", "both"] = "both"
    """high = layout and motion, low = identity and detail; both = each with its own LoRA and optimiser."""
    switch_every: int = 1
    """With both: steps on one expert before switching to the other."""
    offload_inactive: bool = False
    """Keep the waiting expert in (pinned) CPU memory; needed when both do not fit on the GPU."""
    boundary: float | None = None
    """Override the variant's σ boundary (0.875 T2V, 0.9 I2V); rarely needed."""

    def validate(self) -> None:
        require(self.switch_every >= 1, "experts.switch_every: must be >= 1")


@dataclass
class DopConfig:
    """Differential Output Preservation: keep outputs for the class (without trigger) as the base model's."""

    enabled: bool = False
    """Turn DOP on."""
    trigger: str = ""
    """The trigger word in captions."""
    class_word: str = ""
    """The class that replaces the trigger for the preservation pass ("person", "scene")."""
    multiplier: float = 1.0
    """Weight of the preservation loss."""

    def validate(self) -> None:
        require(self.multiplier >= 0, f"regularisation.dop.multiplier {self.multiplier}: must be >= 0")


@dataclass
class RegularisationConfig:
    """Regularisation: DOP, differential guidance, the temporal loss, EMA."""

    dop: DopConfig = field(default_factory=DopConfig)
    """Differential Output Preservation."""
    differential_guidance_scale: float = 0.0
    """> 1 turns on differential guidance: target = pred + scale·(target - pred) (0 or 1 = off)."""
    temporal_weight: float = 0.0
    """Weight of a frame-difference loss added to the flow loss: the MSE between the frame-to-frame changes of the
    prediction and of the target, which errors shared by all frames (appearance) do not enter, so it weighs motion
    (MotionDirector's idea); for motion LoRAs, 0 = off."""
    ema_decay: float = 0.0
    """EMA of the trainable weights (0 = off; 0.99-0.9999 typical); saved alongside."""
    prior_target: str = "data"
    """What samples of a regularisation dataset (`is_regularization = true`) are trained towards: "data" their
    own latents (DreamBooth prior preservation), "base" the base model's prediction (network off) at the same noisy
    input, which keeps the base model's output on those prompts (one extra no-grad forward per batch holding such
    samples)."""

    def validate(self) -> None:
        if self.dop.enabled:
            require(bool(self.dop.trigger and self.dop.class_word),
                    "regularisation.dop: set trigger and class_word when DOP is enabled")
        require(0.0 <= self.ema_decay < 1.0, "regularisation.ema_decay: must be in [0, 1)")
        require(self.temporal_weight >= 0, f"regularisation.temporal_weight {self.temporal_weight}: must be >= 0")
        require(self.prior_target in ("data", "base"), "regularisation.prior_target: must be \"data\" or \"base\"")


@dataclass
class ValidationConfig:
    """Validation loss at fixed timesteps and fixed noise (comparable across checkpoints and runs)."""

    every_steps: int = 0
    """Validate every N steps (0 = off)."""
    split: float = 0.0
    """Fraction of the training samples held out for validation."""
    latents_file: Path | None = None
    """A separate validation set (same format as data.latents_file)."""
    timesteps: list[int] = field(default_factory=lambda: [100, 300, 500, 700, 900])
    """σ·1000 values validated at."""
    seed: int = 1234
    """Seed of the fixed validation noise."""

    def validate(self) -> None:
        require(0.0 <= self.split < 1.0, "validation.split: must be in [0, 1)")
        require(all(0 < t <= 1000 for t in self.timesteps), "validation.timesteps: values in (0, 1000]")


@dataclass
class PreviewConfig:
    """Preview videos every N steps from a prompts file (same syntax as `wantune generate --prompts`)."""

    every_steps: int = 0
    """Preview every N steps (0 = off)."""
    prompts_file: Path | None = None
    """Prompts file; I2V prompts need an image each."""
    steps: int = 25
    """Sampling steps."""
    guidance: float = 4.0
    """Classifier-free guidance."""
    seed: int = 42
    """Fixed seed, so previews are comparable."""
    width: int = 480
    """Preview width."""
    height: int = 320
    """Preview height."""
    frames: int = 33
    """Preview frames (4n+1)."""


@dataclass
class SavingConfig:
    """Checkpoints and final files."""

    output_dir: Path = Path("runs")
    """Parent folder of the run folder."""
    name: str = "my_lora"
    """Run name; final files are wan2.2_<type>_<name>_v<version>.safetensors."""
    version: int = 1
    """The version number in final file names."""
    every_steps: int = 0
    """Save every N steps (0 = off)."""
    every_epochs: int = 0
    """Save every N epochs (0 = off)."""
    keep_last: int = 4
    """Checkpoints kept (older ones are deleted)."""


@dataclass
class LoggingConfig:
    """Metrics and progress."""

    tensorboard: bool = True
    """Write TensorBoard scalars in the run folder."""
    progress_bar: bool = True
    """Show a progress bar with s/step and ETA."""


@dataclass
class DistributedConfig:
    """Several GPUs or machines (`torchrun`; see docs/distributed.md). Ignored in a single process."""

    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    """auto = ddp for LoRA, fsdp for full fine-tuning; ddp replicates the model, fsdp shards it (full only)."""
    reshard_after_forward: bool = True
    """fsdp: free each block's gathered weights after its forward (less memory, one more all-gather)."""
    timeout_minutes: float = 30.0
    """How long a rank waits for the others (e.g. while rank 0 writes a checkpoint) before failing."""

    def validate(self) -> None:
        require(self.timeout_minutes > 0, "distributed.timeout_minutes: must be positive")


@dataclass
class TrainingConfig:
    """Run length, batch and numerics."""

    steps: int | None = None
    """Optimiser steps (set steps or epochs)."""
    epochs: int | None = None
    """Epochs over the training set."""
    batch_size: int = 1
    """Samples per micro-batch."""
    grad_accumulation: int = 1
    """Micro-batches per optimiser step."""
    grad_clip: float = 1.0
    """Clip the gradient norm to this (0 = off)."""
    mixed_precision: Literal["bf16", "fp16", "no"] = "bf16"
    """Autocast dtype (fp16 uses loss scaling)."""
    gradient_checkpointing: bool = False
    """Recompute each block in the backward pass (~30% less memory, slower); performance.checkpointing wins if set."""
    seed: int = 42
    """Seed of everything random in the run."""
    device: str = "auto"
    """cuda, cpu or auto."""
    spike_factor: float = 10.0
    """A loss above this many times the recent median is a spike: the step is skipped and reported."""
    mask_min_weight: float = 0.0
    """Masked loss (datasets with `mask_path`): loss weight of black mask pixels (white: 1; 0 ignores the rest)."""

    def validate(self) -> None:
        require((self.steps is None) != (self.epochs is None), "training: set exactly one of steps or epochs")
        require((self.steps or 1) > 0 and (self.epochs or 1) > 0, "training: steps/epochs must be positive")
        require(self.batch_size >= 1 and self.grad_accumulation >= 1,
                "training: batch_size and grad_accumulation must be >= 1")
        require(0 <= self.mask_min_weight <= 1, f"training.mask_min_weight {self.mask_min_weight}: must be in [0, 1]")


@dataclass
class TrainConfig:
    """A whole training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    timesteps: TimestepConfig = field(default_factory=TimestepConfig)
    experts: ExpertsConfig = field(default_factory=ExpertsConfig)
    regularisation: RegularisationConfig = field(default_factory=RegularisationConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    previews: PreviewConfig = field(default_factory=PreviewConfig)
    saving: SavingConfig = field(default_factory=SavingConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(steps=100))
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    performance: PerformanceConfig = field(default_factory=PerformanceConfig)
    preset: str | None = None
    """The preset laid under this config (character, style, motion, domain), for the record."""

    def validate(self) -> None:
        from wantune.models.variants import get_variant

        try:
            get_variant(self.model.variant)
        except UserError as exc:
            raise UserError(f"model.variant: {exc}") from None
        self.data.validate()
        if self.distributed.strategy == "fsdp" and self.network.type == "lora":
            raise UserError("distributed.strategy = fsdp: supported for network.type = full only; "
                            "use ddp (or auto) for LoRA")
        self.validate_performance()
        if not self.model.tiny:
            require(self.model.checkpoint or (self.model.checkpoint_high and self.model.checkpoint_low),
                    "model.checkpoint: set the transformer weights (or model.tiny = true for a demo)")

    def validate_performance(self) -> None:
        perf = self.performance
        if perf.fp8_base and self.network.type == "full":
            raise UserError("performance.fp8_base: stores the frozen base weights in fp8, for network.type = lora "
                            "only (full fine-tuning trains them); set it to false")
        if perf.fp8_backward and not perf.fp8_base:
            raise UserError("performance.fp8_backward: needs performance.fp8_base = true (the fp8 weights it "
                            "multiplies with); set both or neither")
        if perf.block_swap and (self.network.type == "full" or self.distributed.strategy == "fsdp"):
            raise UserError("performance.block_swap: streams frozen base weights, for LoRA only (not full "
                            "fine-tuning / FSDP, which shards the weights instead); set it to 0")
        if perf.offload_activations and self.checkpoint_mode == "none":
            raise UserError("performance.offload_activations: offloads what checkpointed blocks save; set "
                            "performance.checkpointing to full or selective")

    @property
    def checkpoint_mode(self) -> str:
        """performance.checkpointing with auto resolved from training.gradient_checkpointing (full or none)."""
        mode = self.performance.checkpointing
        if mode == "auto":
            return "full" if self.training.gradient_checkpointing else "none"
        return mode

    def check_files(self) -> None:
        """Checks that read files (after paths are resolved): the previews' prompt file and its images."""
        from wantune.models.variants import get_variant

        if self.previews.every_steps:
            from wantune.train.previews import check_prompts

            check_prompts(self.previews, get_variant(self.model.variant))


def load_train_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a training TOML, lay its preset underneath, apply `--set` overrides, validate."""
    from wantune.train.presets import apply_preset

    path = Path(path)
    data = typed.read_toml(path)
    preset = next((o.partition("=")[2].strip().strip('"') for o in overrides or [] if
                   o.partition("=")[0].strip() == "preset"), data.get("preset"))
    if preset:
        data = apply_preset(data, preset)
    if isinstance(data.get("data"), dict) and data["data"].get("dataset_config") and "cache_dir" not in data["data"]:
        data["data"]["cache_dir"] = "cache"  # where `wantune cache` puts it for this config
    try:
        cfg = typed.load(TrainConfig, data, overrides)
    except UserError as exc:
        message = str(exc)
        raise UserError(f"{path}{message[len('config'):]}" if message.startswith("config:") else message) from None
    cfg = resolve_paths(cfg, path.resolve().parent)
    cfg.check_files()
    return cfg


def resolve_paths(obj, base: Path):
    """A copy with every relative Path made absolute against `base` (the config file's folder)."""
    if isinstance(obj, Path):
        return obj if obj.is_absolute() else base / obj
    if dataclasses.is_dataclass(obj):
        return dataclasses.replace(obj, **{f.name: resolve_paths(getattr(obj, f.name), base)
                                           for f in dataclasses.fields(obj) if f.init})
    return obj


def save_resolved(cfg: TrainConfig, path: Path) -> None:
    """Write the resolved config (every default filled in) so the run folder describes itself."""
    path.write_text(typed.dumps(cfg), encoding="utf-8")
