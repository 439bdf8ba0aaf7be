"""Which device this machine offers: the one place that asks for a CUDA GPU.

Everything asks here (runtimes, the TensorRT checks, passion-export's timing, passion-bench)
instead of probing torch or pycuda on its own; kernels.use_interpreter_without_gpu turns
Triton's CPU interpreter on from this answer.
"""
from __future__ import annotations


def cuda_available() -> bool:
    """A CUDA GPU that this torch build can use."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return torch.cuda.is_available()


def pycuda_gpu() -> bool | None:
    """True/False: pycuda sees a GPU or not; None: pycuda is not installed (TensorRT's other way to a GPU)."""
    try:
        import pycuda.driver as cuda
    except ImportError:
        return None
    try:
        cuda.init()
        return cuda.Device.count() > 0
    except Exception:  # pycuda raises its own LogicError/RuntimeError without a driver
        return False


def gpu_name(index: int = 0) -> str:
    """The GPU's model name, through torch or else pycuda."""
    if cuda_available():
        import torch

        return torch.cuda.get_device_name(index)
    import pycuda.driver as cuda

    cuda.init()
    return cuda.Device(index).name()
