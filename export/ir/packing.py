"""Bit packing of integer weight codes: int8 as bytes, int6 as 4 codes in 3 bytes.

The deploy IR stores each layer's weight codes `q` (the LBQ codes, in [qmin, qmax] of the
quantizer's grid) in the smallest whole-bit container. Codes are first mapped to unsigned
`u = q - qmin` (so signed and unsigned grids pack the same way), then:

    8 bit:  one byte per code
    6 bit:  codes (u0, u1, u2, u3) -> 24 bits  u0 | u1 << 6 | u2 << 12 | u3 << 18, little endian

A tail of fewer than 4 codes is padded with zeros; the code count travels with the blob, so
unpacking drops the padding. Narrower grids use the next container: 2..6 bits the 6-bit one,
7 bits the byte (the released configs are W8A8 and W6A6).
"""
from __future__ import annotations

import numpy as np

PACKED_WIDTHS = (6, 8)


def container_bits(bits: int) -> int:
    """The storage width used for codes of `bits` bits."""
    if not 2 <= bits <= 8:
        raise ValueError(f"code width must be in 2..8, got {bits}")
    return 6 if bits <= 6 else 8


def packed_nbytes(n: int, bits: int) -> int:
    return n if container_bits(bits) == 8 else 3 * ((n + 3) // 4)


def pack(codes: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    """Integer codes in the grid of a `bits`-bit (signed or unsigned) quantizer -> uint8 bytes."""
    q = np.asarray(codes).reshape(-1).astype(np.int64)
    qmin = -(1 << (bits - 1)) if signed else 0
    qmax = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    if q.size and (q.min() < qmin or q.max() > qmax):
        raise ValueError(f"codes outside the {bits}-bit {'signed' if signed else 'unsigned'} range [{qmin}, {qmax}]")
    u = (q - qmin).astype(np.uint32)
    if container_bits(bits) == 8:
        return u.astype(np.uint8)
    pad = (-u.size) % 4
    if pad:
        u = np.concatenate([u, np.zeros(pad, np.uint32)])
    g = u.reshape(-1, 4)
    word = g[:, 0] | (g[:, 1] << 6) | (g[:, 2] << 12) | (g[:, 3] << 18)
    out = np.empty((g.shape[0], 3), np.uint8)
    out[:, 0] = word & 0xFF
    out[:, 1] = (word >> 8) & 0xFF
    out[:, 2] = (word >> 16) & 0xFF
    return out.reshape(-1)


def unpack(blob: np.ndarray, n: int, bits: int, signed: bool) -> np.ndarray:
    """Inverse of `pack`: the first `n` codes as int16 (wide enough for every grid)."""
    blob = np.asarray(blob, dtype=np.uint8).reshape(-1)
    if blob.size != packed_nbytes(n, bits):
        raise ValueError(f"packed blob has {blob.size} bytes, expected {packed_nbytes(n, bits)} for {n} {bits}-bit codes")
    qmin = -(1 << (bits - 1)) if signed else 0
    if container_bits(bits) == 8:
        u = blob.astype(np.int16)
    else:
        b = blob.reshape(-1, 3).astype(np.uint32)
        word = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        u = np.stack([(word >> s) & 0x3F for s in (0, 6, 12, 18)], axis=1).reshape(-1)[:n].astype(np.int16)
    return (u + qmin).astype(np.int16)
