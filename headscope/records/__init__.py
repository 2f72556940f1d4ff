"""Frozen records of what was captured (never the model), saved as safetensors + JSON."""
