"""PyTorch distributed: process groups, DDP/FSDP2 wrapping, rank sharding."""
