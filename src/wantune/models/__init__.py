"""Wan models: variants, the transformer, VAE, text encoders and checkpoint formats."""
