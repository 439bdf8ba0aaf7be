"""Weight-code packing: int8 and int6 (4 codes in 3 bytes), bit-exact round trips."""
import numpy as np
import pytest

from passion_deploy.export.ir.packing import container_bits, pack, packed_nbytes, unpack


def grid(bits, signed):
    lo = -(1 << (bits - 1)) if signed else 0
    return np.arange(lo, lo + (1 << bits))


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("signed", [False, True])
def test_every_code_round_trips(bits, signed):
    codes = grid(bits, signed)
    # every code at every position of a 4-code group: 4 shifted copies
    codes = np.concatenate([np.roll(codes, k) for k in range(4)])
    blob = pack(codes, bits, signed)
    assert blob.dtype == np.uint8 and blob.size == packed_nbytes(codes.size, bits)
    np.testing.assert_array_equal(unpack(blob, codes.size, bits, signed), codes)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 7, 1001])
@pytest.mark.parametrize("signed", [False, True])
def test_odd_lengths_int6(n, signed):
    rng = np.random.default_rng(n)
    g = grid(6, signed)
    codes = rng.integers(g[0], g[-1] + 1, n)
    blob = pack(codes, 6, signed)
    assert blob.size == 3 * ((n + 3) // 4)
    np.testing.assert_array_equal(unpack(blob, n, 6, signed), codes)


def test_int6_is_three_quarters_of_int8():
    codes = np.zeros(4000, np.int64)
    assert pack(codes, 6, False).size == 3000 and pack(codes, 8, False).size == 4000


def test_int6_layout_is_little_endian_6bit_fields():
    # u0=1, u1=2, u2=3, u3=63 -> word = 1 | 2<<6 | 3<<12 | 63<<18
    word = 1 | 2 << 6 | 3 << 12 | 63 << 18
    assert pack(np.array([1, 2, 3, 63]), 6, False).tolist() == [word & 255, (word >> 8) & 255, word >> 16]
    # signed codes pack as code - qmin
    assert pack(np.array([-32, -31, -30, 31]), 6, True).tolist() == pack(np.array([0, 1, 2, 63]), 6, False).tolist()


def test_out_of_range_and_bad_blobs_are_refused():
    with pytest.raises(ValueError, match="outside"):
        pack(np.array([64]), 6, False)
    with pytest.raises(ValueError, match="outside"):
        pack(np.array([-129]), 8, True)
    with pytest.raises(ValueError, match="expected"):
        unpack(np.zeros(5, np.uint8), 4, 6, False)
    assert container_bits(5) == 6 and container_bits(7) == 8
    with pytest.raises(ValueError):
        container_bits(9)
