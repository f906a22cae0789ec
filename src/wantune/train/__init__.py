"""Training: the recipe, objective, optimisers, validation, diagnostics, checkpoints."""
