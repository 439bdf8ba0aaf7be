"""Step 3 of the GPU check: the integer GEMM and implicit-GEMM conv kernels against FP16.

For each sd21 UNet shape at the 64x64 latent tile, int8 and int6 weights through
kernels/gemm.py's `qgemm` (its GPU launch from kernels/configs.py, fp16 output, the conv
written NCHW as the triton runtime writes it) against the same shape in FP16: F.linear
(cuBLAS) and F.conv2d (cuDNN, NCHW and channels-last, benchmark mode, the faster one
counted). The operands are random codes and scales built directly as kernel operands (the
speed of a GEMM does not depend on where its codes came from), but never zeros, and every
shape is first checked against a float64 reference of the same operands, so a fast wrong
kernel cannot pass as a result.

Timing: each sample replays a CUDA graph of R calls on R distinct operand sets, R chosen so
the sets together exceed twice the L2 cache (every call reads its operands from memory, as
in a network, not from a warm cache), timed with CUDA events; per call = sample / R; the
median of `runs` samples. The graph takes the host's launch overhead out of both sides.
The activation quantization (kernels/act_quant.py) that feeds a real layer's GEMM is timed
beside it, so both the kernel ratio and the layer ratio can be read.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .gpu_timing import graphed, is_cuda, l2_bytes, time_calls

ACT_ZERO = 121  # a uint8 activation zero point away from 128, so every zero-point term of the GEMM is non-zero
SCALE = 2.0 ** -14  # keeps fp16 outputs of K = 11520 random int8 dot products inside fp16's range
MAX_SETS = 64
CHECK_TOLERANCE = 1e-2  # relative L2 error; fp16 output rounding is ~5e-4, an indexing bug is ~1


@dataclass(frozen=True)
class Shape:
    kind: str  # "linear" or "conv" (3x3, stride 1, padding 1)
    rows: int  # linear: tokens; conv: H (W = H)
    cin: int
    cout: int
    where: str
    large: bool | None = None  # None: by LARGE_FLOPS; the dry run marks one of its shapes to judge it

    @property
    def spatial(self) -> tuple[int, int] | None:
        return (self.rows, self.rows) if self.kind == "conv" else None

    @property
    def positions(self) -> int:
        return self.rows * self.rows if self.kind == "conv" else self.rows

    @property
    def taps(self) -> int:
        return 9 if self.kind == "conv" else 1

    @property
    def flops(self) -> int:
        return 2 * self.positions * self.cout * self.cin * self.taps

    @property
    def label(self) -> str:
        if self.kind == "conv":
            return f"conv3x3 {self.rows}x{self.rows} {self.cin}->{self.cout}"
        return f"linear M={self.rows} K={self.cin} N={self.cout}"


# the sd21 UNet at the 64x64 latent tile (4096 / 1024 / 256 tokens at its three attention levels)
SD21_SHAPES = (
    Shape("linear", 4096, 320, 2560, "64x64 level: GEGLU proj (320 -> 2x1280)"),
    Shape("linear", 4096, 1280, 320, "64x64 level: feed-forward out"),
    Shape("linear", 1024, 640, 5120, "32x32 level: GEGLU proj (640 -> 2x2560)"),
    Shape("linear", 1024, 2560, 640, "32x32 level: feed-forward out"),
    Shape("linear", 256, 1280, 10240, "16x16 level: GEGLU proj (1280 -> 2x5120)"),
    Shape("linear", 4096, 320, 320, "64x64 level: attention q/k/v/out, proj_in/out"),
    Shape("conv", 64, 320, 320, "64x64 resnet conv (down 0, up 3)"),
    Shape("conv", 32, 640, 640, "32x32 resnet conv (down 1, up 2)"),
    Shape("conv", 32, 320, 640, "32x32 first resnet conv of down 1"),
    Shape("conv", 16, 1280, 1280, "16x16 resnet conv (down 2, up 1)"),
)
# the dry run: the same code on shapes the interpreter runs in seconds (K tails included)
DRY_SHAPES = (
    Shape("linear", 64, 48, 32, "dry run (stands in for a large shape)", large=True),
    Shape("linear", 40, 64, 48, "dry run"),
    Shape("conv", 8, 16, 32, "dry run"),
)
LARGE_FLOPS = 3e9  # "the UNet's large shapes" of the GEMM target: the linear shapes of >= 3 GFLOP


def is_large(shape: Shape) -> bool:
    if shape.large is not None:
        return shape.large
    return shape.kind == "linear" and shape.flops >= LARGE_FLOPS


# -- operands --------------------------------------------------------------------------------

def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """(N, taps, C) codes in [0, 2^bits) -> the container bytes (N, taps, row_bytes), each
    row padded to whole 4-code words for int6: the layout of the triton target's pack_codes,
    through the project's own packer (export/ir/packing.py)."""
    from passion_deploy.export.ir import packing

    n, taps, c = codes.shape
    pad = -c % 4 if bits == 6 else 0
    padded = torch.cat([codes, codes.new_zeros(n, taps, pad)], dim=2).cpu().numpy()
    # unsigned grid: pack stores u = q - 0, i.e. the codes themselves
    return torch.from_numpy(packing.pack(padded, bits, signed=False).reshape(n, taps, -1))


@dataclass
class IntOperands:
    a: torch.Tensor  # (1, P, C) uint8
    codes: torch.Tensor | None  # (N, taps, C) int64 codes (kept for the reference check only)
    weights: object  # kernels.operands.PackedWeights
    epilogue: object  # kernels.operands.Epilogue

    @property
    def nbytes(self) -> int:
        return self.a.numel() + self.weights.data.numel()


def int_operands(shape: Shape, bits: int, dev: torch.device, gen: torch.Generator, exact: bool) -> IntOperands:
    """Random operands of one GEMM launch. `exact`: codes packed by the project's packer and
    the column sums that match them (the checked set); otherwise random container bytes (every
    byte pattern is a valid container) for the timing sets, which are built many times over."""
    from passion_deploy.kernels.operands import Epilogue, PackedWeights

    n, taps, c = shape.cout, shape.taps, shape.cin
    offset = -(1 << (bits - 1))  # operand = container code - 2^(b-1): int8 for both widths
    zb = torch.randint(-3, 4, (1, n), generator=gen, dtype=torch.int32)
    if exact:
        codes = torch.randint(0, 1 << bits, (n, taps, c), generator=gen)
        data = pack_codes(codes, bits)[None]
        colsum = (codes + offset).sum(dim=(1, 2)).to(torch.int32)[None]
    else:
        codes = None
        row_bytes = c if bits == 8 else 3 * ((c + 3) // 4)
        data = torch.randint(0, 256, (1, n, taps, row_bytes), generator=gen, dtype=torch.uint8)
        colsum = torch.randint(-1000, 1000, (1, n), generator=gen, dtype=torch.int32)
    weights = PackedWeights(data, bits, offset, (c,), taps, zb, colsum, np.zeros((1, n), np.int64),
                            np.ones((1, n), np.float32)).to(dev)
    ep = Epilogue(torch.tensor([ACT_ZERO], dtype=torch.int32), torch.full((1, n), SCALE),
                  None, torch.randn(n, generator=gen), None).to(dev)
    a = torch.randint(0, 256, (1, shape.positions, c), generator=gen, dtype=torch.uint8).to(dev)
    return IntOperands(a, codes, weights, ep)


def act_operand():
    from passion_deploy.kernels.operands import ActOperand

    return ActOperand("u8", 1.0, ACT_ZERO, 0, 255, ACT_ZERO, 0)


def int_gemm(shape: Shape, ops: IntOperands, fdt: torch.dtype):
    """The GEMM launch of one layer, as the triton runtime makes it (KernelLayer.conv/linear)."""
    from passion_deploy.kernels.gemm import qgemm

    aop = [act_operand()]
    if shape.kind == "linear":
        return lambda: qgemm(ops.a, aop, ops.weights, ops.epilogue, out_dtype=fdt)
    n, (h, w) = shape.cout, shape.spatial

    def conv():
        y = torch.empty((1, n, h, w), dtype=fdt, device=ops.a.device)
        out = y.view(1, n, h * w).transpose(1, 2)  # NCHW written through the channels-last view
        qgemm(ops.a, aop, ops.weights, ops.epilogue, (h, w), (3, 3), 1, 1, fdt, out=out)
        return y
    return conv


def act_quant_call(shape: Shape, dev: torch.device, fdt: torch.dtype, gen: torch.Generator):
    """(call, bytes) of the activation quantization in front of the GEMM, on a fresh float
    input (a conv's NCHW input read channels-last, as KernelLayer.conv reads it)."""
    from passion_deploy.kernels.act_quant import act_quant

    aop = [act_operand()]
    if shape.kind == "conv":
        x = torch.randn(1, shape.cin, *shape.spatial, generator=gen).to(dev, fdt)
        x3 = x.reshape(1, shape.cin, shape.positions).transpose(1, 2)
    else:
        x = x3 = torch.randn(1, shape.positions, shape.cin, generator=gen).to(dev, fdt)
    return (lambda: act_quant(x3, aop)), x.nbytes


def reference(shape: Shape, ops: IntOperands) -> torch.Tensor:
    """float64 result of the same operands, (P, N): sum (a - za)(b - zb) * scale + bias."""
    a = ops.a[0].double() - ACT_ZERO  # (P, C)
    b = (ops.codes.to(ops.a.device) + ops.weights.offset - ops.weights.zero[0].long()[:, None, None]).double()
    if shape.kind == "linear":
        y = a @ b[:, 0, :].T
    else:
        h, w = shape.spatial
        wt = b.reshape(shape.cout, 3, 3, shape.cin).permute(0, 3, 1, 2)  # taps are (kh, kw)-ordered
        y = F.conv2d(a.T.reshape(1, shape.cin, h, w), wt, padding=1).reshape(shape.cout, -1).T
    return y * SCALE + ops.epilogue.bias.double()


def check(shape: Shape, bits: int, dev: torch.device, fdt: torch.dtype, gen: torch.Generator) -> float:
    """Relative L2 error of the kernel against the float64 reference on fresh operands."""
    ops = int_operands(shape, bits, dev, gen, exact=True)
    y = int_gemm(shape, ops, fdt)()
    got = y[0] if shape.kind == "linear" else y[0].reshape(shape.cout, -1).T
    want = reference(shape, ops)
    if not torch.isfinite(got).all():
        return math.inf
    return float(torch.linalg.norm(got.double() - want) / torch.linalg.norm(want))


# -- float baselines -------------------------------------------------------------------------

def fp_call(shape: Shape, dev: torch.device, fdt: torch.dtype, gen: torch.Generator, layout: str):
    """(call, bytes of one operand set) of the float layer: F.linear, or F.conv2d NCHW /
    channels-last, with weights scaled as a trained layer's would be."""
    n, c = shape.cout, shape.cin
    bias = torch.randn(n, generator=gen).to(dev, fdt)
    if shape.kind == "linear":
        x = torch.randn(shape.positions, c, generator=gen).to(dev, fdt)
        w = (torch.randn(n, c, generator=gen) * c ** -0.5).to(dev, fdt)
        return (lambda: F.linear(x, w, bias)), x.nbytes + w.nbytes
    h, wd = shape.spatial
    x = torch.randn(1, c, h, wd, generator=gen).to(dev, fdt)
    w = (torch.randn(n, c, 3, 3, generator=gen) * (9 * c) ** -0.5).to(dev, fdt)
    if layout == "channels_last":
        x, w = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
    return (lambda: F.conv2d(x, w, bias, padding=1)), x.nbytes + w.nbytes


# -- timing ----------------------------------------------------------------------------------

def sets_needed(set_bytes: int, dev: torch.device) -> int:
    """Operand sets to rotate through so that together they exceed twice the L2 (1 on a CPU)."""
    l2 = l2_bytes(dev)
    return 1 if l2 == 0 else int(min(MAX_SETS, max(1, math.ceil(2 * l2 / max(set_bytes, 1)))))


def time_rotated(make, dev: torch.device, runs: int) -> dict:
    """make() -> (call, bytes of its operand set); times one call per set over the rotation, in
    a CUDA graph when it captures (else eagerly, said in the record)."""
    first, nbytes = make()
    calls = [first] + [make()[0] for _ in range(sets_needed(nbytes, dev) - 1)]

    def all_sets():
        for c in calls:
            c()
    all_sets()  # compiles (Triton) / picks algorithms (cuDNN benchmark mode) before any timing
    mode = "eager"
    fn = all_sets
    if is_cuda(dev):
        try:
            fn, mode = graphed(all_sets, dev), "cuda_graph"
        except Exception as e:  # noqa: BLE001 - recorded; eager timing still measures the kernel
            mode = f"eager (graph capture failed: {type(e).__name__}: {e})"
    rec = time_calls(fn, dev, runs, warmup=1, per_call=len(calls))
    rec.update(operand_sets=len(calls), mode=mode)
    return rec


def tops(flops: int, rec: dict) -> float:
    return flops / rec["median_s"] / 1e12


def bench_int(shape: Shape, bits: int, ctx, gen: torch.Generator) -> dict:
    dev, fdt = ctx.device, ctx.fdt

    def make_gemm():
        ops = int_operands(shape, bits, dev, gen, exact=False)
        return int_gemm(shape, ops, fdt), ops.nbytes

    rec = {"check_rel_err": check(shape, bits, dev, fdt, gen)}
    rec["check_passed"] = rec["check_rel_err"] <= CHECK_TOLERANCE
    rec["gemm"] = time_rotated(make_gemm, dev, ctx.sizes.kernel_runs)
    rec["gemm"]["tops"] = tops(shape.flops, rec["gemm"])
    # the same for both widths (it writes the activation operand), timed once per shape in bench_shape
    return rec


def bench_fp(shape: Shape, ctx, gen: torch.Generator) -> dict:
    layouts = ("default",) if shape.kind == "linear" else ("nchw", "channels_last")
    rec = {}
    for layout in layouts:
        rec[layout] = time_rotated(lambda: fp_call(shape, ctx.device, ctx.fdt, gen, layout), ctx.device,
                                   ctx.sizes.kernel_runs)
        rec[layout]["tops"] = tops(shape.flops, rec[layout])
    best = min(layouts, key=lambda k: rec[k]["median_s"])
    rec["best"] = best
    rec["median_s"] = rec[best]["median_s"]
    rec["library"] = "cuBLAS (F.linear)" if shape.kind == "linear" else f"cuDNN (F.conv2d, {best})"
    return rec


def bench_shape(shape: Shape, ctx, gen: torch.Generator) -> dict:
    rec = {"shape": shape.label, "kind": shape.kind, "where": shape.where, "flops": shape.flops,
           "large": is_large(shape), "fp": bench_fp(shape, ctx, gen)}
    fp_s = rec["fp"]["median_s"]
    rec["act_quant"] = time_rotated(lambda: act_quant_call(shape, ctx.device, ctx.fdt, gen), ctx.device,
                                    ctx.sizes.kernel_runs)
    for bits in (8, 6):
        r = bench_int(shape, bits, ctx, gen)
        r["speedup_vs_fp"] = fp_s / r["gemm"]["median_s"]
        r["speedup_vs_fp_with_act_quant"] = fp_s / (r["gemm"]["median_s"] + rec["act_quant"]["median_s"])
        rec[f"int{bits}"] = r
    return rec


def kernel_benchmark(ctx) -> dict:
    """Every shape in turn, each guarded: a shape that fails is recorded and the next one runs."""
    import traceback

    torch.backends.cudnn.benchmark = True  # cuDNN's fastest algorithm per shape: the baseline at its best
    gen = torch.Generator().manual_seed(0)
    shapes = ctx.sizes.kernel_shapes
    method = __doc__.split("\n\n")[2].replace("\n", " ")
    if not is_cuda(ctx.device):
        method = "Dry run: one eager call per sample on the host clock (Triton's interpreter), nothing rotated."
    rec = {"float_dtype": str(ctx.fdt).replace("torch.", ""), "method": method,
           "check_tolerance": CHECK_TOLERANCE, "large_shape_rule": f"linear shapes of >= {LARGE_FLOPS / 1e9:g} GFLOP",
           "shapes": [], "skipped": []}
    end = ctx.budget.elapsed() + ctx.budget.cap(ctx.sizes.kernel_cap_s, reserve=ctx.sizes.reserve_after_kernels_s)
    for i, shape in enumerate(shapes):
        if ctx.budget.elapsed() >= end:
            rec["skipped"] = [s.label for s in shapes[i:]]
            rec["skipped_why"] = "budget"
            break
        ctx.log(f"gpu-check: kernels {shape.label}")
        try:
            rec["shapes"].append(bench_shape(shape, ctx, gen))
        except Exception as e:  # noqa: BLE001 - one shape's failure is a result, the others still run
            rec["shapes"].append({"shape": shape.label, "kind": shape.kind, "error": f"{type(e).__name__}: {e}",
                                  "traceback": traceback.format_exc()})
            ctx.problem(f"kernels/{shape.label}", e)
    return rec
