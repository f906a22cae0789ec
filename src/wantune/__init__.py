"""wantune: fine-tune Wan 2.1 / 2.2 video diffusion models and put the result to work."""

__version__ = "0.1.0"
