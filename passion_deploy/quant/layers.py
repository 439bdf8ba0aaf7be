"""Quantized conv/linear layers with the Learnable Equivalent Transformation (spec section 3).

Each layer owns a per-input-channel scale `s` and offset `o`:

    conv    x' = (x - o)/s,  W' = W*s,  y = conv(Qa(x'), Qw(W'), Qb(b)) + conv(o, W)
    linear  x' = (x - o)/s,  W' = W*s,  y = Qa(x') Qw(W')^T + Qb(b) + W o
            (reference form: x' = (x + o)/s, still + W o, as PassionSR's public code does)

The conv correction `conv(o, W)` is a spatial map: constant inside, different on the rows
and columns where zero padding meets the offset. It is computed in PassionSR's order, as a conv
of the offset spread over the input's shape with the unscaled W (docs/quant-semantics.md,
"computation order"): the one-channel conv of an all-ones image with the per-tap kernel
`sum_c W[:, c] o_c` is the same number in exact arithmetic but rounds differently, and a value
that moves by one last bit can flip a downstream code. (Exporters may use the cheap form: the
correction is a float addend, exact to float precision either way.)

The VAE's mid-attention q/k/v/proj_out are 1x1 convs in PassionSR's ldm model and Linear in
diffusers. A QuantLinear with `conv1x1` set computes as that 1x1 conv (the linear on tokens
and a 1x1 conv sum in different orders); see `QuantLinear.conv1x1`.

Split (PassionSR `split: True`): W' is cut at C_in // 2 into two per-output-channel weight
quantizers; x' is cut at x'.shape[1] // 2 into two per-tensor activation quantizers. For 3-D
(B, N, C) linear inputs dim 1 is the token axis, so those halves are token halves.

FP weights keep their original parameter names (`weight`, `bias`), so a quantized model's
state dict is the FP state dict plus the quantization tensors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .quantizer import LBQuantizer, QuantSpec

LET_MIN = 1e-5  # clamp of max|x| and max|W| in the LET scale init (spec section 3)
LET_EMA = 0.1  # rate of the LET scale EMA during the statistics pass


def split_point(n: int) -> int:
    return n // 2


class QuantLayer(nn.Module):
    """Common state of QuantConv and QuantLinear. Subclasses implement `_op` and `let_correction`."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, wspec: QuantSpec, aspec: QuantSpec,
                 split: bool, use_let: bool, let_form: str, s_alpha: float, only_weight: bool):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        c_in = weight.shape[1]
        self.in_channels = c_in
        self.split = split
        self.use_let = use_let
        self.let_form = let_form
        self.s_alpha = s_alpha
        self.only_weight = only_weight
        if use_let:
            self.let_scale = nn.Parameter(torch.ones(c_in))
            self.let_offset = nn.Parameter(torch.zeros(c_in))
            self.register_buffer("let_initialized", torch.zeros((), dtype=torch.bool))
        n_groups = 2 if split else 1
        self.w_quant = nn.ModuleList(LBQuantizer(wspec, channels=weight.shape[0]) for _ in range(n_groups))
        self.a_quant = nn.ModuleList(LBQuantizer(aspec) for _ in range(n_groups)) if not only_weight else None
        self.b_quant = LBQuantizer(wspec) if bias is not None else None
        # set during the statistics pass: the LET scale tracks its init formula (spec section 3)
        self.let_observer = False

    # -- shapes -----------------------------------------------------------------------------
    def _channel_view(self, t: torch.Tensor, ndim: int) -> torch.Tensor:
        """Per-input-channel vector shaped to broadcast over an activation of `ndim` dims."""
        raise NotImplementedError

    def _weight_view(self, t: torch.Tensor) -> torch.Tensor:
        return t.view((1, -1) + (1,) * (self.weight.dim() - 2))

    # -- pieces of the forward --------------------------------------------------------------
    def transform_input(self, x: torch.Tensor) -> torch.Tensor:
        s = self._channel_view(self.let_scale, x.dim())
        o = self._channel_view(self.let_offset, x.dim())
        if self.let_form == "reference":
            return (x + o) / s
        return (x - o) / s

    def scaled_weight(self) -> torch.Tensor:
        if not self.use_let:
            return self.weight
        return self.weight * self._weight_view(self.let_scale)

    def quant_weight(self, w: torch.Tensor) -> torch.Tensor:
        if not self.split:
            return self.w_quant[0](w)
        h = split_point(self.in_channels)
        return torch.cat([self.w_quant[0](w[:, :h]), self.w_quant[1](w[:, h:])], dim=1)

    def quant_act(self, x: torch.Tensor) -> torch.Tensor:
        if self.a_quant is None:
            return x
        if not self.split:
            return self.a_quant[0](x)
        h = split_point(x.shape[1])
        return torch.cat([self.a_quant[0](x[:, :h]), self.a_quant[1](x[:, h:])], dim=1)

    def quant_bias(self) -> torch.Tensor | None:
        if self.bias is None:
            return None
        return self.b_quant(self.bias)

    def _input_absmax(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def observe_let(self, x: torch.Tensor) -> None:
        """s_c = max|x_c|^a / max|W_:,c|^a; first call sets it, later calls move it by EMA 0.1."""
        xmax = self._input_absmax(x).clamp_min(LET_MIN)
        wmax = self.weight.abs().transpose(0, 1).reshape(self.in_channels, -1).amax(dim=1).clamp_min(LET_MIN)
        target = xmax.pow(self.s_alpha) / wmax.pow(self.s_alpha)
        if not bool(self.let_initialized):
            self.let_scale.copy_(target)
            self.let_initialized.fill_(True)
        else:
            self.let_scale.mul_(1 - LET_EMA).add_(LET_EMA * target)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_let:
            if self.let_observer:
                self.observe_let(x)
            xs = self.transform_input(x)
        else:
            xs = x
        y = self._op(self.quant_act(xs), self.quant_weight(self.scaled_weight()), self.quant_bias())
        if self.use_let:
            y = y + self.let_correction(x)
        return y

    def quantizers(self) -> list[LBQuantizer]:
        qs = list(self.w_quant) + (list(self.a_quant) if self.a_quant is not None else [])
        return qs + ([self.b_quant] if self.b_quant is not None else [])


class QuantConv(QuantLayer):
    """Conv1d/Conv2d with LET and LBQ. Groups must be 1 and padding zeros (true for SD)."""

    def __init__(self, conv: nn.Conv1d | nn.Conv2d, **kw):
        if conv.groups != 1 or conv.padding_mode != "zeros":
            raise ValueError("QuantConv supports groups=1 with zero padding only")
        super().__init__(conv.weight, conv.bias, **kw)
        self.dims = conv.weight.dim() - 2
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation

    def extra_repr(self) -> str:
        return f"{self.in_channels}->{self.weight.shape[0]}, k={tuple(self.weight.shape[2:])}, stride={self.stride}, padding={self.padding}, split={self.split}"

    def _conv(self, x, w, b=None):
        fn = F.conv2d if self.dims == 2 else F.conv1d
        return fn(x, w, b, self.stride, self.padding, self.dilation)

    def _op(self, x, w, b):
        return self._conv(x, w, b)

    def _channel_view(self, t, ndim):
        return t.view((1, -1) + (1,) * (ndim - 2))

    def _input_absmax(self, x):
        return x.detach().abs().transpose(0, 1).reshape(x.shape[1], -1).amax(dim=1)

    def let_correction(self, x: torch.Tensor) -> torch.Tensor:
        """conv(o spread over x's shape, W) with the unscaled W and no bias, PassionSR's order."""
        return self._conv(self._channel_view(self.let_offset, x.dim()).to(x.dtype).expand_as(x), self.weight.to(x.dtype))


class QuantLinear(QuantLayer):
    """Linear with LET and LBQ.

    `conv1x1` (set by quant.wrap for the VAE's mid-attention projections when they are not split):
    the layer is a 1x1 conv in PassionSR's ldm model, so it computes as one, on the NCHW view of
    its input: a (B, N, C) token input is taken as the (B, C, N, 1) image it is a view of (a 1x1
    conv on (B, C, N, 1) sums exactly as on (B, C, H, W): measured bit for bit), a 4-D input as
    is. LET then has the conv form x' = (x - o)/s with correction conv(o spread over x, W). The
    function is the linear's up to float rounding; the weight keeps its (C_out, C_in) shape, so
    checkpoints and recipes are unchanged. A split layer keeps token halves (the function a
    diffusers-linear checkpoint was calibrated with), so it never takes this form.
    """

    def __init__(self, linear: nn.Linear, **kw):
        super().__init__(linear.weight, linear.bias, **kw)
        self.conv1x1 = False

    def extra_repr(self) -> str:
        form = ", as 1x1 conv" if self.conv1x1 else ""
        return f"{self.in_channels}->{self.weight.shape[0]}, split={self.split}, let_form={self.let_form}{form}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.conv1x1:
            return super().forward(x)
        if self.split or self.let_form != "consistent":
            raise ValueError("a 1x1-conv-form layer is never split and has the conv LET form")
        if x.dim() == 4:
            return self._forward_nchw(x)
        if x.dim() != 3:
            raise ValueError(f"a 1x1-conv-form layer takes (B, N, C) tokens or NCHW images, got {tuple(x.shape)}")
        y = self._forward_nchw(x.transpose(1, 2).unsqueeze(-1).contiguous())
        return y.squeeze(-1).transpose(1, 2)

    def _forward_nchw(self, x: torch.Tensor) -> torch.Tensor:
        """QuantLayer.forward as QuantConv computes it, with the (C_out, C_in) weight as 1x1 taps."""
        if self.let_observer:
            self.observe_let(x.transpose(1, -1))
        xs = x
        if self.use_let:
            s, o = self.let_scale.view(1, -1, 1, 1), self.let_offset.view(1, -1, 1, 1)
            xs = (x - o) / s
        w = self.quant_weight(self.scaled_weight())[:, :, None, None]
        y = F.conv2d(self.quant_act(xs), w, self.quant_bias())
        if self.use_let:
            y = y + F.conv2d(self.let_offset.view(1, -1, 1, 1).to(x.dtype).expand_as(x), self.weight[:, :, None, None].to(x.dtype))
        return y

    def _op(self, x, w, b):
        return F.linear(x, w, b)

    def _channel_view(self, t, ndim):
        return t  # the channel axis is last: plain broadcasting

    def _input_absmax(self, x):
        return x.detach().abs().reshape(-1, x.shape[-1]).amax(dim=0)

    def let_correction(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.let_offset.to(x.dtype), self.weight.to(x.dtype))


def wrap_layer(module: nn.Module, wspec: QuantSpec, aspec: QuantSpec, *, split: bool, use_let: bool,
               let_form: str, s_alpha: float, only_weight: bool) -> QuantLayer:
    kw = dict(wspec=wspec, aspec=aspec, split=split, use_let=use_let, let_form=let_form,
              s_alpha=s_alpha, only_weight=only_weight)
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        # the reference form differs from the consistent one only for linear layers
        return QuantConv(module, **{**kw, "let_form": "consistent"})
    if isinstance(module, nn.Linear):
        return QuantLinear(module, **kw)
    raise TypeError(f"cannot quantize {type(module).__name__}")
