"""Triton integer kernels, each beside a plain integer reference (GPU; tests run in the interpreter)."""
