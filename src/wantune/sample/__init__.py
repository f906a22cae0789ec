"""Sampling: schedulers, the denoising loop, A14B expert routing, and `wantune generate`."""
