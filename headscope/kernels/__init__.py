"""Attention implementations: an fp32 reference oracle and fast instrumented kernels."""
