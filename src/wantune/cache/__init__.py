"""Latent and text-embedding caches keyed by identity, and the cached loader."""
