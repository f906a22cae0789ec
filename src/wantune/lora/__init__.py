"""LoRA: apply to a built model, save/load the ecosystem's layouts, stack and merge."""
