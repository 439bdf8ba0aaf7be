"""Quantized attention matmuls (spec section 4), as a diffusers attention processor.

With q, k, v of shape (B*heads, N, d) after the (already quantized) projections:

    q <- q * s_qk   k <- k * (1/s_qk)             (s_qk: one entry per channel of d)
    S = Qq(q) @ Qk(k)^T * d^-0.5 ;  P = softmax(S, dim=-1)
    P <- P * s_vw   v <- v * (1/s_vw)             (s_vw: one entry per key token)
    out = Qp(P) @ Qv(v)

k and v are multiplied by the float32 reciprocal of the scale, as PassionSR computes them (a
true division differs in the last bit on about 30% of elements, and a last bit can flip a code).
`reciprocal` is the one place that forms it; the exporters' lowerings use it too.

P is quantized after normalisation. `s_vw` is tied to the key length seen in calibration
(4096 tokens for a 64x64 latent tile, 77 for cross-attention); it is sized on the first
statistics call or from a checkpoint.
"""
from __future__ import annotations

import torch
from torch import nn

from .layers import LET_EMA, LET_MIN
from .quantizer import LBQuantizer, QuantSpec


def reciprocal(s):
    """1/s in s's own precision (torch tensor or numpy array): the factor k and v are multiplied by."""
    return 1.0 / s


class QuantAttnProcessor(nn.Module):
    def __init__(self, aspec: QuantSpec, head_dim: int, s_alpha: float):
        super().__init__()
        self.s_alpha = s_alpha
        self.s_qk = nn.Parameter(torch.ones(head_dim))
        self.s_vw = nn.Parameter(torch.ones(0))  # sized at calibration (key tokens)
        self.register_buffer("scales_initialized", torch.zeros((), dtype=torch.bool))
        self.q_quant = LBQuantizer(aspec)
        self.k_quant = LBQuantizer(aspec)
        self.v_quant = LBQuantizer(aspec)
        self.p_quant = LBQuantizer(aspec)
        self.let_observer = False

    def resize_s_vw(self, n_keys: int) -> None:
        self.s_vw = nn.Parameter(torch.ones(n_keys, device=self.s_qk.device))

    def quantizers(self) -> list[LBQuantizer]:
        return [self.q_quant, self.k_quant, self.v_quant, self.p_quant]

    @torch.no_grad()
    def _observe_scales(self, q, k, v, p) -> None:
        a = self.s_alpha
        qk = k.abs().amax(dim=(0, 1)).clamp_min(LET_MIN).pow(a) / q.abs().amax(dim=(0, 1)).clamp_min(LET_MIN).pow(a)
        vw = v.abs().amax(dim=(0, 2)).clamp_min(LET_MIN).pow(a) / p.abs().amax(dim=(0, 1)).clamp_min(LET_MIN).pow(a)
        if self.s_vw.numel() != vw.numel():
            if bool(self.scales_initialized):
                raise ValueError(f"attention calibrated for {self.s_vw.numel()} key tokens got {vw.numel()}")
            self.resize_s_vw(vw.numel())
        if not bool(self.scales_initialized):
            self.s_qk.copy_(qk)
            self.s_vw.copy_(vw)
            self.scales_initialized.fill_(True)
        else:
            self.s_qk.mul_(1 - LET_EMA).add_(LET_EMA * qk)
            self.s_vw.mul_(1 - LET_EMA).add_(LET_EMA * vw)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """q, k, v: (B*heads, N, d) -> (B*heads, Nq, d)."""
        if self.let_observer:
            p_fp = torch.softmax((q @ k.transpose(-1, -2)).float() * scale, dim=-1).to(q.dtype)
            self._observe_scales(q, k, v, p_fp)
        elif v.shape[1] != self.s_vw.numel():
            raise ValueError(
                f"attention was calibrated for {self.s_vw.numel()} key tokens but got {v.shape[1]}: "
                "run at the latent tile size the checkpoint was calibrated at"
            )
        s_qk = self.s_qk.to(q.dtype)
        s_vw = self.s_vw.to(q.dtype)
        scores = self.q_quant(q * s_qk) @ self.k_quant(k * reciprocal(s_qk)).transpose(-1, -2)
        p = torch.softmax(scores.float() * scale, dim=-1).to(q.dtype)
        return self.p_quant(p * s_vw) @ self.v_quant(v * reciprocal(s_vw)[:, None])

    def forward(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        # mirrors diffusers' AttnProcessor step by step; only the two matmuls differ
        if attention_mask is not None:
            raise ValueError("quantized attention does not support attention masks (SD's UNet and VAE use none)")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        q, k, v = (attn.head_to_batch_dim(t) for t in (query, key, value))
        out = attn.batch_to_head_dim(self.attention(q, k, v, attn.scale))
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def ldm_attention_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """The VAE mid-block attention's (unquantized) core in ldm's AttnBlock order, on (B, C, HW)
    channel-major tensors, returning (B, C, HW): softmax(bmm(q^T, k) * scale, over keys), then
    bmm(v, P^T). The same function as diffusers' attention, summed in ldm's order."""
    w = torch.bmm(q.permute(0, 2, 1), k) * scale
    w = torch.softmax(w, dim=2)
    return torch.bmm(v, w.permute(0, 2, 1))


class LdmVaeAttnProcessor:
    """diffusers' VAE mid-block Attention computed as PassionSR's ldm AttnBlock: group norm on the
    NCHW input, q/k/v as 1x1 convs (QuantLinear in conv1x1 form, or plain Linear weights as 1x1
    convs), `ldm_attention_core`, proj_out as a 1x1 conv, residual added. PassionSR quantizes
    only the four projections (its matmuls are float)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if attention_mask is not None or encoder_hidden_states is not None or attn.spatial_norm is not None:
            raise ValueError("the ldm VAE attention is plain self-attention over pixels")
        if hidden_states.ndim != 4 or attn.group_norm is None or attn.heads != 1:
            raise ValueError("the ldm VAE attention takes an NCHW input, one head, with group norm")
        x = hidden_states
        b, c, hh, ww = x.shape
        h = attn.group_norm(x)
        q, k, v = (_conv1x1(m, h).reshape(b, c, hh * ww) for m in (attn.to_q, attn.to_k, attn.to_v))
        h = ldm_attention_core(q, k, v, attn.scale).reshape(b, c, hh, ww)
        h = _conv1x1(attn.to_out[0], h)
        out = x + h if attn.residual_connection else h
        return out / attn.rescale_output_factor


def _conv1x1(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    from .layers import QuantLinear

    if isinstance(m, QuantLinear) and m.conv1x1:
        return m(x)
    if isinstance(m, QuantLinear) or not isinstance(m, nn.Linear):
        # a split (token-halves) quantized projection: the linear on tokens it was calibrated as
        return m(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(x.shape[0], -1, *x.shape[2:])
    return torch.nn.functional.conv2d(x, m.weight[:, :, None, None], m.bias)
