"""Every configuration the kernels run with on a GPU, as data: the launch of each kernel (block
sizes, num_warps, num_stages) and the compile variants the runtime can reach (the constexpr
and dtype choices a model's layers and attention cores lead to).

The kernel wrappers (act_quant, qgemm, streaming_attention, act_matmul, softmax_quant,
KernelAttention) take their GPU defaults from the launches here; `aot.py` compiles every
variant below for sm_90 and sm_80 with Triton's own compiler, no GPU needed
(tests/kernels/test_kernels_aot.py: no compile error, no register spill, wgmma on Hopper). A new
launch or variant is added here, and is then compiled on every CI run. Triton's interpreter
ignores warps and stages, and the triton target's interpreter block caps
(export/targets/triton/modules.py) are CPU-only: not listed here.

Constraint on every block: an int8 `tl.dot` needs K blocks of at least 32 on NVIDIA targets
(BK = 16 fails to compile for sm_90), and M, N blocks of at least 16.

Each variant stands for a launch the runtime makes, described by the layer (or core) it
comes from; `aot.py` builds that launch's arguments with the kernel's own wrapper from the
`shape` given, so Triton specializes them (strides of 1, multiples of 16, aligned pointers)
exactly as it does at run time. No Triton or torch here: this module is plain data.
"""
from __future__ import annotations

from dataclasses import dataclass, replace


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

# qgemm (BM, BN, BK): explicit launches per shape class (GEMM_CLASSES, after the variants'
# classes below), chosen among on a GPU by tuning.py. K blocks of 32 (the int8 dot's minimum)
# or 64; 4 warps are one Hopper warpgroup (one m64nNk32 wgmma per 64 rows and K step).
# Split layers (G = 2: two K-groups, each its own accumulator and epilogue, in one program)
# need 240-255 registers per thread at 4 warps, at the limit (they spilled on sm_80 before the
# GEMM's flat K loop; 2 or 1 stages do not help); 8 warps halve each thread's share of the tile
# (120-165 registers), so the split launches take 8 warps, but for the 32-wide tiles of the
# vae-rgb class (64x32 at 4 warps: 128-206 registers).

# streaming_attention (BM, BN): the attention core, BM query rows per program and BN keys per
# step of its three passes (the head dim is one tile, BD = max(32, d rounded up to a power of 2)).
# 64 rows: one Hopper warpgroup's wgmma; 64 keys: the PV dot's K (>= 32) and the QK^T dot's N.
# 2 stages: with 3, sm_80 needed all 255 registers a thread has (no spill yet, no margin);
# 2 take 215-229 there (184-217 on sm_90) and a third less shared memory. 8 warps did not help.
STREAMING_ATTENTION = Launch((64, 64), num_warps=4, num_stages=2)

# the materialised attention path (KernelAttention's store_int debug mode, which hands the tests
# the (Z, N, N) scores and P codes): act_matmul (BM, BN, BK) for QK^T and PV, 64x64x32 tiles
ACT_MATMUL = Launch((64, 64, 32), num_warps=4, num_stages=3)

# softmax_quant (BR, BC): 16 rows per program, 128 key columns per step of its three passes
SOFTMAX_QUANT = Launch((16, 128), num_warps=4, num_stages=3)


@dataclass(frozen=True)
class GemmClass:
    """GEMM launches of similar shape: its candidates, the first of which is the fixed launch
    (Triton's interpreter, PASSION_DEPLOY_AUTOTUNE=0, and the warps and stages of an explicit
    block). The class of a launch is decided by its rows M = batch x output positions (tokens of
    a linear layer), which set how many programs fill the GPU, and by a narrow N."""

    name: str
    serves: str  # the sd21 layers in it, UNet at the 64x64 latent tile and VAE at 512 px, batch 1 and 4
    max_rows: int | None  # M up to this (None: any)
    max_n: int | None  # output channels up to this (None: any)
    launches: tuple[Launch, ...]  # one K-group
    split_launches: tuple[Launch, ...]  # two K-groups (split layers)

    def candidates(self, groups: int) -> tuple[Launch, ...]:
        if groups not in (1, 2):
            raise ValueError(f"the GEMM has launches for 1 or 2 K-groups, not {groups}")
        return self.launches if groups == 1 else self.split_launches


# Registers per thread (ptxas, sm_90 / sm_80) of the heaviest variants (6-bit weights, residuals,
# border table, fp32 out). conv3-w6-fp32: 64x64x64 w4 174/128, 128x64x32 w4 s4 218/178, 128x64x64
# w4 228/168, 256x64x32 w8 222/192; 64x128x64 w4 and 128x128x32/64 w8 spill on sm_90 (255
# registers). conv3-split-w6-fp32 (8 warps): 64x64x32 128/121, 64x64x64 172/166, 64x128x32
# 222/202, 128x32x64 175/128; 128x64x32 spills on sm_90 (s3 and s2). The vae-rgb split 1x1 conv
# (4-channel groups) takes 206/168 at 64x32x32 w4, 235/241 at 64x32x64 w4, 255 (spilling) at
# 128x32x64 w4. aot.py compiles every variant below with every launch of its class: none spills.
GEMM_CLASSES = (
    GemmClass("vae-rgb", "the VAE's narrow convs: decoder conv_out 128 -> 3 at 512 px, quant_conv 8 and "
              "post_quant_conv 4 channels at the 64x64 latent", None, 32,
              (Launch((128, 32, 64), 4, 3), Launch((64, 32, 64), 4, 3)),
              (Launch((64, 32, 32), 4, 3), Launch((128, 32, 32), 8, 3))),
    GemmClass("unet-low-res", "UNet 8x8 level (down block 3, mid block, up block 0: 1280 channels, K up to "
              "2 x 11520) at batch 1 and 4, and its 16x16 level at batch 1: at most 256 rows, few programs",
              256, None,
              (Launch((64, 64, 64), 4, 3), Launch((64, 64, 32), 4, 4)),
              (Launch((64, 64, 64), 8, 3), Launch((64, 64, 32), 8, 3))),
    GemmClass("unet-mid-res", "UNet 16x16 level at batch 4, 32x32 at batch 1 and 4, 64x64 at batch 1, and the "
              "VAE's 64x64 latent-size convs and mid-block attention at batch 1: 257-4096 rows",
              4096, None,
              (Launch((64, 64, 32), 4, 3), Launch((64, 64, 64), 4, 3), Launch((128, 64, 64), 4, 3)),
              (Launch((64, 64, 32), 8, 3), Launch((64, 64, 64), 8, 3), Launch((64, 128, 32), 8, 3))),
    GemmClass("unet-64-batch4-vae", "UNet 64x64 level at batch 4 (16384 rows) and the VAE's 128-512 px levels "
              "(16384-262144 rows)", None, None,
              (Launch((128, 64, 64), 4, 3), Launch((256, 64, 32), 8, 3), Launch((128, 64, 32), 4, 4)),
              (Launch((64, 128, 32), 8, 3), Launch((64, 64, 64), 8, 4), Launch((128, 32, 64), 8, 3))),
)


def gemm_class(rows: int, n: int) -> GemmClass:
    """The shape class of a GEMM launch of `rows` rows (batch x output positions) and n columns."""
    for c in GEMM_CLASSES:
        if (c.max_rows is None or rows <= c.max_rows) and (c.max_n is None or n <= c.max_n):
            return c
    raise AssertionError("the last GEMM class takes every shape")


def qgemm_launches(rows: int, n: int, groups: int) -> tuple[GemmClass, tuple[Launch, ...]]:
    """(class, its candidate launches) of a GEMM of `groups` K-groups (1, or 2 for a split layer)."""
    cls = gemm_class(rows, n)
    return cls, cls.candidates(groups)


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
    map: bool = False  # a padded LET conv's border map (its compact (row class, column class) table)
    stride: int = 1
    padding: int = 0
    act: str = "u8"  # activation operands (the triton target's layers use uint8)
    store_int: bool = False  # the exact int32 parts, written only for the kernel tests
    block: tuple[int, int, int] | None = None  # None: every launch of the shape's class
    shape: tuple[int, ...] = (4096, 320, 320)  # linear (rows, C, N); conv (H, W, C, N)
    channels: tuple[int, ...] | None = None  # split layers: the channel halves (sum = C)
    batch: int = 1
    config: Launch | None = None  # one launch of launches(): set by gemm_compile_list

    def rows(self) -> int:
        """M of the launch: batch x output positions (a linear layer's rows)."""
        if self.kernel is None:
            return self.batch * self.shape[0]
        h, w = self.shape[:2]
        ho = (h + 2 * self.padding - self.kernel[0]) // self.stride + 1
        wo = (w + 2 * self.padding - self.kernel[1]) // self.stride + 1
        return self.batch * ho * wo

    def gemm_class(self) -> GemmClass:
        return gemm_class(self.rows(), self.shape[-1])

    def launches(self) -> tuple[Launch, ...]:
        """What the runtime may launch this variant with: its class's candidates, or an explicit
        block with the warps and stages of the class's fixed launch (as gemm.qgemm does)."""
        cands = self.gemm_class().candidates(self.groups)
        return cands if self.block is None else (Launch(self.block, cands[0].num_warps, cands[0].num_stages),)

    def launch(self) -> Launch:
        return self.config if self.config is not None else self.launches()[0]


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
    # what the kernel tests launch on a GPU (tests/kernels/test_kernels_gemm.py): the exact int32 parts,
    # int8 activations, and their small tiles (the smallest the int8 dot takes)
    GemmVariant("test-linear-s8", "kernel tests: int8 activations, int32 parts", None, 1, 8, "fp32",
                act="s8", store_int=True, block=(64, 32, 32), shape=(37, 21, 19)),
    GemmVariant("test-conv-split-small", "kernel tests: 16x16x32 tiles, split W6 conv, int32 parts", (3, 3), 2,
                6, "fp32", res=True, map=True, padding=1, store_int=True, block=(16, 16, 32),
                shape=(5, 7, 13, 19), channels=(6, 7)),
    # the variants above are in the unet-mid-res class (4096 or 1024 rows); the other classes'
    # layers. unet-low-res: the 8x8 level's 1280-channel convs at batch 4 (256 rows), its split
    # up-block convs on cat(h, skip) (2560 channels), the 16x16 level's transformer linears
    GemmVariant("low-conv3-w8-fp16", "UNet 8x8 level resnet conv, batch 4", (3, 3), 1, 8, "fp16", map=True,
                padding=1, shape=(8, 8, 1280, 1280), batch=4),
    GemmVariant("low-conv3-w6-fp32", "the same, W6A6 with residuals", (3, 3), 1, 6, "fp32", res=True, map=True,
                padding=1, shape=(8, 8, 1280, 1280), batch=4),
    GemmVariant("low-conv3-split-w8-fp16", "UNet up block 0 resnet conv on cat(h, skip)", (3, 3), 2, 8, "fp16",
                map=True, padding=1, shape=(8, 8, 2560, 1280), channels=(1280, 1280)),
    GemmVariant("low-conv3-split-w6-fp32", "the same, W6A6 with residuals", (3, 3), 2, 6, "fp32", res=True, map=True,
                padding=1, shape=(8, 8, 2560, 1280), channels=(1280, 1280)),
    GemmVariant("low-linear-w8-fp16", "UNet 16x16 transformer projection, batch 1", None, 1, 8, "fp16",
                shape=(256, 1280, 1280)),
    GemmVariant("low-linear-split-w6-fp32", "UNet 16x16 feed-forward out (5120 -> 1280), split W6A6", None, 2, 6,
                "fp32", res=True, shape=(256, 5120, 1280), channels=(2560, 2560)),
    # unet-64-batch4-vae: the 64x64 level at batch 4, the VAE encoder's downsamplers at 512 px
    GemmVariant("large-conv3-w8-fp16", "UNet 64x64 resnet conv, batch 4", (3, 3), 1, 8, "fp16", map=True,
                padding=1, shape=CONV, batch=4),
    GemmVariant("large-conv3-w6-fp32", "the same, W6A6 with residuals", (3, 3), 1, 6, "fp32", res=True, map=True,
                padding=1, shape=CONV, batch=4),
    GemmVariant("large-conv3-split-w8-fp16", "UNet up block 3 conv on cat(h, skip), batch 4", (3, 3), 2, 8, "fp16",
                map=True, padding=1, shape=SPLIT_CONV, channels=(640, 320), batch=4),
    GemmVariant("large-conv3-split-w6-fp32", "the same, W6A6 with residuals", (3, 3), 2, 6, "fp32", res=True,
                map=True, padding=1, shape=SPLIT_CONV, channels=(640, 320), batch=4),
    GemmVariant("large-linear-w6-res-fp32", "UNet 64x64 transformer linear, batch 4", None, 1, 6, "fp32", res=True,
                batch=4),
    GemmVariant("large-conv3s2p0-w8-fp16", "VAE encoder downsampler at 512 px (257 -> 128)", (3, 3), 1, 8, "fp16",
                stride=2, shape=(257, 257, 128, 128)),
    # vae-rgb: the VAE's 8-bit convs with a handful of output channels, split as the released
    # configs have them (and not split, as a config without split has them)
    GemmVariant("rgb-conv3-w8-fp32", "VAE decoder conv_out (128 -> 3), not split", (3, 3), 1, 8, "fp32", map=True,
                padding=1, shape=(64, 64, 128, 3)),
    GemmVariant("rgb-conv3-split-w8-fp16", "VAE decoder conv_out (128 -> 3)", (3, 3), 2, 8, "fp16", map=True,
                padding=1, shape=(64, 64, 128, 3), channels=(64, 64)),
    GemmVariant("rgb-conv3-split-w8-fp32", "the same, fp32 pipeline", (3, 3), 2, 8, "fp32", map=True, padding=1,
                shape=(64, 64, 128, 3), channels=(64, 64)),
    GemmVariant("rgb-conv1-split-w8-fp32", "VAE quant_conv (8 -> 8)", (1, 1), 2, 8, "fp32", shape=(64, 64, 8, 8),
                channels=(4, 4)),
)


def gemm_compile_list() -> tuple[GemmVariant, ...]:
    """What aot.py compiles: every variant with every launch the runtime may give it (each
    launch of its shape class, or its explicit block), named variant@BMxBNxBKwWARPSsSTAGES."""
    return tuple(replace(v, name=f"{v.name}@{'x'.join(map(str, c.block))}w{c.num_warps}s{c.num_stages}", config=c)
                 for v in GEMM_VARIANTS for c in v.launches())


@dataclass(frozen=True)
class StreamingAttentionVariant:
    name: str
    why: str
    tokens: int  # key tokens
    queries: int = 1024
    head_dim: int = 64
    a: str = "u8"  # q and P as uint8, k and v as int8 (the triton target's encodings)
    b: str = "s8"
    block: tuple[int, int] | None = None  # None: STREAMING_ATTENTION

    def launch(self) -> Launch:
        base = STREAMING_ATTENTION
        return base if self.block is None else Launch(self.block, base.num_warps, base.num_stages)


STREAMING_ATTENTION_VARIANTS = (
    StreamingAttentionVariant("self", "self-attention (KernelAttention's call), tokens a multiple of 64", 1024),
    StreamingAttentionVariant("cross", "cross-attention on 77 text tokens (no multiple of 16)", 77),
    # what the kernel tests launch on a GPU (tests/kernels/test_kernels_attention.py): 16 query rows x 32
    # keys (the PV dot's K minimum), head dim 8 padded to 32, and both operand dtypes on each side
    StreamingAttentionVariant("test-small", "kernel tests: 16x32 tiles, head dim 8", 37, queries=19, head_dim=8,
                              block=(16, 32)),
    StreamingAttentionVariant("test-small-swapped", "kernel tests: int8 q/P, uint8 k/v", 37, queries=19,
                              head_dim=8, a="s8", b="u8", block=(16, 32)),
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


# the materialised path only (KernelAttention(store_int=True)), which always writes the int32 parts
ACT_MATMUL_VARIANTS = (
    ActMatmulVariant("self-qk", "self-attention scores, tokens a multiple of 16", "qk", 1024, store_int=True),
    ActMatmulVariant("self-pv", "self-attention P @ V", "pv", 1024, store_int=True),
    ActMatmulVariant("cross-qk", "cross-attention on 77 text tokens (no multiple of 16)", "qk", 77, store_int=True),
    ActMatmulVariant("cross-pv", "cross-attention P @ V: K = 77 keys", "pv", 77, store_int=True),
    ActMatmulVariant("test-small", "kernel tests (tests/kernels/test_kernels_attention.py): 16x16x32, int32 parts",
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
