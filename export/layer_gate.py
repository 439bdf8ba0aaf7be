"""--verify's gate: each quantized layer of the artifact, by itself, against the fake-quant layer.

Each conv, linear and attention core is cut out of the artifact (export/layer_cut.py, or the
runtime's own module) and fed the fake-quant model's own input to that layer on the probe
photos; its output is held against the fake-quant layer's output on that input. Inputs are the
reference's, so one layer's error never reaches the next: the result does not depend on how
chaotic the model is end to end.

An element passes when it is within float precision of the layer's output range:
|out - ref| <= FLOAT_TOLERANCE * max|ref| (exact integer arithmetic leaves only float rounding:
summation order, one fused multiply-add, the border-map form of the LET correction; measured
at most ~2e-7 of the range). The only other difference an exact implementation can show is an
activation code decided differently at a rounding boundary: a value within a few float32 ulps
of a half step (TIE_ULPS), where a last-bit difference in x/D, or ONNX QuantizeLinear's
ties-to-even against LBQ's half away from zero, picks the neighbouring code. Such an element is
a *boundary element* when its error is within what the boundary codes that reach it can cause
(one activation code: D_a * max|w^| of its output channel for a conv or linear; for an attention
core, through softmax, with the P codes a moved score can carry across a half step counted) and the layer's input has such codes in the
element's window (conv), row (linear) or head (attention). A layer passes when no element is
beyond float precision without that explanation and its boundary codes are at most
BOUNDARY_SHARE of its activation codes. A wrong weight code, a wrong LET offset, a wrong scale
leave elements that nothing explains: the layer fails, by name.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from passion_deploy.quant.attention import reciprocal
from passion_deploy.quant.layers import QuantConv, QuantLayer, split_point

FLOAT_TOLERANCE = 2.0**-14  # of the layer's output range (max |ref|)
TIE_ULPS = 16  # a code within this many float32 ulps (near_tie: of the largest term, at least 1) of a half step is at a boundary
BOUNDARY_SHARE = 0.01  # of a layer's activation codes
BOUND_SLACK = 1.01


def near_tie(v: torch.Tensor, magnitude: torch.Tensor | float | None = None) -> torch.Tensor:
    """Where v = x / D is within TIE_ULPS float32 ulps of a half step (a rounding boundary). The
    ulps are of max(|v|, 1), or of `magnitude` where larger: the largest term, in code units, of
    the expression an engine may evaluate instead of the fake-quant's (x - o) / s / D. OpenVINO's
    FakeQuantize folds the LET transform and the zero point into one x * a + b and rounds the
    unsigned code q = v + zp, so it rounds relative to |x| / (s D), |o| / (s D) and |v| + |zp|
    (measured on the tiny UNet's int8 graph: codes 40 ulps of |v| from a half step moved)."""
    a = v.double().abs()
    frac = a - torch.floor(a)
    scale = torch.clamp(a, min=1.0)
    if magnitude is not None:
        scale = torch.maximum(scale, torch.as_tensor(magnitude, dtype=torch.float64))
    return (frac - 0.5).abs() <= TIE_ULPS * 2.0**-23 * scale


def _steps(quantizers) -> list[float]:
    return [float(q.step_and_zero_point()[0]) for q in quantizers]


def _zero_points(quantizers) -> list[float]:
    return [abs(float(q.step_and_zero_point()[1])) for q in quantizers]


@torch.no_grad()
def layer_ties(layer: QuantLayer, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(boundary mask over the layer's activation codes, the largest activation step), with the
    input transform and split of the layer's own forward (spec 3)."""
    if layer.a_quant is None:
        return torch.zeros_like(x, dtype=torch.bool), 0.0
    xs = layer.transform_input(x) if layer.use_let else x  # a 1x1-conv-form linear gets its tokens here
    # the expression's largest terms before the division by D: |x| / s and |o| / s of the LET transform
    terms = xs.abs()
    if layer.use_let:
        view = lambda t: layer._channel_view(t, x.dim()).abs()
        terms = torch.maximum(x.abs(), view(layer.let_offset)) / view(layer.let_scale)
    ds, zps = _steps(layer.a_quant), _zero_points(layer.a_quant)

    def per_grid(f):
        """f(t, D, zp) on each split half with its own grid, concatenated back (spec 3's split)."""
        if len(ds) == 1:
            return lambda t: f(t, ds[0], zps[0])
        h = split_point(xs.shape[1])
        return lambda t: torch.cat([f(t[:, :h], ds[0], zps[0]), f(t[:, h:], ds[1], zps[1])], dim=1)

    v = per_grid(lambda t, d, _zp: t / torch.tensor(d, dtype=t.dtype))(xs)
    magnitude = torch.maximum(per_grid(lambda t, d, _zp: t.double() / d)(terms),
                              v.double().abs() + per_grid(lambda t, _d, zp: torch.full_like(t, zp, dtype=torch.float64))(v))
    return near_tie(v, magnitude), max(ds)


def _window_counts(layer: QuantConv, ties: torch.Tensor) -> torch.Tensor:
    """Boundary codes in each output position's receptive field: (B, 1, *out_spatial)."""
    per_pixel = ties.sum(dim=1, keepdim=True).double()
    ones = torch.ones((1, 1) + tuple(layer.weight.shape[2:]), dtype=torch.float64)
    return F.conv2d(per_pixel, ones, None, layer.stride, layer.padding, layer.dilation)


def _reached_codes(layer: QuantConv, ties: torch.Tensor, fail_pos: torch.Tensor) -> int:
    """Boundary codes inside the receptive field of some failing output position."""
    inp = torch.zeros((ties.shape[0], 1) + tuple(ties.shape[2:]), dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        ones = torch.ones((1, 1) + tuple(layer.weight.shape[2:]), dtype=torch.float64)
        y = F.conv2d(inp, ones, None, layer.stride, layer.padding, layer.dilation)
        (y * fail_pos.double()).sum().backward()
    return int((ties & (inp.grad > 0)).sum())


@torch.no_grad()
def judge_quant_layer(layer: QuantLayer, x: torch.Tensor, ref: torch.Tensor, out: torch.Tensor) -> dict:
    """Counts of one conv/linear layer on one input (module docstring)."""
    ties, da = layer_ties(layer, x)
    w = layer.quant_weight(layer.scaled_weight()).abs()
    wmax = w.reshape(w.shape[0], -1).amax(dim=1).double()  # per output channel
    conv = isinstance(layer, QuantConv) and ref.dim() == 4
    if conv:
        count = _window_counts(layer, ties)  # (B, 1, H', W')
        one_code = da * wmax.view(1, -1, 1, 1)
    else:
        count = ties.sum(dim=-1, keepdim=True).double()  # per token row
        one_code = da * wmax
    stats = compare(ref, out, count, one_code)
    if stats["beyond_float"]:
        fail = stats.pop("_fail")
        stats["boundary_codes"] = (_reached_codes(layer, ties, fail.any(dim=1, keepdim=True)) if conv
                                   else int((ties & fail.any(dim=-1, keepdim=True)).sum()))
    else:
        stats.pop("_fail")
        stats["boundary_codes"] = 0
    stats["codes"] = int(ties.numel())
    return stats


def compare(ref: torch.Tensor, out: torch.Tensor, count: torch.Tensor, one_code: torch.Tensor) -> dict:
    ref, out = ref.double(), out.double()
    err = (out - ref).abs()
    rng = float(ref.abs().max())
    tol = FLOAT_TOLERANCE * max(rng, 1e-30)
    fail = err > tol
    explained = fail & (count > 0) & (err <= BOUND_SLACK * count * one_code + tol)
    return {"elements": int(ref.numel()), "max_abs_err": float(err.max()) if err.numel() else 0.0,
            "max_rel_err": float(err.max()) / max(rng, 1e-30) if err.numel() else 0.0,
            "float_tolerance": tol, "beyond_float": int(fail.sum()), "boundary_elements": int(explained.sum()),
            "unexplained": int((fail & ~explained).sum()), "sum_sq_err": float((err**2).sum()),
            "sum_sq_ref": float((ref**2).sum()), "_fail": fail}


@torch.no_grad()
def _operand_ties(x: torch.Tensor, step: float, zero_point: float) -> torch.Tensor:
    """Boundary codes of one attention operand x / D: the ulps are of |v| + |zp|, the unsigned
    code an engine may round (as for a layer's input, layer_ties), or the zero-point-free
    operand v - shift it rounds instead (measured on the sd21 UNet's int8 MHA: a q code at
    0.5 + 16.5 ulps of 1, i.e. 4 ulps of its shifted value 3.5, moved)."""
    v = x / torch.tensor(step, dtype=x.dtype)
    return near_tie(v, v.double().abs() + zero_point)


def _score_flips(ps_codes: torch.Tensor, d_score: float) -> torch.Tensor:
    """Per row, how many P codes one changed q or k code can move: a score moved by at most
    d_score scales each P by at most exp(2 d_score) - 1 ~ 2 d_score, so only codes whose
    distance to a half step is within that share of their value (plus the tie band) can cross
    one (measured on sd21 cross-attention: one q code moved five P codes of its row)."""
    rows = []
    for chunk in ps_codes.split(1):  # one head at a time: sd21's self-attention P is 10 x 4096 x 4096
        a = chunk.double().abs()
        reach = math.expm1(2 * d_score) * a + TIE_ULPS * 2.0**-23 * torch.clamp(a, min=1.0)
        rows.append(((a - torch.floor(a) - 0.5).abs() <= reach).sum(-1, keepdim=True).double())
    return torch.cat(rows)  # (BH, N, 1)


@torch.no_grad()
def judge_attention(attn, proc, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ref: torch.Tensor,
                    out: torch.Tensor) -> dict:
    """Counts of one quantized attention core on (B, N, C) q, k, v (spec 4, the processor's order)."""
    qh, kh, vh = (attn.head_to_batch_dim(t) for t in (q, k, v))
    s_qk, s_vw = proc.s_qk.to(q.dtype), proc.s_vw.to(q.dtype)
    quantizers = [proc.q_quant, proc.k_quant, proc.v_quant, proc.p_quant]
    dq, dk, dv, dp = _steps(quantizers)
    zq, zk, zv, zp = _zero_points(quantizers)
    qs, ks, vs = qh * s_qk, kh * reciprocal(s_qk), vh * reciprocal(s_vw)[:, None]
    qq, kq, vq = proc.q_quant(qs), proc.k_quant(ks), proc.v_quant(vs)
    p = torch.softmax((qq @ kq.transpose(-1, -2)).float() * attn.scale, dim=-1).to(q.dtype)
    ps = p * s_vw
    pq = proc.p_quant(ps)
    t_q, t_k, t_v, t_p = (_operand_ties(a, d, z) for a, d, z in ((qs, dq, zq), (ks, dk, zk), (vs, dv, zv), (ps, dp, zp)))
    # boundary codes reaching output (bh, i, e): q and P ties of row i, any k tie of the head, v ties of channel e
    t_qk = t_q.sum(-1, keepdim=True) + t_k.sum((-2, -1), keepdim=True)
    count = (t_qk + t_p.sum(-1, keepdim=True) + t_v.sum(-2, keepdim=True)).double()  # (BH, N, d)
    # one q or k code moves each score of its row by at most dS: P by 2 dS of its value in sum, and
    # the P codes it carries across a half step by one step each (_score_flips); one P code moves
    # the output by D_p |v^|, one v code by |P^| D_v
    dS = attn.scale * max(dq * float(kq.abs().max()), dk * float(qq.abs().max()))
    vmax = float(vq.abs().max())
    flips = _score_flips(ps / torch.tensor(dp, dtype=ps.dtype), dS) if bool((t_qk > 0).any()) else torch.zeros(())
    one_code = (2 * dS * float(s_vw.abs().max()) + torch.clamp(flips, min=2.0) * dp) * vmax + float(pq.abs().max()) * dv
    stats = compare(attn.head_to_batch_dim(ref), attn.head_to_batch_dim(out), count, one_code)
    fail = stats.pop("_fail")
    heads = fail.any(dim=-1).any(dim=-1)  # (BH,)
    ties = [t.reshape(t.shape[0], -1).sum(1) for t in (t_q, t_k, t_v, t_p)]
    stats["boundary_codes"] = int(sum(int(tt[heads].sum()) for tt in ties)) if stats["beyond_float"] else 0
    stats["codes"] = int(sum(t.numel() for t in (t_q, t_k, t_v, t_p)))
    return stats


def merge(acc: dict | None, s: dict) -> dict:
    """Pool one probe's counts into a layer's row."""
    if acc is None:
        return dict(s)
    for k in ("elements", "beyond_float", "boundary_elements", "unexplained", "boundary_codes", "codes", "sum_sq_err", "sum_sq_ref"):
        acc[k] += s[k]
    for k in ("max_abs_err", "max_rel_err"):
        acc[k] = max(acc[k], s[k])
    return acc


def finish(row: dict) -> dict:
    """The pooled row with its SQNR and verdict."""
    noise, sig = row.pop("sum_sq_err"), row.pop("sum_sq_ref")
    row.pop("float_tolerance", None)
    row["sqnr_db"] = "inf" if noise == 0 else round(10 * math.log10(max(sig, 1e-30) / noise), 2)
    row["boundary_share"] = row["boundary_codes"] / max(row["codes"], 1)
    row["passed"] = row["unexplained"] == 0 and row["boundary_share"] <= BOUNDARY_SHARE
    return row


def as_tensor(a) -> torch.Tensor:
    return a if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a))
