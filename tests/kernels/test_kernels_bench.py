"""The kernel microbenchmark's correctness side (kernels/bench.py), in Triton's interpreter: its
reference reads the weight container as the project's packer writes it, its check passes a
right kernel on every shape kind and width, and fails a kernel that is wrong. Its speed is
shown by the benchmark itself on a GPU (the GPU check), never timed here."""
import numpy as np
import pytest
import torch

from passion_deploy.kernels import use_interpreter_without_gpu

use_interpreter_without_gpu()
pytest.importorskip("triton", reason="the kernels need triton (pip install triton)")

from passion_deploy.export.ir import packing  # noqa: E402
from passion_deploy.kernels import bench  # noqa: E402
from passion_deploy.kernels.operands import PackedWeights  # noqa: E402

SHAPES = {"linear": bench.Shape("linear", 40, 52, 24, "test"), "conv": bench.Shape("conv", 6, 20, 16, "test")}


@pytest.mark.parametrize("bits", [8, 6])
def test_the_reference_reads_the_container_as_the_packer_writes_it(bits):
    rng = np.random.default_rng(bits)
    n, taps, c = 5, 3, 10  # 10 channels: an int6 row ends inside a 4-code word
    codes = rng.integers(0, 1 << bits, (n, taps, c))
    pad = -c % 4 if bits == 6 else 0  # every int6 row starts on a word, as the triton target packs it
    rows = np.concatenate([codes, np.zeros((n, taps, pad), np.int64)], axis=2)
    data = torch.from_numpy(packing.pack(rows, bits, signed=False).reshape(n, taps, -1))
    assert torch.equal(bench.codes(data, bits, c), torch.from_numpy(codes))


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("bits", [8, 6])
def test_the_check_passes_the_kernel(kind, bits):
    err = bench.check(SHAPES[kind], bits, "cpu", torch.float32, torch.Generator().manual_seed(0))
    assert err < 1e-5  # float32 output: rounding only, far inside the benchmark's 1e-2


def test_the_check_fails_a_wrong_kernel(monkeypatch):
    """A kernel given weight zero points off by one (an indexing or epilogue bug's size) is caught."""
    right = bench.launcher

    def off_by_one(shape, a, w, ep, fdt):
        wrong = PackedWeights(w.data, w.container_bits, w.offset, w.channels, w.taps, w.zero + 1, w.colsum,
                              w.residual, w.step)
        return right(shape, a, wrong, ep, fdt)
    monkeypatch.setattr(bench, "launcher", off_by_one)
    err = bench.check(SHAPES["conv"], 8, "cpu", torch.float32, torch.Generator().manual_seed(0))
    assert err > bench.CHECK_TOLERANCE
