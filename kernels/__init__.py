"""Triton integer kernels, each beside a plain integer reference (GPU; tests run in the interpreter).

Modules: `operands` (IR -> kernel operands, no Triton), `reference` (int64 references),
`act_quant`, `gemm` (linear + implicit-GEMM conv), `attention`, `layers` (a recipe run by the
kernels). The kernel modules need Triton and say so when it is missing; import them directly.
"""
import os


def use_interpreter_without_gpu() -> bool:
    """Without a CUDA GPU, run the kernels in Triton's CPU interpreter. Triton reads the switch
    when a kernel is defined, so call this before importing a kernel module. Returns whether
    the interpreter is on."""
    try:
        import torch

        gpu = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        gpu = False
    if not gpu:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
