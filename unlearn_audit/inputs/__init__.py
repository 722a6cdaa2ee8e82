"""The audit's inputs: Hub resolution, the forget-set spec and data, models, tokenizers, adapters, calibration text."""
