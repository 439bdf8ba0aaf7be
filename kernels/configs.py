"""Every configuration the kernels run with on a GPU, as data: the launch of each kernel (block
sizes, num_warps, num_stages) and the compile variants the runtime can reach (the constexpr
and dtype choices a model's layers and attention cores lead to).

The kernel wrappers (act_quant, qgemm, act_matmul, softmax_quant, KernelAttention) take their
GPU defaults from the launches here; `aot.py` compiles every variant below for sm_90 and sm_80
with Triton's own compiler, no GPU needed (tests/test_kernels_aot.py: no compile error, no
register spill, wgmma on Hopper). A new launch or variant is added here, and is then compiled
on every CI run. Triton's interpreter ignores warps and stages, and the triton target's
interpreter block caps (export/targets/triton/modules.py) are CPU-only: not listed here.

Constraint on every block: an int8 `tl.dot` needs K blocks of at least 32 on NVIDIA targets
(BK = 16 fails to compile for sm_90), and M, N blocks of at least 16.

Each variant stands for a launch the runtime makes, described by the layer (or core) it
comes from; `aot.py` builds that launch's arguments with the kernel's own wrapper from the
`shape` given, so Triton specializes them (strides of 1, multiples of 16, aligned pointers)
exactly as it does at run time. No Triton or torch here: this module is plain data.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Launch:
    """How one kernel is launched: its tile (the kernel's BLOCK constexprs) and Triton's options."""

    block: tuple[int, ...]
    num_warps: int = 4
    num_stages: int = 3

    def options(self) -> dict:
        return dict(num_warps=self.num_warps, num_stages=self.num_stages)


# -- launches -------------------------------------------------------------------------------

# act_quant (BP, BC): an elementwise pass with no loop, so stages do not matter; 32x32 is the
# tile the runtime has used since the kernels were written (the triton target's act_block)
ACT_QUANT = Launch((32, 32), num_warps=4, num_stages=3)

# qgemm (BM, BN, BK) by the layer's number of K-groups. One 64x64x32 tile for both (BK = 32:
# the int8 dot's minimum); 4 warps (one Hopper warpgroup, one m64n64k32 wgmma per K step).
# Split layers (G = 2: two K-groups, each its own accumulator and epilogue, in one program)
# need 240-255 registers per thread at 4 warps, at the limit (they spilled on sm_80 before the
# GEMM's flat K loop; 2 or 1 stages do not help); 8 warps halve each thread's share of the tile
# (120-165 registers), so the split variants compile with room to spare.
QGEMM = {
    1: Launch((64, 64, 32), num_warps=4, num_stages=3),
    2: Launch((64, 64, 32), num_warps=8, num_stages=3),
}

# act_matmul (BM, BN, BK): the attention scores QK^T and the PV product, 64x64x32 tiles
ACT_MATMUL = Launch((64, 64, 32), num_warps=4, num_stages=3)

# softmax_quant (BR, BC): 16 rows per program, 128 key columns per step of its three passes
SOFTMAX_QUANT = Launch((16, 128), num_warps=4, num_stages=3)


def qgemm_launch(groups: int) -> Launch:
    """The GEMM launch for a layer of `groups` K-groups (1, or 2 for a split layer)."""
    if groups not in QGEMM:
        raise ValueError(f"the GEMM has launches for {sorted(QGEMM)} K-groups, not {groups}")
    return QGEMM[groups]


# -- compile variants ---------------------------------------------------------------------------
# `shape` fields are sd21 sizes (64x64 latent tile, 320/640 channels, 64-wide heads, 77 text
# tokens) scaled down where only their divisibility matters to Triton's specialization.

@dataclass(frozen=True)
class ActQuantVariant:
    name: str
    why: str
    pre: str  # "none", "let", "div", "mul"
    x_dtype: str  # "fp32" or "fp16": the float input
    out: str  # "u8" or "s8": the operand dtype
    layout: str  # "nchw" (a conv input read channels-last through strides) or "rows" (B, P, C)
    vec_on_rows: bool = False
    shape: tuple[int, int, int] = (1, 4096, 320)  # (B, P, C)


ACT_QUANT_VARIANTS = (
    # layers (the triton target's KernelLayer): uint8 operands from the pipeline's float dtype
    ActQuantVariant("conv-fp32", "a conv's NCHW input, no LET", "none", "fp32", "u8", "nchw"),
    ActQuantVariant("conv-fp16", "the same in an fp16 pipeline", "none", "fp16", "u8", "nchw"),
    ActQuantVariant("conv-let-fp32", "a LET conv's input: (x - o_c) / s_c", "let", "fp32", "u8", "nchw"),
    ActQuantVariant("conv-let-fp16", "the LET conv input in an fp16 pipeline", "let", "fp16", "u8", "nchw"),
    ActQuantVariant("linear-fp32", "a linear layer's (B, tokens, C) input", "none", "fp32", "u8", "rows"),
    ActQuantVariant("linear-fp16", "the same in an fp16 pipeline", "none", "fp16", "u8", "rows"),
    ActQuantVariant("linear-let-fp16", "a LET linear layer's input", "let", "fp16", "u8", "rows"),
    # attention cores quantize q, k, v from float32 (KernelAttention casts them), with the
    # triton target's encodings: q (and P) as uint8, k and v as int8
    ActQuantVariant("attn-q", "q * s_qk per channel -> uint8", "mul", "fp32", "u8", "rows", shape=(5, 1024, 64)),
    ActQuantVariant("attn-k", "k / s_qk per channel -> int8", "div", "fp32", "s8", "rows", shape=(5, 1024, 64)),
    ActQuantVariant("attn-v", "v / s_vw per token (vec_on_rows) -> int8", "div", "fp32", "s8", "rows", True,
                    shape=(5, 1024, 64)),
)


@dataclass(frozen=True)
class GemmVariant:
    name: str
    why: str
    kernel: tuple[int, int] | None  # None: a linear layer; (kh, kw): a conv
    groups: int  # 1, or 2 for a split layer (two channel halves, each its own grids)
    w_bits: int  # 8 (a byte per code) or 6 (4 codes in 3 bytes)
    out: str  # "fp32" or "fp16": the pipeline's float dtype
    res: bool = False  # weight residuals (a weight zero point outside int8)
    bias: bool = True
    map: bool = False  # a padded LET conv's border map
    stride: int = 1
    padding: int = 0
    act: str = "u8"  # activation operands (the triton target's layers use uint8)
    store_int: bool = False  # the exact int32 parts, written only for the kernel tests
    block: tuple[int, int, int] | None = None  # None: the runtime's qgemm_launch(groups)
    shape: tuple[int, ...] = (4096, 320, 320)  # linear (rows, C, N); conv (H, W, C, N)
    channels: tuple[int, ...] | None = None  # split layers: the channel halves (sum = C)

    def launch(self) -> Launch:
        base = qgemm_launch(self.groups)
        return base if self.block is None else Launch(self.block, base.num_warps, base.num_stages)


CONV = (64, 64, 320, 320)  # a UNet resnet conv at the 64x64 latent tile
SPLIT_CONV = (64, 64, 960, 320)  # an up-block resnet conv on cat(h, skip): 640 + 320 channels

GEMM_VARIANTS = (
    # linear layers: attention projections, feed-forward, proj_in/proj_out
    GemmVariant("linear-w8-fp16", "W8A8 linear with bias, fp16 pipeline", None, 1, 8, "fp16"),
    GemmVariant("linear-w8-nobias-fp32", "attention to_q/to_k/to_v (no bias), fp32 pipeline", None, 1, 8, "fp32",
                bias=False),
    GemmVariant("linear-w6-res-fp32", "W6A6 linear with weight residuals", None, 1, 6, "fp32", res=True),
    GemmVariant("linear-split-w8-fp16", "split linear: two K-groups, residuals", None, 2, 8, "fp16", res=True,
                shape=(4096, 640, 320), channels=(320, 320)),
    GemmVariant("linear-split-w6-fp32", "split W6A6 linear, residuals (the heaviest linear)", None, 2, 6, "fp32",
                res=True, shape=(4096, 640, 320), channels=(320, 320)),
    # 3x3 stride-1 convs: resnets, conv_in/conv_out, upsamplers; a LET conv carries a border map
    GemmVariant("conv3-w8-fp16", "W8A8 3x3 conv, LET border map", (3, 3), 1, 8, "fp16", map=True, padding=1,
                shape=CONV),
    GemmVariant("conv3-w6-fp32", "W6A6 3x3 conv, residuals and border map", (3, 3), 1, 6, "fp32", res=True,
                map=True, padding=1, shape=CONV),
    GemmVariant("conv3-split-w8-fp16", "split 3x3 conv on a concatenated skip", (3, 3), 2, 8, "fp16", map=True,
                padding=1, shape=SPLIT_CONV, channels=(640, 320)),
    GemmVariant("conv3-split-w6-fp32", "split W6A6 3x3 conv, every epilogue term (the heaviest launch)", (3, 3), 2,
                6, "fp32", res=True, map=True, padding=1, shape=SPLIT_CONV, channels=(640, 320)),
    # stride 2: UNet downsamplers (padding 1); VAE encoder downsamplers pad (0, 1, 0, 1) themselves
    # and conv with padding 0, on odd sizes
    GemmVariant("conv3s2-w8-fp16", "UNet downsampler", (3, 3), 1, 8, "fp16", map=True, stride=2, padding=1,
                shape=CONV),
    GemmVariant("conv3s2-w6-fp32", "UNet downsampler, W6A6 with residuals", (3, 3), 1, 6, "fp32", res=True,
                map=True, stride=2, padding=1, shape=CONV),
    GemmVariant("conv3s2p0-w8-fp16", "VAE encoder downsampler (pre-padded input)", (3, 3), 1, 8, "fp16", stride=2,
                shape=(129, 129, 128, 128)),
    GemmVariant("conv3s2p0-w6-fp32", "VAE encoder downsampler, W6A6 with residuals", (3, 3), 1, 6, "fp32",
                res=True, stride=2, shape=(129, 129, 128, 128)),
    # 1x1 convs: resnet shortcuts (split on concatenated skips in the up blocks), VAE quant convs;
    # the same constexprs as a linear layer but written NCHW (output row stride 1)
    GemmVariant("conv1-split-w8-fp16", "up-block shortcut on cat(h, skip)", (1, 1), 2, 8, "fp16",
                shape=SPLIT_CONV, channels=(640, 320)),
    GemmVariant("conv1-w6-fp32", "1x1 conv, W6A6 with residuals", (1, 1), 1, 6, "fp32", res=True, shape=CONV),
    # what the kernel tests launch on a GPU (tests/test_kernels_gemm.py): the exact int32 parts,
    # int8 activations, and their small tiles (the smallest the int8 dot takes)
    GemmVariant("test-linear-s8", "kernel tests: int8 activations, int32 parts", None, 1, 8, "fp32",
                act="s8", store_int=True, block=(64, 32, 32), shape=(37, 21, 19)),
    GemmVariant("test-conv-split-small", "kernel tests: 16x16x32 tiles, split W6 conv, int32 parts", (3, 3), 2,
                6, "fp32", res=True, map=True, padding=1, store_int=True, block=(16, 16, 32),
                shape=(5, 7, 13, 19), channels=(6, 7)),
)


@dataclass(frozen=True)
class ActMatmulVariant:
    name: str
    why: str
    product: str  # "qk": codes_q @ codes_k^T (B read transposed); "pv": codes_p @ codes_v
    tokens: int  # key tokens
    store_int: bool = False
    block: tuple[int, int, int] | None = None  # None: ACT_MATMUL
    queries: int = 1024
    head_dim: int = 64
    a: str = "u8"  # q and P as uint8, k and v as int8 (the triton target's encodings)
    b: str = "s8"

    def launch(self) -> Launch:
        return ACT_MATMUL if self.block is None else Launch(self.block, ACT_MATMUL.num_warps, ACT_MATMUL.num_stages)


ACT_MATMUL_VARIANTS = (
    ActMatmulVariant("self-qk", "self-attention scores, tokens a multiple of 16", "qk", 1024),
    ActMatmulVariant("self-pv", "self-attention P @ V", "pv", 1024),
    ActMatmulVariant("cross-qk", "cross-attention on 77 text tokens (no multiple of 16)", "qk", 77),
    ActMatmulVariant("cross-pv", "cross-attention P @ V: K = 77 keys", "pv", 77),
    ActMatmulVariant("test-small", "kernel tests (tests/test_kernels_attention.py): 16x16x32, int32 parts",
                     "qk", 21, store_int=True, block=(16, 16, 32), queries=19, head_dim=37),
)


@dataclass(frozen=True)
class SoftmaxQuantVariant:
    name: str
    why: str
    tokens: int  # keys per row
    rows: int = 5 * 1024


SOFTMAX_QUANT_VARIANTS = (
    SoftmaxQuantVariant("self", "normalised P of self-attention scores -> uint8", 1024),
    SoftmaxQuantVariant("cross", "the same on 77 text tokens", 77),
)
