"""PassionSR's quantization checkpoints (spec passionsr-checkpoints section 4) -> the project's
quantization tensors.

A PassionSR file is the state_dict of its QuantWrapper: every key is `model.model.` + an ldm
path (inside model.diffusion_model for the UNet, first_stage_model for the VAE). Per quantized
layer L and attention A, in the file's shapes (conv / linear, nd = the ldm weight's dims):

    L.scale_factor, L.offset               (1, Cin, 1, 1) / (1, Cin)  -> let_scale, let_offset (Cin,)
    L.bias_quantizer.x_min|x_max           ()                          -> b_quant.x_min|x_max
    L.weight_quantizer_i.x_min|x_max       (Cout, 1, 1, 1) / (Cout, 1) -> w_quant.i.x_min|x_max (Cout,)
    L.act_quantizer_i.x_min|x_max          ()                          -> a_quant.i.x_min|x_max
    A.scale_factor_qk (d_head,), A.scale_factor_vw (key tokens,)       -> processor.s_qk, processor.s_vw
    A.act_quantizer_q|k|v|w.x_min|x_max    ()                          -> processor.q|k|v|p_quant (w: softmax P)
    N.weight, N.bias of every GroupNorm/LayerNorm (equal to the SD checkpoint's; PassionSR loads them)

(i = 0, and 1 with split.) The expected key set is built from the wrapped model and the ldm
names of its modules, so a file is accepted only if it has exactly those keys with exactly
those shapes; anything else is refused naming the tensor and the file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..quant.wrap import attention_processors, quant_layers, quantizers
from .errors import ImportRefused
from .ldm_names import NameMap

FILE_PREFIX = "model.model."  # QuantWrapper.model (QuantModel) .model (the ldm network)
# PassionSR keeps a layer at 8 bits when its name (as "model.<ldm path>") contains one of these
# (one list for UNet and VAE, substring match: spec passionsr-checkpoints 5.1)
EIGHT_BIT_SUBSTRINGS = ("time_embed.0", "out.2", "quant_conv", "post_quant_conv", "encoder.conv_out", "decoder.conv_out")
ATTENTION_QUANTIZERS = {"q": "q_quant", "k": "k_quant", "v": "v_quant", "w": "p_quant"}
NORMS = (nn.GroupNorm, nn.LayerNorm)
VAE_ROOTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")


@dataclass(frozen=True)
class Slot:
    """Where one tensor of a PassionSR file goes in the component's state dict."""

    target: str  # state-dict key inside the component (diffusers module path + our name)
    shape: tuple[int, ...] | None  # the shape PassionSR's file has (None: any 1-D length, s_vw)


@dataclass
class ComponentImport:
    """What was imported into one component, for the summary."""

    layers: int
    attentions: int
    norms: int
    norms_changed: int  # norm tensors whose value differs from the SD checkpoint's
    eight_bit: list[str]  # diffusers names of the layers kept at 8 bits
    s_vw: dict[str, int]  # attention processor path -> key tokens at calibration


def passion_eight_bit(ldm_path: str) -> bool:
    return any(s in f"model.{ldm_path}" for s in EIGHT_BIT_SUBSTRINGS)


def expected_tensors(module: nn.Module, names: NameMap) -> dict[str, Slot]:
    """PassionSR file key -> Slot, for a wrapped (fake-quant) component."""
    slots: dict[str, Slot] = {}

    def add(ldm_key: str, target: str, shape) -> None:
        slots[FILE_PREFIX + ldm_key] = Slot(target, None if shape is None else tuple(shape))

    for d, layer in quant_layers(module):
        lm = names.to_ldm[d]
        w = names.weight_shapes[lm]
        c_out, c_in, taps = w[0], w[1], len(w) - 2  # the ldm layer's own kind: the VAE's 1x1 attention convs stay convs
        add(f"{lm}.scale_factor", f"{d}.let_scale", (1, c_in) + (1,) * taps)
        add(f"{lm}.offset", f"{d}.let_offset", (1, c_in) + (1,) * taps)
        if layer.b_quant is not None:
            for b in ("x_min", "x_max"):
                add(f"{lm}.bias_quantizer.{b}", f"{d}.b_quant.{b}", ())
        for i in range(len(layer.w_quant)):
            for b in ("x_min", "x_max"):
                add(f"{lm}.weight_quantizer_{i}.{b}", f"{d}.w_quant.{i}.{b}", (c_out,) + (1,) * (taps + 1))
        for i in range(len(layer.a_quant or [])):
            for b in ("x_min", "x_max"):
                add(f"{lm}.act_quantizer_{i}.{b}", f"{d}.a_quant.{i}.{b}", ())
    for d, proc in attention_processors(module):
        lm = names.to_ldm[d.removesuffix(".processor")]
        add(f"{lm}.scale_factor_qk", f"{d}.s_qk", proc.s_qk.shape)
        add(f"{lm}.scale_factor_vw", f"{d}.s_vw", None)
        for theirs, ours in ATTENTION_QUANTIZERS.items():
            for b in ("x_min", "x_max"):
                add(f"{lm}.act_quantizer_{theirs}.{b}", f"{d}.{ours}.{b}", ())
    for d, m in _norms(module):
        lm = names.to_ldm[d]
        for p in ("weight", "bias"):
            if getattr(m, p, None) is not None:
                add(f"{lm}.{p}", f"{d}.{p}", getattr(m, p).shape)
    return slots


def _norms(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The normalisation layers with parameters (PassionSR's file holds those parameters)."""
    return [(d, m) for d, m in module.named_modules() if isinstance(m, NORMS) and getattr(m, "weight", None) is not None]


def _refuse_layout(sd: dict, comp: str, path: Path) -> None:
    """Whole-file problems, before any tensor is looked at."""
    if not isinstance(sd, dict) or not sd:
        raise ImportRefused(f"{path}: holds a {type(sd).__name__}, not the state dict of PassionSR's QuantWrapper")
    keys = [k for k in sd if isinstance(k, str)]
    if len(keys) != len(sd) or not any(k.startswith(FILE_PREFIX) for k in keys):
        raise ImportRefused(f"{path}: is not a PassionSR quantization checkpoint (its keys do not start with {FILE_PREFIX!r})")
    body = [k[len(FILE_PREFIX):] for k in keys if k.startswith(FILE_PREFIX)]
    vae_like = all(k.startswith(VAE_ROOTS) for k in body)
    if comp == "unet" and vae_like:
        raise ImportRefused(f"{path}: holds PassionSR's VAE parameters, not the UNet's (give it as the VAE's quant_ckpt)")
    if comp == "vae" and not vae_like:
        raise ImportRefused(f"{path}: holds PassionSR's UNet parameters, not the VAE's (give it as the UNet's quant_ckpt)")


def _value(key: str, t, slot: Slot, path: Path) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ImportRefused(f"{path}: entry {key!r} is a {type(t).__name__}, not a tensor")
    shape = tuple(t.shape)
    if slot.shape is None:
        if t.dim() != 1 or t.numel() == 0:
            raise ImportRefused(f"{path}: tensor {key!r} has shape {shape}, expected one value per key token")
    elif shape != slot.shape:
        raise ImportRefused(f"{path}: tensor {key!r} has shape {shape}, expected {slot.shape}")
    if not t.is_floating_point():
        raise ImportRefused(f"{path}: tensor {key!r} is {t.dtype}, expected float32")
    value = t.detach().to(torch.float32)
    # PassionSR stores float32; a wider file would hold bounds this model cannot keep exactly
    if t.dtype != torch.float32 and not torch.equal(value.to(t.dtype), t):
        raise ImportRefused(f"{path}: tensor {key!r} is {t.dtype} with values float32 cannot hold exactly")
    if not torch.isfinite(value).all():
        raise ImportRefused(f"{path}: tensor {key!r} holds non-finite values")
    return value


def read_quant_tensors(sd: dict, module: nn.Module, names: NameMap, comp: str, path: Path) -> dict[str, torch.Tensor]:
    """The component's new state-dict entries from a PassionSR file, all checked before any is used."""
    _refuse_layout(sd, comp, path)
    slots = expected_tensors(module, names)
    for key in sd:
        if key not in slots:
            where = key[len(FILE_PREFIX):] if key.startswith(FILE_PREFIX) else key
            raise ImportRefused(f"{path}: unknown tensor {key!r} (this model, built from the ldm config, has no "
                                f"quantization tensor {where!r} in PassionSR's layout)")
    for key in slots:
        if key not in sd:
            raise ImportRefused(f"{path}: missing tensor {key!r}")
    own = module.state_dict()
    values = {}
    for key, slot in slots.items():
        v = _value(key, sd[key], slot, path)
        # PassionSR's broadcast shapes -> ours (vectors); s_vw keeps the file's length
        values[slot.target] = v if slot.shape is None else v.reshape(own[slot.target].shape)
    return values


def latent_tile(s_vw: dict[str, int], n_levels: int) -> int | None:
    """The latent tile the UNet was calibrated at, from {attention processor path: scale_factor_vw
    length}: self-attention has one entry per token, H*W of its level's latent (tile / 2^level per
    side). None if nothing ties it, -1 if the lengths fit no single square tile."""
    tiles = set()
    for name, n in s_vw.items():
        if ".attn1." not in f"{name}.":
            continue
        parts = name.split(".")
        level = (int(parts[1]) if parts[0] == "down_blocks" else n_levels - 1 - int(parts[1])
                 if parts[0] == "up_blocks" else n_levels - 1)
        side = math.isqrt(n)
        tiles.add(side * 2**level if side * side == n else -1)
    if not tiles:
        return None
    if len(tiles) != 1 or -1 in tiles:
        return -1
    return tiles.pop()


def apply_quant_tensors(module: nn.Module, values: dict[str, torch.Tensor], names: NameMap) -> ComponentImport:
    """Load checked values into a wrapped component and mark every quantizer calibrated."""
    procs = dict(attention_processors(module))
    s_vw = {}
    for name, proc in procs.items():
        n = values[f"{name}.s_vw"].numel()
        if proc.s_vw.numel() != n:
            proc.resize_s_vw(n)
        s_vw[name] = n
    current = module.state_dict()
    norms_changed = sum(1 for k, v in values.items() if k.endswith((".weight", ".bias")) and not torch.equal(current[k], v))
    with torch.no_grad():
        result = module.load_state_dict(values, strict=False)
        assert not result.unexpected_keys, result.unexpected_keys  # every target came from this module
        for _, q in quantizers(module):
            q.initialized.fill_(True)
        for _, layer in quant_layers(module):
            layer.let_initialized.fill_(True)
        for proc in procs.values():
            proc.scales_initialized.fill_(True)
    layers = [d for d, _ in quant_layers(module)]
    eight = sorted(d for d in layers if passion_eight_bit(names.to_ldm[d]))
    return ComponentImport(len(layers), len(procs), len(_norms(module)), norms_changed, eight, s_vw)


def check_eight_bit_layers(module: nn.Module, names: NameMap, comp: str, weight_bits: int, source: Path) -> None:
    """PassionSR's 8-bit rule (substrings of ldm names) must pick the layers this project keeps at 8
    bits (quant/wrap.EIGHT_BIT_LAYERS, by diffusers name): true for SD's networks, checked for any other."""
    for d, layer in quant_layers(module):
        lm = names.to_ldm[d]
        want = 8 if passion_eight_bit(lm) else weight_bits
        have = layer.w_quant[0].spec.bits
        if want != have:
            raise ImportRefused(f"{source}: PassionSR quantizes {comp} layer {lm} at {want} bits but this project's "
                                f"model quantizes it ({d}) at {have}; this architecture's first/last layers differ")
