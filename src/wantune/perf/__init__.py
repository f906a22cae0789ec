"""Performance features applied to a built model: checkpointing, compile, fp8, block swap."""
