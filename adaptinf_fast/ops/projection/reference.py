"""Plain-torch reference of the random projection (DESIGN §4.1): the oracle every backend matches.

The projection matrix R
-----------------------
R has one row per input coordinate (a global, 64-bit row index) and ``out_dim`` columns. Every
entry is a pure function of (seed, row, column); it does not depend on ``out_dim``, on tiling or on
the device. The random bits come from Philox4x32-10 (Salmon et al., SC'11; the generator Triton's
``tl.philox``/``tl.randint4x`` implement) used as follows:

* key     = (seed & 0xffffffff, seed >> 32)                      (the 64-bit seed)
* counter = (row & 0xffffffff, row >> 32, block, 0)              (one 128-bit block per row and
                                                                  block of columns)
* the block yields four 32-bit words w0..w3.

``kind="rademacher"``: 128 entries per block, one bit each. Column c lives in block ``c >> 7``,
word ``(c >> 5) & 3``, bit ``c & 31``; a 0 bit is +1 and a 1 bit is -1.

``kind="gaussian"``: 4 entries per block, Box–Muller on the pairs (w0, w1) and (w2, w3). Column c
lives in block ``c >> 2`` and pair ``(c >> 1) & 1``. A word w maps to the open unit interval as
``u(w) = (2 * (w >> 9) + 1) * 2**-24`` (exact in float32, never 0); with u1 = u(first word) and
u2 = u(second word), ``r = sqrt(-2 ln u1)``, ``theta = 2 pi u2``, and the even column of the pair is
``r cos(theta)``, the odd one ``r sin(theta)``. The bits are identical on every backend; the
Gaussian values agree to a few float32 ulp (the transcendental functions round differently) where
a kernel computes them for float32 inputs; for fp16/bf16 inputs the Triton kernel uses the GPU's
fast log/sin/cos (absolute error ~1e-6) before rounding R to the input type.

``project`` returns ``x @ R[row_offset : row_offset + P] / sqrt(out_dim)``. The kernels in
``kernels/philox.cuh`` and ``triton.py`` implement exactly this mapping.
"""

from __future__ import annotations

import math

import torch

MASK32 = 0xFFFFFFFF
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
ENTRIES_PER_BLOCK = {"rademacher": 128, "gaussian": 4}
# R is generated in row blocks of at most this many entries (32 MiB of float32), never whole.
CHUNK_ENTRIES = 1 << 23


def philox4x32_10(c0, c1, c2, c3, k0: int, k1: int):
    """Philox4x32-10 on int64 tensors holding uint32 values; returns the four output words.

    Products of two uint32 values are formed in int64; they may wrap past 2**63, but the low 64 bits
    (all we keep) are exact in two's complement.
    """
    for _ in range(10):
        p0 = c0 * PHILOX_M0
        p1 = c2 * PHILOX_M1
        hi0, lo0 = (p0 >> 32) & MASK32, p0 & MASK32
        hi1, lo1 = (p1 >> 32) & MASK32, p1 & MASK32
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + PHILOX_W0) & MASK32
        k1 = (k1 + PHILOX_W1) & MASK32
    return c0, c1, c2, c3


def _blocks(seed: int, row_start: int, n_rows: int, n_blocks: int, device) -> torch.Tensor:
    """Philox words for rows [row_start, row_start + n_rows) × blocks [0, n_blocks): (rows, blocks, 4)."""
    rows = torch.arange(row_start, row_start + n_rows, dtype=torch.int64, device=device).unsqueeze(1)
    blocks = torch.arange(n_blocks, dtype=torch.int64, device=device).unsqueeze(0)
    c0 = (rows & MASK32).expand(n_rows, n_blocks)
    c1 = (rows >> 32).expand(n_rows, n_blocks)
    c2 = blocks.expand(n_rows, n_blocks)
    c3 = torch.zeros((), dtype=torch.int64, device=device)
    return torch.stack(philox4x32_10(c0, c1, c2, c3, seed & MASK32, seed >> 32), dim=-1)


_SIGN_TABLES: dict[torch.device, torch.Tensor] = {}


def _sign_table(device) -> torch.Tensor:
    """(256, 8) float32: row b holds the 8 signs of byte b, bit i -> column i (0 bit = +1)."""
    device = torch.device(device)
    table = _SIGN_TABLES.get(device)
    if table is None:
        bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1
        table = _SIGN_TABLES[device] = (1 - 2 * bits).to(torch.float32).to(device)
    return table


def _open_unit(words: torch.Tensor) -> torch.Tensor:
    return (((words >> 9) << 1) | 1).to(torch.float64) * 2.0**-24


def matrix_rows(seed: int, row_start: int, n_rows: int, out_dim: int, kind: str, device="cpu") -> torch.Tensor:
    """Unscaled rows [row_start, row_start + n_rows) of R as float32 (n_rows, out_dim)."""
    per_block = ENTRIES_PER_BLOCK[kind]
    n_blocks = -(-out_dim // per_block)
    words = _blocks(seed, row_start, n_rows, n_blocks, device)  # (rows, blocks, 4) uint32 in int64
    if kind == "rademacher":
        # Little-endian bytes of each word: byte k holds bits 8k..8k+7 -> columns 8k..8k+7.
        as_bytes = words.to(torch.int32).view(torch.uint8).long().flatten()  # rows·blocks·16 bytes
        signs = _sign_table(device).index_select(0, as_bytes)  # (bytes, 8): faster than fancy indexing
        return signs.view(n_rows, n_blocks * 128)[:, :out_dim]
    u1, u2 = _open_unit(words[..., 0::2]), _open_unit(words[..., 1::2])  # (rows, blocks, 2)
    r = torch.sqrt(-2.0 * torch.log(u1))
    theta = (2.0 * math.pi) * u2
    z = torch.stack((r * torch.cos(theta), r * torch.sin(theta)), dim=-1)  # (rows, blocks, pair, cos|sin)
    return z.reshape(n_rows, n_blocks * 4)[:, :out_dim].to(torch.float32)


def rows_per_chunk(out_dim: int) -> int:
    return max(1, CHUNK_ENTRIES // max(out_dim, 1))


def projection_matrix(in_dim: int, out_dim: int, *, seed: int, kind: str, row_offset: int, device="cpu") -> torch.Tensor:
    """Scaled rows R[row_offset : row_offset + in_dim] / sqrt(out_dim), float32 (in_dim, out_dim)."""
    return matrix_rows(seed, row_offset, in_dim, out_dim, kind, device).mul_(1.0 / math.sqrt(out_dim))


def project_into(x: torch.Tensor, out: torch.Tensor, *, seed: int, kind: str, row_offset: int) -> None:
    """out += x @ R[row_offset : row_offset + P] / sqrt(out_dim), R generated in row chunks."""
    n_in = x.shape[1]
    out_dim = out.shape[1]
    step = rows_per_chunk(out_dim)
    acc = torch.zeros_like(out)
    for r0 in range(0, n_in, step):
        r1 = min(n_in, r0 + step)
        rows = matrix_rows(seed, row_offset + r0, r1 - r0, out_dim, kind, x.device)
        acc.addmm_(x[:, r0:r1].to(torch.float32), rows)
    out.add_(acc, alpha=1.0 / math.sqrt(out_dim))
