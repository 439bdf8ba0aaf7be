"""Which device this machine offers: the one place that asks for a CUDA GPU.

Everything asks here (runtimes, the TensorRT checks, passion-export's timing, passion-bench)
instead of probing torch or pycuda on its own; kernels.use_interpreter_without_gpu turns
Triton's CPU interpreter on from this answer.
"""
from __future__ import annotations

from .errors import PassionError


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


class DeviceError(PassionError):
    """A --device this machine cannot give; the message says what is missing."""


DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(spec: str | None = "auto"):
    """The torch.device for --device: `auto` is the GPU when there is one, else the CPU; `cuda[:N]`
    without such a GPU is refused in one sentence, naming what this machine has."""
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if cuda_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        index = spec.partition(":")[2]
        if index and not index.isdigit():
            raise DeviceError(f"--device {spec!r}: choose {DEVICE_CHOICES}")
        if not cuda_available():
            build = "a CPU-only torch build" if torch.version.cuda is None else f"torch built for CUDA {torch.version.cuda}"
            raise DeviceError(f"--device {spec}: no CUDA GPU is visible here ({build}, torch {torch.__version__}); "
                              "use --device cpu or auto")
        count = torch.cuda.device_count()
        if index and int(index) >= count:
            raise DeviceError(f"--device {spec}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
        return torch.device(spec)
    raise DeviceError(f"--device {spec!r}: choose {DEVICE_CHOICES}")
