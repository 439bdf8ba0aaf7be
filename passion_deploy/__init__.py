"""passion-deploy: calibrate, compile and verify PassionSR-quantized one-step diffusion SR.

The Python API (passion_deploy/api.py), imported on first use so `import passion_deploy` stays light:

    load(ckpt, weights=None, lora=None, device="cpu")            calibrated checkpoint -> fake-quant pipeline
    import_passionsr(config_yaml, out=None)                       PassionSR's released model -> pipeline
    quantize(pipe, config, forward_loop=None, images=None)        float pipeline -> calibrated fake-quant one
    calibration(ptq_yaml, out=None).run()                         PassionSR's full DQC (passion-calibrate)
    export_model(pipe_or_ckpt, target, out, options=None, verify=False) -> Artifact (sealed directory)
    verify_artifact(artifact_or_dir)                              artifact vs its fake-quant model
    verification_lines(report)                                    that report as passion-export prints it
    open(artifact_dir, device="auto")                             -> Upscaler: .upscale(image), (tensor)
    upscaler(backend, preset=None, ckpt=None, config="w8a8")      a PyTorch pipeline (fp32, fp16, fakequant) -> Upscaler
    passionsr_upscaler(config_yaml)                               PassionSR's imported model -> Upscaler
    benchmark(artifact_dir)                                       passion-bench's record: latency, memory, fidelity
    target_options(target)                                        the target's options dataclass
    PassionError                                                  every refusal: one sentence, .path
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# (not "calibrate" / "export": those name the subpackages, whose attributes would shadow the functions)
_API = ("load", "import_passionsr", "quantize", "calibration", "export_model", "verify_artifact", "verification_lines", "open",
        "upscaler", "passionsr_upscaler", "benchmark", "target_options", "Upscaler")
__all__ = [*_API, "PassionError", "__version__"]

if TYPE_CHECKING:
    from .api import (Upscaler, benchmark, calibration, export_model, import_passionsr, load, open,  # noqa: F401
                      passionsr_upscaler, quantize, target_options, upscaler, verification_lines, verify_artifact)
    from .errors import PassionError  # noqa: F401


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(".api", __name__), name)
    if name == "PassionError":
        return importlib.import_module(".errors", __name__).PassionError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
