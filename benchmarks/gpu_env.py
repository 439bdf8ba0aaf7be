"""Step 1 of the GPU check: the machine and the software it ran on.

Everything here is read, never set: nvidia-smi is only queried (the card's clocks, power
limit and modes are left as found, and read so that a slow result can be told from a
throttled card)."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys

import torch

# the packages the check imports, and the image's pinned ones whose version decides results
PACKAGES = ("torch", "triton", "diffusers", "safetensors", "huggingface_hub", "numpy", "onnx", "onnxruntime",
            "pillow", "pytest", "passion-deploy")
SMI_FIELDS = ("name", "driver_version", "memory.total", "memory.used", "clocks.sm", "clocks.max.sm", "clocks.mem",
              "power.draw", "power.limit", "temperature.gpu", "pstate")


def package_versions() -> dict:
    from importlib import metadata

    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    from passion_deploy import __version__

    out["passion-deploy"] = out["passion-deploy"] or f"{__version__} (from the checkout)"
    return out


def nvidia_smi() -> dict:
    """nvidia-smi's view of the card (queried only), or why there is none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"error": "nvidia-smi is not on the PATH"}
    try:
        out = subprocess.run([exe, f"--query-gpu={','.join(SMI_FIELDS)}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": f"nvidia-smi: {e}"}
    if out.returncode != 0:
        return {"error": (out.stderr or out.stdout).strip()[:500]}
    values = [v.strip() for v in out.stdout.strip().splitlines()[0].split(",")]
    return dict(zip(SMI_FIELDS, values))


def gpu_info(device: torch.device) -> dict:
    props = torch.cuda.get_device_properties(device)
    free, total = torch.cuda.mem_get_info(device)
    return {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count, "memory_total_bytes": total, "memory_free_bytes": free,
            "l2_cache_bytes": getattr(props, "L2_cache_size", None), "cuda_runtime": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "nvidia_smi": nvidia_smi()}


def cpu_info() -> dict:
    from passion_deploy.export.artifact import cpu_model

    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "platform": platform.platform(),
            "python": sys.version.split()[0], "load_average": load, "torch_threads": torch.get_num_threads()}


def environment(ctx) -> dict:
    rec = {"host": cpu_info(), "versions": package_versions(), "device": str(ctx.device),
           "triton_interpreter": ctx.interpreter}
    if ctx.device.type == "cuda":
        rec["gpu"] = gpu_info(ctx.device)
    else:
        rec["gpu"] = None
        rec["note"] = "no CUDA GPU: a dry run on the CPU (kernels in Triton's interpreter); its timings mean nothing"
    return rec
