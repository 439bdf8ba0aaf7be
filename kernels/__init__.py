"""Triton integer kernels, each beside a plain integer reference (GPU; tests run in the interpreter).

The kernels take tensors, scalars and the containers of `operands` only, never the deploy IR:
building those operands from a recipe is the triton export target's job.

Modules: `operands` (ActOperand, PackedWeights, Epilogue; no Triton), `reference` (int64
references), `configs` (every launch configuration and compile variant; no Triton),
`act_quant` (pre-op + quantize), `gemm` (linear + implicit-GEMM conv), `attention` (the
quantized attention core), `aot` (compiles every configuration for sm_90/sm_80 without a
GPU). The kernel modules need Triton and say so when it is missing; import them directly.
"""
import os
import sys


def use_interpreter_without_gpu() -> bool:
    """Without a CUDA GPU, run the kernels in Triton's CPU interpreter; returns whether it is on.

    Triton reads the switch when a function is decorated, including its own standard library
    (tl.zeros, tl.sum, ...) at `import triton`. Other libraries (diffusers) may have imported
    Triton with the switch off; its Python modules are then dropped from sys.modules so that
    the kernel modules, imported after this call, get an interpreter-mode Triton. Objects
    already holding the old modules keep them (they never run kernels on a CPU machine)."""
    from passion_deploy.devices import cuda_available

    gpu = cuda_available()
    if not gpu:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    on = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    lang = sys.modules.get("triton.language")
    if on and lang is not None and type(lang.zeros).__name__ != "InterpretedFunction":
        for name in [m for m in sys.modules if (m == "triton" or m.startswith("triton.")) and not m.startswith("triton._C")]:
            del sys.modules[name]
        for name in [m for m in sys.modules if m.startswith(__name__ + ".")
                     and m[len(__name__) + 1:] not in ("operands", "reference", "configs")]:
            del sys.modules[name]  # kernel modules bound to the old Triton
    return on
