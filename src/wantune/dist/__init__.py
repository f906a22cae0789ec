"""PyTorch distributed: process groups (`env`), DDP/FSDP2 wrapping (`parallel`), sharded checkpoints
(`checkpoint`). A run launched with torchrun trains on every rank; one plain process is the world of one."""
