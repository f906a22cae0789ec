"""The versioned LoRA library for production."""
