"""Compile every kernel in every configuration of configs.py for NVIDIA targets, without a GPU.

    python -m passion_deploy.kernels.aot [--arch 90 80] [--jobs N] [--json PATH]

Triton's own compiler does it: `triton.compile(ASTSource(...), target=GPUTarget("cuda", arch,
32))`, down to a cubin with the ptxas bundled in the triton wheel. Each variant's arguments
are built by the kernel's own wrapper (act_quant, qgemm, ...) on CPU tensors of the variant's
shape, and the launch is caught before it runs: the signature, the constexprs and Triton's
specialization of the arguments (integers equal to 1 become constants, multiples of 16 and
16-byte aligned pointers are marked divisible) are then what the runtime compiles on a GPU,
not a hand-written approximation of it. ptxas's own report (`-v`) gives registers and spills.

This needs compiled-mode Triton: it sets TRITON_INTERPRET=0 before importing Triton, so run it
in its own process (tests/kernels/test_kernels_aot.py does); the interpreter would hand out
InterpretedFunctions, which do not compile. Every run compiles from scratch, in a fresh
Triton cache directory removed afterwards, so no earlier result can hide a failure.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace

from . import configs

ARCHS = (90, 80)  # Hopper (H100/H200, wgmma) and Ampere (A100, mma.sync)


@dataclass
class Job:
    """One kernel launch caught before it ran, ready to compile."""

    kernel: str  # the kernel's wrapper: act_quant, qgemm, streaming_attention, act_matmul, softmax_quant
    variant: str
    launch: configs.Launch
    fn: object  # the @triton.jit function
    args: tuple
    kwargs: dict


@dataclass
class Row:
    kernel: str
    variant: str
    arch: int
    block: tuple
    num_warps: int
    num_stages: int
    regs: int = -1
    spills: int = -1  # Triton's n_spills: local memory bytes / 4 (0 unless registers ran out)
    spill_stores: int = -1  # bytes, as ptxas reports them
    spill_loads: int = -1
    shared: int = -1  # bytes of shared memory
    mma: str = ""  # the int8 tensor-core instruction in the PTX, "" where the kernel has no dot
    seconds: float = 0.0
    error: str = ""


def toolchain_problem(archs=ARCHS) -> str | None:
    """One sentence saying what is missing to compile for NVIDIA GPUs here, or None."""
    try:
        import triton
    except ImportError:
        return "the AOT compile needs the `triton` package (pip install triton), which is not installed"
    from triton.backends import backends

    if "nvidia" not in backends:
        return f"this triton ({triton.__version__}) has no CUDA backend (its backends: {sorted(backends)})"
    from triton.backends.nvidia import compiler as nv

    for arch in archs:
        try:  # Triton picks a ptxas per target (3.9: `ptxas` below sm_90, `ptxas-blackwell` from it)
            try:
                ptxas = nv.get_ptxas(arch).path
            except TypeError:  # older Triton: one ptxas for all targets
                ptxas = nv.get_ptxas().path
        except Exception as e:  # noqa: BLE001 - Triton raises a bare RuntimeError when it finds none
            return (f"Triton finds no ptxas for sm_{arch} (the triton wheel bundles one; TRITON_PTXAS_PATH "
                    f"overrides it): {e}")
        try:
            subprocess.run([ptxas, "--version"], check=True, capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as e:
            return f"Triton's ptxas at {ptxas} does not run on this machine: {e}"
    return None


# -- the launches of every variant, caught ---------------------------------------------------

def _op(dtype: str):
    from .operands import ActOperand

    # an 8-bit grid centred on the operand range; the values only feed float/int scalars
    return ActOperand("u8", 0.05, 128, 0, 255, 128, 0) if dtype == "u8" else ActOperand("s8", 0.05, 0, -128, 127, 0, 0)


def _dtype(name: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "u8": torch.uint8, "s8": torch.int8}[name]


def _launch_act_quant(v: configs.ActQuantVariant) -> None:
    import torch

    from .act_quant import act_quant

    b, p, c = v.shape
    if v.layout == "nchw":  # KernelLayer.conv: x.reshape(B, C, H*W).transpose(1, 2)
        x = torch.empty(b, c, p, dtype=_dtype(v.x_dtype)).transpose(1, 2)
    else:
        x = torch.empty(b, p, c, dtype=_dtype(v.x_dtype))
    kw = {}
    if v.pre != "none":
        kw = dict(pre=v.pre, scale=torch.ones(p if v.vec_on_rows else c), vec_on_rows=v.vec_on_rows)
    if v.pre == "let":
        kw["offset"] = torch.zeros(c)
    act_quant(x, [_op(v.out)], **kw)


def _launch_qgemm(v: configs.GemmVariant) -> None:
    import numpy as np
    import torch

    from .gemm import qgemm
    from .operands import Epilogue, PackedWeights

    if v.kernel is None:
        rows, c, n = v.shape
        spatial, kernel, out_pos = None, (1, 1), rows
    else:
        h, w, c, n = v.shape
        spatial, kernel = (h, w), v.kernel
        ho = (h + 2 * v.padding - kernel[0]) // v.stride + 1
        wo = (w + 2 * v.padding - kernel[1]) // v.stride + 1
        out_pos = ho * wo
    chans = v.channels or (c,)
    if len(chans) != v.groups or sum(chans) != c:
        raise ValueError(f"{v.name}: channels {chans} do not split {c} into {v.groups} groups")
    g, taps = v.groups, kernel[0] * kernel[1]
    # export/targets/triton/operands.pack_codes: a byte per 8-bit code, 4 6-bit codes per 3 bytes
    row_bytes = max(ch if v.w_bits == 8 else (ch + 3) // 4 * 3 for ch in chans)
    weights = PackedWeights(torch.empty(g, n, taps, row_bytes, dtype=torch.uint8), v.w_bits, -(1 << (v.w_bits - 1)),
                            chans, taps, torch.zeros(g, n, dtype=torch.int32), torch.zeros(g, n, dtype=torch.int32),
                            np.zeros((g, n), np.int64), np.ones((g, n), np.float32))
    f32 = lambda on, *shape: torch.zeros(*shape) if on else None  # noqa: E731
    classes = (v.padding + 1) ** 2  # the border table: (row class, column class) x N (kernels/gemm.py)
    ep = Epilogue(torch.zeros(g, dtype=torch.int32), torch.ones(g, n), f32(v.res, g, n), f32(v.bias, n),
                  f32(v.map, classes * classes, n))
    # a batch: KernelLayer passes (B, P, C) conv codes and a (B, tokens, C) linear input as they are
    a = torch.empty(v.batch, (spatial[0] * spatial[1]) if spatial else out_pos, c, dtype=_dtype(v.act))
    out = None
    if spatial is not None:  # KernelLayer.conv: NCHW output, written through a transposed view
        out = torch.empty(v.batch, n, out_pos, dtype=_dtype(v.out)).transpose(1, 2)
    qgemm(a, [_op(v.act)] * g, weights, ep, spatial, kernel, v.stride, v.padding, _dtype(v.out), v.store_int,
          out=out, launch=v.launch())


def _launch_streaming_attention(v: configs.StreamingAttentionVariant) -> None:
    import torch

    from .attention import streaming_attention

    # KernelAttention's call: contiguous (Z, N, d) codes from act_quant, s_vw per key
    z, m, d, nk = 5, v.queries, v.head_dim, v.tokens
    q = torch.empty(z, m, d, dtype=_dtype(v.a))
    k, val = (torch.empty(z, nk, d, dtype=_dtype(v.b)) for _ in range(2))
    streaming_attention(q, _op(v.a), k, _op(v.b), val, _op(v.b), _op(v.a), torch.ones(nk), 0.125, v.block)


def _launch_act_matmul(v: configs.ActMatmulVariant) -> None:
    import torch

    from .attention import act_matmul

    z, m, d, nk = 5, v.queries, v.head_dim, v.tokens
    if v.product == "qk":  # KernelAttention: act_matmul(codes_q, codes_k.transpose(1, 2))
        a = torch.empty(z, m, d, dtype=_dtype(v.a))
        b = torch.empty(z, nk, d, dtype=_dtype(v.b)).transpose(1, 2)
    else:  # act_matmul(codes_p, codes_v)
        a = torch.empty(z, m, nk, dtype=_dtype(v.a))
        b = torch.empty(z, nk, d, dtype=_dtype(v.b))
    act_matmul(a, _op(v.a), b, _op(v.b), 0.125, v.store_int, v.block)


def _launch_softmax_quant(v: configs.SoftmaxQuantVariant) -> None:
    import torch

    from .attention import softmax_quant

    softmax_quant(torch.empty(v.rows, v.tokens), torch.ones(v.tokens), _op("u8"))


@contextlib.contextmanager
def _caught():
    """Launches of the kernels are recorded instead of run; CPU tensors are let through."""
    from . import act_quant, attention, gemm

    caught = []
    kernels = [act_quant.act_quant_kernel, gemm.qgemm_kernel, attention.streaming_attention_kernel,
               attention.act_matmul_kernel, attention.softmax_quant_kernel]
    for k in kernels:
        k.run = lambda *args, grid, warmup, _k=k, **kwargs: caught.append((_k, args, kwargs))
    modules = (act_quant, gemm, attention)
    checks = [m.check_device for m in modules]
    for m in modules:
        m.check_device = lambda *tensors: None
    try:
        yield caught
    finally:
        for k in kernels:
            del k.run
        for m, c in zip(modules, checks):
            m.check_device = c


def jobs() -> list[Job]:
    """Every variant of configs.py as the launch its wrapper makes."""
    from ._triton import interpreting

    if interpreting():
        raise RuntimeError("the AOT compile needs compiled-mode Triton: run it with TRITON_INTERPRET unset or 0")
    # (kernel, variants, the wrapper call, the launch configs.py gives it, the kernel's tile constexprs)
    table = [("act_quant", configs.ACT_QUANT_VARIANTS, _launch_act_quant, lambda v: configs.ACT_QUANT, ("BP", "BC")),
             ("qgemm", configs.gemm_compile_list(), _launch_qgemm, lambda v: v.launch(), ("BM", "BN", "BK")),
             ("streaming_attention", configs.STREAMING_ATTENTION_VARIANTS, _launch_streaming_attention,
              lambda v: v.launch(), ("BM", "BN")),
             ("act_matmul", configs.ACT_MATMUL_VARIANTS, _launch_act_matmul, lambda v: v.launch(), ("BM", "BN", "BK")),
             ("softmax_quant", configs.SOFTMAX_QUANT_VARIANTS, _launch_softmax_quant, lambda v: configs.SOFTMAX_QUANT,
              ("BR", "BC"))]
    out = []
    for name, variants, launch, cfg, tile in table:
        for v in variants:
            with _caught() as caught:
                launch(v)
            if len(caught) != 1:
                raise RuntimeError(f"{name}/{v.name}: the wrapper made {len(caught)} launches, expected one")
            fn, args, kwargs = caught[0]
            want = cfg(v)
            # the wrapper's own launch must be the listed one, or the table would describe another kernel
            got = configs.Launch(tuple(kwargs[k] for k in tile), kwargs.get("num_warps"), kwargs.get("num_stages"))
            if got != want:
                raise RuntimeError(f"{name}/{v.name}: the wrapper launched {got}, configs.py lists {want}")
            out.append(Job(name, v.name, want, fn, args, kwargs))
    return out


# -- compiling -------------------------------------------------------------------------------

def _specialize(arg):
    """Triton's (type, specialization) of one run-time argument, as its JIT launcher computes it."""
    from triton.backends.compiler import BaseBackend

    try:
        from triton._C.libtriton import native_specialize_impl
    except ImportError:  # an older Triton: its documented rule, written out
        native_specialize_impl = None
    if native_specialize_impl is not None:
        return native_specialize_impl(BaseBackend, arg, False, True, True)
    if isinstance(arg, bool):
        return "u1", None
    if isinstance(arg, int):
        if arg == 1:
            return "constexpr", 1
        return ("i32" if -2**31 <= arg < 2**31 else "i64"), ("D" if arg % 16 == 0 else "")
    if isinstance(arg, float):
        return "fp32", None
    names = {"torch.uint8": "u8", "torch.int8": "i8", "torch.int32": "i32", "torch.float32": "fp32",
             "torch.float16": "fp16"}
    return "*" + names[str(arg.dtype)], ("D" if arg.data_ptr() % 16 == 0 else "")


def source(job: Job):
    """The ASTSource the JIT would build for this launch, and the compile options."""
    from triton.compiler import ASTSource

    fn = job.fn
    bound = dict(zip(fn.arg_names, job.args))
    bound.update({k: v for k, v in job.kwargs.items() if k in fn.arg_names})
    options = {k: v for k, v in job.kwargs.items() if k not in fn.arg_names}
    if set(bound) != set(fn.arg_names):
        raise RuntimeError(f"{job.kernel}/{job.variant}: arguments {sorted(set(fn.arg_names) - set(bound))} missing")
    signature, constexprs, attrs = {}, {}, {}
    for i, (name, param) in enumerate(zip(fn.arg_names, fn.params)):
        value = bound[name]
        if param.is_constexpr:
            signature[name], constexprs[name] = "constexpr", value
            continue
        ty, spec = _specialize(value)
        signature[name] = ty
        if ty == "constexpr":
            constexprs[name] = spec
        elif spec == "D":
            attrs[(i,)] = [["tt.divisibility", 16]]
    return ASTSource(fn, signature, constexprs, attrs), options


_PTXAS = {
    "regs": re.compile(r"Used (\d+) registers"),
    "frame": re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"),
}


def compile_job(job: Job, arch: int) -> Row:
    """Compile one launch for sm_<arch>; errors are returned in the row, not raised."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget

    row = Row(job.kernel, job.variant, arch, job.launch.block, job.launch.num_warps, job.launch.num_stages)
    t0 = time.perf_counter()
    try:
        src, options = source(job)
        knobs.nvidia.dump_ptxas_log = True  # ptxas -v's report, printed after the cubin is built
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
        text = log.getvalue()
        regs, frame = _PTXAS["regs"].search(text), _PTXAS["frame"].search(text)
        if regs is None or frame is None:
            raise RuntimeError(f"no ptxas -v report in Triton's output: {text[-500:]!r}")
        row.regs = int(regs.group(1))
        stack, row.spill_stores, row.spill_loads = (int(x) for x in frame.groups())
        row.spills = stack // 4
        row.shared = int(compiled.metadata.shared)
        ptx = compiled.asm["ptx"]
        mma = re.search(r"wgmma\.mma_async\.sync\.aligned\.(\w+)\.s32\.s8\.s8", ptx)
        sync = re.search(r"\bmma\.sync\.aligned\.(\w+)\.row\.col\.(?:satfinite\.)?s32\.s8\.s8", ptx)
        row.mma = f"wgmma.{mma.group(1)}" if mma else (f"mma.sync.{sync.group(1)}" if sync else "")
    except Exception as e:  # noqa: BLE001 - every failure is reported, with its variant
        row.error = f"{type(e).__name__}: {e}"[:4000]
    row.seconds = round(time.perf_counter() - t0, 2)
    return row


_JOBS: list[Job] = []


def _compile_index(i_arch):
    i, arch = i_arch
    return compile_job(_JOBS[i], arch)


def compile_all(archs=ARCHS, workers: int | None = None) -> list[Row]:
    """Every job for every arch, `workers` processes at a time (forked: they share the jobs)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    global _JOBS
    _JOBS = jobs()
    # launches Triton specializes alike are one binary (a batch-4 GEMM variant of a batch-1 one:
    # the batch is only the grid): compiled once, each gets its row. A second compile of it in
    # this run's cache would be a cache hit, without the ptxas report the row needs.
    first: dict = {}
    same = {}
    for i, j in enumerate(_JOBS):
        src, options = source(j)
        same[i] = first.setdefault((src.hash(), repr(sorted(options.items()))), i)
    # the split/conv GEMMs take longest: start them first so the pool ends together
    work = sorted(((i, a) for i in sorted(set(same.values())) for a in archs),
                  key=lambda ia: (_JOBS[ia[0]].kernel != "qgemm", ia[0]))
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        done = [_compile_index(w) for w in work]
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            done = list(pool.map(_compile_index, work))
    compiled = dict(zip(work, done))
    return [replace(compiled[(same[i], a)], kernel=j.kernel, variant=j.variant)
            for i, j in enumerate(_JOBS) for a in sorted(archs, reverse=True)]


def table(rows: list[Row]) -> str:
    head = ("kernel", "variant", "arch", "block", "warps", "stages", "regs", "spills", "shared", "mma", "s")
    lines = [head]
    for r in rows:
        lines.append((r.kernel, r.variant, f"sm_{r.arch}", "x".join(map(str, r.block)), str(r.num_warps),
                      str(r.num_stages), *(("ERROR", "", "", "", "") if r.error else
                                           (str(r.regs), str(r.spills), str(r.shared), r.mma or "-")),
                      f"{r.seconds:.1f}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    out += [f"{r.kernel}/{r.variant} sm_{r.arch}: {r.error}" for r in rows if r.error]
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), help="compute capabilities (90 = sm_90)")
    p.add_argument("--jobs", type=int, default=None, help="compile processes (default: one per CPU)")
    p.add_argument("--json", help="write the rows (and what is missing, if anything) to this file")
    args = p.parse_args(argv)
    os.environ["TRITON_INTERPRET"] = "0"  # before Triton is first imported (kernels import it lazily)
    cache = tempfile.mkdtemp(prefix="passion-aot-triton-cache-")
    os.environ["TRITON_CACHE_DIR"] = cache
    try:
        t0 = time.perf_counter()
        missing = toolchain_problem(args.arch)
        rows = [] if missing else compile_all(args.arch, args.jobs)
        seconds = round(time.perf_counter() - t0, 1)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if args.json:
        try:
            import triton
            version = triton.__version__
        except ImportError:
            version = None
        with open(args.json, "w") as f:
            json.dump(dict(missing=missing, seconds=seconds, triton=version, rows=[asdict(r) for r in rows]), f,
                      indent=1)
    if missing:
        print(missing, file=sys.stderr)
        return 2
    print(table(rows))
    print(f"{len(rows)} compiles in {seconds} s")
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
