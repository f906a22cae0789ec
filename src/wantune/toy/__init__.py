"""The toy Wan world: procedural clips with exact ground truth, the embedded base model, the judge."""
