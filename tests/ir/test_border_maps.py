"""A padded conv's border map in compact form (issue 15, item 5).

The map's value at an output pixel depends only on which taps of its window fall in the
padding, i.e. on its row class and column class (export/ir/plan.py: border_class), so the
triton target keeps one (row class, column class, channel) table per layer for every input
size, and the GEMM's epilogue indexes it from (oh, ow). Checked here:

- the table, expanded with the class arithmetic, equals the plan's dense float32 map for many
  sizes (odd, even, smaller than the kernel), strides, kernels and paddings;
- the GEMM with the table writes exactly (torch.equal) what it wrote with the dense map added
  in its epilogue (same float32 additions in the same order), fp32 and fp16 outputs;
- the epilogues of every quantized conv of the sd21 VAE decoder at one 1792 px decoder tile
  (224x224 latent) stay a few MB, and calls at other sizes allocate nothing more in the layer
  (the dense maps, cached per input size, took ~24 GB there).
"""
import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from passion_deploy.kernels import use_interpreter_without_gpu

use_interpreter_without_gpu()
pytest.importorskip("triton", reason="the kernels need triton (pip install triton)")

from passion_deploy.export.ir.plan import LayerPlan, border_class, border_classes  # noqa: E402
from passion_deploy.export.ir.recipes import QLayerRecipe, layer_recipe  # noqa: E402
from passion_deploy.export.targets.triton import layers as kernel_layers  # noqa: E402
from passion_deploy.export.targets.triton.layers import KernelLayer  # noqa: E402
from passion_deploy.kernels.act_quant import act_quant  # noqa: E402
from passion_deploy.kernels.gemm import qgemm  # noqa: E402
from passion_deploy.quant.layers import QuantConv  # noqa: E402
from passion_deploy.quant.quantizer import QuantSpec  # noqa: E402
from calib_helpers import calibrated_layer  # noqa: E402

MB = 1 << 20


def dense_from_table(table: torch.Tensor, spatial, kernel, stride, padding) -> torch.Tensor:
    """(N, *out_spatial): the table read at each output pixel's classes, as the kernel reads it."""
    idx = []
    for n, k, s, p in zip(spatial, kernel, stride, padding):
        out = (n + 2 * p - k) // s + 1
        idx.append(border_class(torch.arange(out), n, k, s, p))
    grids = torch.meshgrid(*idx, indexing="ij")
    return table[(slice(None),) + grids]


def taps_plan(kernel, stride, padding, cout=24, seed=0) -> LayerPlan:
    """A plan with only what the border map reads: geometry and float64 per-tap constants of
    the magnitude LET corrections have (a recipe without weights)."""
    g = torch.Generator().manual_seed(seed)
    taps = (torch.randn((cout,) + kernel, generator=g, dtype=torch.float64) * 3).numpy()
    rec = QLayerRecipe("conv", "conv", 8, cout, [], None, None, kernel=kernel, stride=stride, padding=padding,
                       dilation=(1,) * len(kernel))
    return LayerPlan(rec, False, (), taps)


GEOMETRIES = [  # (kernel, stride, padding)
    ((3, 3), (1, 1), (1, 1)),  # resnet convs
    ((3, 3), (2, 2), (1, 1)),  # UNet downsamplers
    ((5, 5), (1, 1), (2, 2)),
    ((5, 5), (2, 2), (2, 2)),
    ((4, 4), (2, 2), (1, 1)),  # an even kernel: the end overhang differs from the start's
    ((3, 3), (3, 3), (2, 2)),
    ((1, 1), (1, 1), (1, 1)),  # windows entirely in the padding
    ((3, 5), (2, 2), (2, 2)),  # a non-square kernel
    ((7, 7), (1, 1), (3, 3)),
]


@pytest.mark.parametrize("kernel,stride,padding", GEOMETRIES)
def test_table_expands_to_the_dense_map(kernel, stride, padding):
    plan = taps_plan(kernel, stride, padding)
    table = plan.border_table()
    assert table.shape == (24,) + tuple(border_classes(p) for p in padding)
    sizes = [n for n in range(1, 16) if n + 2 * padding[0] >= max(kernel)] + [32, 33]
    checked = 0
    for h, w in itertools.product(sizes, sizes):
        dense = plan.border_map((h, w))
        compact = dense_from_table(table, (h, w), kernel, stride, padding)
        assert compact.shape == dense.shape
        # float32 is what the epilogue adds; float64 sums differ by F.conv2d's size-dependent order
        assert torch.equal(compact.float(), dense.float()), (h, w)
        assert torch.allclose(compact, dense, rtol=1e-13, atol=0)
        checked += 1
    assert checked > 150


def test_table_is_built_from_classes_not_sizes():
    """Every class of an axis has its entry (the dense maps of many sizes reach no other), and
    an interior value is the sum over all taps."""
    plan = taps_plan((3, 3), (1, 1), (1, 1))
    table = plan.border_table()
    inner = border_class(5, 20, 3, 1, 1)  # no tap cut: class 0
    assert inner == 0
    assert torch.allclose(table[:, 0, 0], torch.from_numpy(plan.map_taps).sum((1, 2)), rtol=1e-15)
    top, bottom = border_class(0, 20, 3, 1, 1), border_class(19, 20, 3, 1, 1)
    assert (top, bottom) == (2, 1)  # one tap cut at the start: 1 * (p + 1); at the end: 1
    corner = torch.from_numpy(plan.map_taps)[:, 1:, 1:].sum((1, 2))  # top-left: first row and column cut
    assert torch.allclose(table[:, top, top], corner, rtol=1e-15)
    both = border_class(0, 1, 3, 1, 1)  # a 1-pixel input: cut at both ends
    assert both == 3
    assert torch.allclose(table[:, both, both], torch.from_numpy(plan.map_taps)[:, 1, 1], rtol=1e-15)


# -- the GEMM's epilogue with the table -----------------------------------------------------

def let_conv(cin, cout, residuals=False, **geom) -> QuantConv:
    torch.manual_seed(0)
    mod = nn.Conv2d(cin, cout, **geom)
    if residuals:  # a weight zero point outside int8
        with torch.no_grad():
            mod.weight[2] = mod.weight[2].abs() * 0.2 + 0.5
    return QuantConv(mod, wspec=QuantSpec(8), aspec=QuantSpec(8), split=True, use_let=True,
                     let_form="consistent", s_alpha=0.5, only_weight=False)


KERNEL_CASES = {
    # name: (geometry, input sizes, residuals); the first size runs in 16x16 tiles (several
    # M tiles: the classes come from each tile's own rows), the others in one 64-row tile
    "3x3s1p1": (dict(kernel_size=3, padding=1), [(5, 7), (6, 6), (1, 4)], False),
    "3x3s2p1-odd-even": (dict(kernel_size=3, padding=1, stride=2), [(7, 9), (8, 6)], False),
    "5x5s1p2-residuals": (dict(kernel_size=5, padding=2), [(6, 5), (3, 4)], True),
    "5x5s2p2": (dict(kernel_size=5, padding=2, stride=2), [(9, 6)], False),
    "4x4s2p1": (dict(kernel_size=4, padding=1, stride=2), [(7, 8)], False),
}


@pytest.mark.parametrize("case", list(KERNEL_CASES))
def test_gemm_with_table_equals_gemm_with_dense_map(case):
    geom, sizes, residuals = KERNEL_CASES[case]
    layer = let_conv(7, 19, residuals, **geom)
    x0 = torch.rand(1, 7, 6, 6) + 5.0 if residuals else torch.randn(1, 7, 6, 6)
    # residuals: no LET offsets, the activation residual's taps (a zero point beyond 8 bits) make the map
    calibrated_layer(layer, x0, let=not residuals)
    kl = KernelLayer(layer_recipe("conv", layer), block=(64, 32, 32), act_block=(64, 32))
    ep = kl.conv_epilogue
    assert ep.border is not None and ep.border.shape == (border_classes(geom["padding"]) ** 2, 19)
    (row,) = kl.launches[False]
    no_map = replace(ep, border=None)
    k, s, p = (geom["kernel_size"],) * 2, geom.get("stride", 1), geom["padding"]
    for i, (h, w) in enumerate(sizes):
        x = torch.randn(1, 7, h, w) + (5.0 if residuals else 0.0)
        codes = act_quant(x.reshape(1, 7, h * w).transpose(1, 2), row.quant, row.c_split, block=(64, 32),
                          pre="let", scale=torch.from_numpy(kl.rec.let_scale),
                          offset=torch.from_numpy(kl.rec.let_input_offset))
        dense = kl.plans[False].border_map((h, w))
        dense = dense.reshape(dense.shape[0], -1).t().float()  # (P_out, N), the old epilogue's map
        args = (codes, row.gemm, kl.weights)
        geo = dict(spatial=(h, w), kernel=k, stride=s, padding=p, block=(16, 16, 32) if i == 0 else (64, 32, 32))
        y_plain = qgemm(*args, no_map, out_dtype=torch.float32, **geo)
        # the dense epilogue added map[m, n] to the float32 sum last, then rounded to the output
        if i == 0:
            y16 = qgemm(*args, ep, out_dtype=torch.float16, **geo)
            assert torch.equal(y16, (y_plain + dense).half()), (h, w)
        y32 = qgemm(*args, ep, out_dtype=torch.float32, **geo)
        assert torch.equal(y32, y_plain + dense), (h, w)
        if i == len(sizes) - 1:  # the whole layer (act_quant + GEMM, NCHW) reads the same table
            y = kl(x)
            assert torch.equal(y, (y_plain + dense).view(1, *y.shape[2:], 19).permute(0, 3, 1, 2))
    assert kl.conv_epilogue is ep  # nothing built per input size


def test_gemm_checks_the_table_shape():
    layer = let_conv(7, 19, kernel_size=3, padding=1)
    calibrated_layer(layer, torch.randn(1, 7, 5, 5))
    kl = KernelLayer(layer_recipe("conv", layer))
    (row,) = kl.launches[False]
    codes = torch.zeros(1, 25, 7, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"border table is \(16, 19\), padding 2"):
        qgemm(codes, row.gemm, kl.weights, kl.conv_epilogue, (5, 5), (3, 3), 1, 2)


# -- the sd21 VAE decoder at one 1792 px tile ----------------------------------------------

def conv_input_sizes(latent: int) -> dict[str, tuple[int, int]]:
    """Input size of every conv of the sd21 VAE's decode path (post_quant_conv + decoder) for a
    latent tile, from a forward on the meta device (shapes only: nothing is computed)."""
    from diffusers import AutoencoderKL

    from passion_deploy.models import get_preset

    with torch.device("meta"):
        vae = AutoencoderKL(**get_preset("sd21").vae_config())
    sizes = {}

    def record(name):
        def hook(mod, args):
            sizes.setdefault(name, tuple(args[0].shape[2:]))  # returns None: the input stays as it is
        return hook
    for name, m in vae.named_modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_pre_hook(record(name))
    with torch.no_grad():
        out = vae.decode(torch.empty(1, 4, latent, latent, device="meta")).sample
    assert out.shape[-1] == latent * 8
    return sizes


def sd21_decoder_layers() -> dict[str, KernelLayer]:
    """The triton target's KernelLayer of every quantized conv on the sd21 VAE's decode path,
    from a W6A6 fake-quant sd21 VAE with random weights and random LET offsets (so every padded
    conv has a border map, as calibrated checkpoints do)."""
    from diffusers import AutoencoderKL

    from passion_deploy.config import NAMED_CONFIGS
    from passion_deploy.models import get_preset
    from passion_deploy.quant.wrap import EIGHT_BIT_LAYERS, quant_layers, quantize_component

    torch.manual_seed(0)
    vae = AutoencoderKL(**get_preset("sd21").vae_config())
    quantize_component(vae, NAMED_CONFIGS["w6a6"].vae, "vae")
    out = {}
    for name, layer in quant_layers(vae):
        if isinstance(layer, QuantConv) and (name.startswith("decoder.") or name == "post_quant_conv"):
            calibrated_layer(layer, torch.randn(1, layer.in_channels, 5, 5))
            out[name] = KernelLayer(layer_recipe(name, layer, name in EIGHT_BIT_LAYERS["vae"]))
    return out


def tensor_bytes(*objs) -> int:
    """Bytes of the distinct torch storages reachable from objs (dicts, sequences, dataclasses,
    plain objects' attributes), each storage counted once."""
    seen, storages = set(), {}

    def walk(o):
        if id(o) in seen or o is None or isinstance(o, (str, bytes, int, float, bool, np.ndarray, torch.device)):
            return
        seen.add(id(o))
        if isinstance(o, torch.Tensor):
            st = o.untyped_storage()
            storages[(st.data_ptr(), o.device)] = st.nbytes()
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, (list, tuple, set)):
            for v in o:
                walk(v)
        elif hasattr(o, "__dict__"):
            for v in vars(o).values():
                walk(v)
    for o in objs:
        walk(o)
    return sum(storages.values())


def test_sd21_decoder_tile_epilogues_are_bounded(monkeypatch):
    """One 1792 px decoder tile of passion-sr's default VAE tiling (224x224 latent): the
    epilogues each quantized conv passes to the GEMM, through KernelLayer.conv itself (the
    GPU path's code, on the CPU: act_quant and the GEMM launch are recorded, not run, on meta
    inputs of the real sizes), hold less than 4 MB together; the dense per-pixel maps of the
    same convs were ~24 GB. Calls at a second tile size add nothing to what the layers hold."""
    layers = sd21_decoder_layers()
    sizes = conv_input_sizes(224)
    assert set(layers) <= set(sizes) and len(layers) == 36
    assert sizes["decoder.conv_out"] == (1792, 1792)
    held_before = tensor_bytes(layers)
    launches = []

    def fake_act_quant(x3, ops, c_split=None, **kw):
        return torch.empty(x3.shape, dtype=torch.uint8, device=x3.device)

    def fake_qgemm(a, a_ops, w, ep, spatial=None, kernel=(1, 1), stride=1, padding=0, *args, **kw):
        launches.append((spatial, padding, ep))
        return kw.get("out")

    monkeypatch.setattr(kernel_layers, "act_quant", fake_act_quant)
    monkeypatch.setattr(kernel_layers, "qgemm", fake_qgemm)
    dense_bytes = 0
    for name, kl in layers.items():
        h, w = sizes[name]
        kl(torch.empty(1, kl.rec.in_channels, h, w, device="meta"))
        spatial, padding, ep = launches[-1]
        assert spatial == (h, w)
        if any(kl.rec.padding):
            assert ep.border is not None and ep.border.shape == (border_classes(padding) ** 2, kl.rec.out_channels)
            dense_bytes += h * w * kl.rec.out_channels * 4  # stride 1: P_out = H * W float32 values per channel
    epilogue_bytes = tensor_bytes([ep for _, _, ep in launches])
    assert len(launches) == len(layers)
    assert dense_bytes > 20_000 * MB  # what the dense maps would have held (~24 GB)
    assert epilogue_bytes < 4 * MB, f"the decoder tile's epilogues hold {epilogue_bytes / MB:.2f} MB"
    for name, kl in layers.items():  # other sizes, as passion-sr's partial edge tiles have
        h, w = sizes[name]
        kl(torch.empty(1, kl.rec.in_channels, h // 2 + 3, w // 2 + 1, device="meta"))
    assert tensor_bytes(layers) == held_before, "the layers hold more after calls at other sizes"
