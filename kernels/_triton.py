"""Lazy access to Triton: the kernel modules import it through here, so that importing
`passion_deploy.kernels` (operands, references) never needs Triton, and a machine without it
gets one sentence saying what is missing instead of a bare ImportError deep in a stack."""
from __future__ import annotations

import os

MISSING = ("the integer kernels need the `triton` package (pip install triton; on a CPU-only machine "
           "set TRITON_INTERPRET=1 before importing it to run them in Triton's interpreter)")

try:
    import triton
    import triton.language as tl
except ImportError as e:  # pragma: no cover - depends on the machine
    raise ImportError(MISSING) from e


def interpreting() -> bool:
    """True when kernels run in Triton's CPU interpreter (tensors stay on the CPU)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_device(*tensors) -> None:
    """Compiled kernels need CUDA tensors; the interpreter takes any."""
    if interpreting():
        return
    for t in tensors:
        if t is not None and not t.is_cuda:
            raise ValueError(f"Triton kernels need CUDA tensors (or TRITON_INTERPRET=1), got one on {t.device}")


__all__ = ["triton", "tl", "interpreting", "check_device", "MISSING"]
