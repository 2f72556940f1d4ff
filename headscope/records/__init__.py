"""Frozen records of what was captured (never the model), saved as safetensors + JSON;
and `store.MapStore`, full maps of chosen heads of a long prompt on disk (zarr, with
block-max and block-mean pyramids), written while they are captured."""
