"""Compiled numerical solvers: plain numpy in, numpy out, no model, torch or headscope import.

The bottom layer of the pipeline (any layer may use it; it uses none): analyses stay pure by
calling these on arrays. Compiled with numba on first use and cached on disk.
"""
