"""The integer GEMM and implicit-GEMM conv (gemm.qgemm) against FP16 cuBLAS / cuDNN: reference
check and perf report together, as Triton's tutorials keep a kernel's benchmark.

    python -m passion_deploy.kernels.bench [--dry-run] [--runs 20]     (the GPU check runs it too)

For each sd21 UNet shape at the 64x64 latent tile, int8 and int6 weights through `qgemm` (the
shape class's GPU launch, fp16 output, a conv written NCHW as the triton runtime writes it)
against the same layer in FP16: F.linear (cuBLAS) and F.conv2d (cuDNN in benchmark mode, NCHW
and channels-last, the faster counted). The operands are random kernel operands (a GEMM's speed
does not depend on where its codes came from), never zeros, and each shape is first checked
against `reference.qgemm_ref` on the same bytes, so a fast wrong kernel cannot pass as a result.

Timing (passion_deploy/measure.py, CUDA events): each sample replays a CUDA graph of R calls on
R distinct operand sets, R chosen so that together they exceed twice the L2 cache (every call
reads its operands from memory, as in a network, not from a warm cache); per call = sample / R;
the variants alternate. The activation quantization (act_quant.py) that feeds a real layer's
GEMM is timed beside it, so both the kernel ratio and the layer ratio can be read.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .operands import ActOperand, Epilogue, PackedWeights
from .reference import RefWeights, qgemm_ref

ACT_ZERO = 121  # a uint8 activation zero point away from 128: every zero-point term of the GEMM is non-zero
SCALE = 2.0 ** -14  # keeps fp16 outputs of K = 11520 random int8 dot products inside fp16's range
MAX_SETS = 64
CHECK_TOLERANCE = 1e-2  # relative L2 error; fp16 output rounding is ~5e-4, an indexing bug is ~1
LARGE_FLOPS = 3e9  # "the UNet's large shapes" of the GEMM target: the linear shapes of >= 3 GFLOP
ACT = ActOperand("u8", 1.0, ACT_ZERO, 0, 255, ACT_ZERO, 0)


@dataclass(frozen=True)
class Shape:
    kind: str  # "linear" or "conv" (3x3, stride 1, padding 1)
    rows: int  # linear: tokens; conv: H (= W)
    cin: int
    cout: int
    where: str
    large: bool | None = None  # None: by LARGE_FLOPS; the dry run marks one shape to exercise the verdict

    @property
    def taps(self) -> int:
        return 9 if self.kind == "conv" else 1

    @property
    def positions(self) -> int:
        return self.rows * self.rows if self.kind == "conv" else self.rows

    @property
    def flops(self) -> int:
        return 2 * self.positions * self.cout * self.cin * self.taps

    @property
    def is_large(self) -> bool:
        return self.large if self.large is not None else self.kind == "linear" and self.flops >= LARGE_FLOPS

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
# the same code on shapes Triton's interpreter runs in seconds (K tails included)
DRY_SHAPES = (Shape("linear", 64, 48, 32, "dry run", large=True), Shape("linear", 40, 64, 48, "dry run"),
              Shape("conv", 8, 16, 32, "dry run"))


# -- the kernel and its reference --------------------------------------------------------------

def operands(shape: Shape, bits: int, dev, gen: torch.Generator) -> tuple[torch.Tensor, PackedWeights, Epilogue]:
    """Random operands of one launch: activations, container bytes (every byte pattern is a valid
    container: int8 one code a byte, int6 four codes in three bytes, rows padded to whole words)
    and the column sums that match their codes."""
    n, taps, c = shape.cout, shape.taps, shape.cin
    row_bytes = c if bits == 8 else 3 * ((c + 3) // 4)
    data = torch.randint(0, 256, (1, n, taps, row_bytes), generator=gen, dtype=torch.uint8)
    offset = -(1 << (bits - 1))  # operand = container code - 2^(b-1): int8 for both widths
    colsum = (codes(data[0], bits, c) + offset).sum(dim=(1, 2)).to(torch.int32)[None]
    zb = torch.randint(-3, 4, (1, n), generator=gen, dtype=torch.int32)
    w = PackedWeights(data, bits, offset, (c,), taps, zb, colsum, np.zeros((1, n), np.int64), np.full((1, n), SCALE, np.float32))
    ep = Epilogue(torch.tensor([ACT_ZERO], dtype=torch.int32), torch.full((1, n), SCALE), None, torch.randn(n, generator=gen), None)
    a = torch.randint(0, 256, (1, shape.positions, c), generator=gen, dtype=torch.uint8)
    return a.to(dev), w.to(dev), ep.to(dev)


def codes(data: torch.Tensor, bits: int, c: int) -> torch.Tensor:
    """(N, taps, row_bytes) container bytes -> (N, taps, c) int64 codes (the reference reads the
    documented container, never the kernel's unpacking): code i of a 3-byte word is bits 6i..6i+5
    of b0 | b1 << 8 | b2 << 16."""
    d = data.long()
    if bits == 8:
        return d[..., :c]
    b = d.reshape(*d.shape[:-1], -1, 3)
    word = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
    return torch.stack([(word >> (6 * i)) & 63 for i in range(4)], dim=-1).flatten(-2)[..., :c]


def launcher(shape: Shape, a: torch.Tensor, w: PackedWeights, ep: Epilogue, fdt: torch.dtype):
    """The GEMM launch of one layer as the triton runtime makes it (KernelLayer.conv / linear)."""
    from .gemm import qgemm

    if shape.kind == "linear":
        return lambda: qgemm(a, [ACT], w, ep, out_dtype=fdt)
    n, h = shape.cout, shape.rows

    def conv():
        y = torch.empty((1, n, h, h), dtype=fdt, device=a.device)
        qgemm(a, [ACT], w, ep, (h, h), (3, 3), 1, 1, fdt, out=y.view(1, n, h * h).transpose(1, 2))  # NCHW, no copy
        return y
    return conv


def check(shape: Shape, bits: int, dev, fdt: torch.dtype, gen: torch.Generator) -> float:
    """Relative L2 error of the kernel against reference.qgemm_ref on fresh operands."""
    a, w, ep = operands(shape, bits, dev, gen)
    y = launcher(shape, a, w, ep, fdt)()
    got = y[0] if shape.kind == "linear" else y[0].reshape(shape.cout, -1).T
    values = codes(w.data[0].cpu(), bits, shape.cin) + w.offset  # (N, taps, C), taps (kh, kw)-ordered
    if shape.kind == "conv":
        values = values.reshape(shape.cout, 3, 3, shape.cin).permute(0, 3, 1, 2)
    else:
        values = values[:, 0]
    ref = RefWeights(0, shape.cin, values.numpy(), w.zero[0].cpu().numpy(), w.residual[0], w.step[0])
    spatial = (shape.rows, shape.rows) if shape.kind == "conv" else None
    want = qgemm_ref(a.cpu(), [ACT], [ref], spatial, 1, 1 if spatial else 0, ep.bias.cpu())[2][0]
    if not torch.isfinite(got).all():
        return math.inf
    return float(torch.linalg.norm(got.double().cpu() - want) / torch.linalg.norm(want))


def act_quant_call(shape: Shape, dev, fdt: torch.dtype, gen: torch.Generator):
    """(call, bytes) of the activation quantization in front of the GEMM (a conv's NCHW input read
    channels-last, as KernelLayer.conv reads it)."""
    from .act_quant import act_quant

    if shape.kind == "conv":
        x = torch.randn(1, shape.cin, shape.rows, shape.rows, generator=gen).to(dev, fdt)
        x3 = x.reshape(1, shape.cin, shape.positions).transpose(1, 2)
    else:
        x = x3 = torch.randn(1, shape.positions, shape.cin, generator=gen).to(dev, fdt)
    return (lambda: act_quant(x3, [ACT])), x.nbytes


def float_call(shape: Shape, dev, fdt: torch.dtype, gen: torch.Generator, channels_last: bool):
    """(call, bytes) of the same layer in float, weights scaled as a trained layer's would be."""
    n, c = shape.cout, shape.cin
    bias = torch.randn(n, generator=gen).to(dev, fdt)
    if shape.kind == "linear":
        x = torch.randn(shape.positions, c, generator=gen).to(dev, fdt)
        w = (torch.randn(n, c, generator=gen) * c ** -0.5).to(dev, fdt)
        return (lambda: F.linear(x, w, bias)), x.nbytes + w.nbytes
    x = torch.randn(1, c, shape.rows, shape.rows, generator=gen).to(dev, fdt)
    w = (torch.randn(n, c, 3, 3, generator=gen) * (9 * c) ** -0.5).to(dev, fdt)
    if channels_last:
        x, w = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
    return (lambda: F.conv2d(x, w, bias, padding=1)), x.nbytes + w.nbytes


# -- timing ------------------------------------------------------------------------------------

def rotated(make, dev) -> tuple[object, int, str]:
    """make() -> (call, bytes of its operand set). Returns (one call over R sets, R, how it runs):
    R sets exceed twice the L2 together; on a GPU replayed from a CUDA graph (the host's launch
    overhead out of both sides), eagerly where capture fails (said in the record)."""
    first, nbytes = make()
    cuda = torch.device(dev).type == "cuda"
    l2 = int(getattr(torch.cuda.get_device_properties(dev), "L2_cache_size", 50 << 20)) if cuda else 0
    sets = 1 if not l2 else int(min(MAX_SETS, max(1, math.ceil(2 * l2 / max(nbytes, 1)))))
    calls = [first] + [make()[0] for _ in range(sets - 1)]

    def all_sets():
        for c in calls:
            c()
    all_sets()  # compiles (Triton), picks algorithms (cuDNN benchmark mode) before any capture
    if not cuda:
        return all_sets, sets, "eager, host clock"
    try:
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            all_sets()  # a warm-up on the capture's stream, as torch.cuda.graphs recommends
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            all_sets()
        return graph.replay, sets, "cuda_graph"
    except Exception as e:  # noqa: BLE001 - recorded; eager timing still measures the kernel
        return all_sets, sets, f"eager (graph capture failed: {type(e).__name__}: {e})"


def bench_shape(shape: Shape, dev, fdt: torch.dtype, runs: int, gen: torch.Generator) -> dict:
    """One shape: the reference checks, then every variant timed in alternation."""
    from passion_deploy.measure import time_alternating

    makers = {"fp_nchw" if shape.kind == "conv" else "fp": lambda: float_call(shape, dev, fdt, gen, False)}
    if shape.kind == "conv":
        makers["fp_channels_last"] = lambda: float_call(shape, dev, fdt, gen, True)
    for bits in (8, 6):
        makers[f"int{bits}"] = lambda bits=bits: (launcher(shape, *operands(shape, bits, dev, gen), fdt),
                                                 shape.positions * shape.cin + shape.cout * shape.taps * shape.cin * bits // 8)
    makers["act_quant"] = lambda: act_quant_call(shape, dev, fdt, gen)
    rec = {"shape": shape.label, "kind": shape.kind, "where": shape.where, "flops": shape.flops, "large": shape.is_large,
           "check_rel_err": {f"int{b}": check(shape, b, dev, fdt, gen) for b in (8, 6)}}
    rec["check_passed"] = all(e <= CHECK_TOLERANCE for e in rec["check_rel_err"].values())
    calls, units, modes = {}, {}, {}
    for name, make in makers.items():
        calls[name], units[name], modes[name] = rotated(make, dev)
    times = time_alternating(calls, runs, warmup=1, device=dev, device_clock=True, units=units)
    for name, t in times.items():
        t.update(operand_sets=units[name], mode=modes[name], tops=shape.flops / t["median_s"] / 1e12)
    fp = min((n for n in times if n.startswith("fp")), key=lambda n: times[n]["median_s"])
    fp_s, aq_s = times[fp]["median_s"], times["act_quant"]["median_s"]
    rec.update(times=times, fp_best=fp, library="cuBLAS (F.linear)" if shape.kind == "linear" else f"cuDNN (F.conv2d, {fp[3:]})",
               speedup={"int8": fp_s / times["int8"]["median_s"], "int6": fp_s / times["int6"]["median_s"],
                        "int8_with_act_quant": fp_s / (times["int8"]["median_s"] + aq_s)})
    return rec


def benchmark(shapes=SD21_SHAPES, device="cuda", fdt: torch.dtype = torch.float16, runs: int = 20,
              deadline=None, log=print) -> dict:
    """Every shape in turn, each guarded (a shape that fails is recorded and the next one runs);
    `deadline()`: True when no further shape should start."""
    import traceback

    torch.backends.cudnn.benchmark = True  # cuDNN's fastest algorithm per shape: the baseline at its best
    gen = torch.Generator().manual_seed(0)
    cuda = torch.device(device).type == "cuda"
    method = __doc__.split("\n\n")[3].replace("\n", " ") if cuda else "no GPU: one eager call per sample on the host clock"
    rec = {"float_dtype": str(fdt).replace("torch.", ""), "method": method, "check_tolerance": CHECK_TOLERANCE,
           "large_shape_rule": f"linear shapes of >= {LARGE_FLOPS / 1e9:g} GFLOP", "shapes": [], "not_run": []}
    for i, shape in enumerate(shapes):
        if deadline is not None and deadline():
            rec["not_run"] = [s.label for s in shapes[i:]]
            break
        log(f"kernels: {shape.label}")
        try:
            rec["shapes"].append(bench_shape(shape, device, fdt, runs, gen))
        except Exception as e:  # noqa: BLE001 - one shape's failure is a result, the others still run
            rec["shapes"].append({"shape": shape.label, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
    return rec


def table(rec: dict) -> list[str]:
    """The perf report: a Markdown table, ratios = float time / integer time."""
    lines = [f"Float columns: {rec['float_dtype']}. Ratios (x): float time / integer time. {rec['method']}", "",
             "| shape | float ms | float TOPS | int8 ms | int8 TOPS | int8 x | int8+quant x | int6 ms | int6 x | "
             "act_quant ms | check rel err (8 / 6) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for s in rec["shapes"]:
        if "error" in s:
            lines.append(f"| {s['shape']} | failed: {s['error'][:150]} |||||||||| ")
            continue
        t, x, err = s["times"], s["speedup"], s["check_rel_err"]
        fp, i8, i6 = t[s["fp_best"]], t["int8"], t["int6"]
        lines.append(f"| {s['shape']}{' **(large)**' if s['large'] else ''} | {fp['median_s'] * 1e3:.3f} | {fp['tops']:.2f} | "
                     f"{i8['median_s'] * 1e3:.3f} | {i8['tops']:.2f} | {x['int8']:.2f} | {x['int8_with_act_quant']:.2f} | "
                     f"{i6['median_s'] * 1e3:.3f} | {x['int6']:.2f} | {t['act_quant']['median_s'] * 1e3:.3f} | "
                     f"{err['int8']:.1e} / {err['int6']:.1e} |")
    if rec.get("not_run"):
        lines.append(f"\nNot run (the budget): {', '.join(rec['not_run'])}")
    return lines


def main(argv: list[str] | None = None) -> int:
    import argparse

    from . import use_interpreter_without_gpu

    p = argparse.ArgumentParser(prog="python -m passion_deploy.kernels.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="small shapes in Triton's interpreter, FP32 (timings meaningless)")
    p.add_argument("--runs", type=int, default=20)
    args = p.parse_args(argv)
    gpu = not use_interpreter_without_gpu()
    if not gpu and not args.dry_run:
        raise SystemExit("kernels.bench: no CUDA GPU here (the kernels would run in Triton's interpreter); "
                         "--dry-run runs the same code on small shapes")
    rec = benchmark(DRY_SHAPES if args.dry_run else SD21_SHAPES, "cuda" if gpu else "cpu",
                    torch.float16 if gpu else torch.float32, args.runs)
    print("\n".join(table(rec)))
    return 0 if all(s.get("check_passed") for s in rec["shapes"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
