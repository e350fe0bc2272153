"""Philox4x32-10 and the (seed, row, column) -> R mapping, checked three independent ways."""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import given, settings, strategies as st

from adaptinf_fast.backends import cuda_extension
from adaptinf_fast.ops.projection import reference as ref
from conftest import gpu

# Random123's published known-answer vectors (kat_vectors): counter[4], key[2] -> output[4].
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]
M32 = 0xFFFFFFFF


def scalar_philox(ctr, key):
    """Plain-int Philox4x32-10 written from the paper, key bumped *before* rounds 2..10."""
    c, k = list(ctr), list(key)
    for rnd in range(10):
        if rnd:
            k = [(k[0] + 0x9E3779B9) & M32, (k[1] + 0xBB67AE85) & M32]
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [((p1 >> 32) ^ c[1] ^ k[0]) & M32, p1 & M32, ((p0 >> 32) ^ c[3] ^ k[1]) & M32, p0 & M32]
    return tuple(c)


def scalar_entry(seed: int, row: int, col: int, kind: str) -> float:
    """R[row, col] from the mapping as documented in reference.py, one entry at a time."""
    per = 128 if kind == "rademacher" else 4
    words = scalar_philox((row & M32, row >> 32, col // per, 0), (seed & M32, seed >> 32))
    if kind == "rademacher":
        return -1.0 if (words[(col % 128) // 32] >> (col % 32)) & 1 else 1.0
    pair = (col % 4) // 2
    u1, u2 = ((2 * (words[2 * pair] >> 9) + 1) / 2**24, (2 * (words[2 * pair + 1] >> 9) + 1) / 2**24)
    r, th = math.sqrt(-2 * math.log(u1)), 2 * math.pi * u2
    return r * math.cos(th) if col % 2 == 0 else r * math.sin(th)


@pytest.mark.parametrize("ctr,key,want", KAT)
def test_reference_philox_known_answers(ctr, key, want):
    out = ref.philox4x32_10(*(torch.tensor(v, dtype=torch.int64) for v in ctr), *key)
    assert tuple(int(v) for v in out) == want
    assert scalar_philox(ctr, key) == want


def test_reference_philox_vectorised_matches_scalar(rng):
    ctrs = torch.randint(0, 2**32, (64, 4), generator=rng, dtype=torch.int64)
    key = tuple(int(v) for v in torch.randint(0, 2**32, (2,), generator=rng, dtype=torch.int64))
    out = torch.stack(ref.philox4x32_10(*ctrs.unbind(1), *key), 1)
    for c, o in zip(ctrs.tolist(), out.tolist()):
        assert tuple(o) == scalar_philox(c, key)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**64 - 1), row=st.integers(0, 2**62), col=st.integers(0, 5000),
       kind=st.sampled_from(["rademacher", "gaussian"]))
def test_matrix_entries_match_documented_mapping(seed, row, col, kind):
    got = ref.matrix_rows(seed, row, 1, col + 1, kind)[0, col].item()
    assert got == pytest.approx(scalar_entry(seed, row, col, kind), rel=1e-6, abs=1e-6)


def test_columns_do_not_depend_on_out_dim(rng):
    seed = int(torch.randint(0, 2**31, (1,), generator=rng))
    for kind in ("rademacher", "gaussian"):
        wide = ref.matrix_rows(seed, 77, 9, 300, kind)
        assert torch.equal(ref.matrix_rows(seed, 77, 9, 129, kind), wide[:, :129])


def test_rademacher_bits_are_balanced_and_distinct_across_rows_and_seeds():
    a = ref.matrix_rows(1, 0, 256, 1024, "rademacher")
    assert abs(a.mean().item()) < 0.01
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a, ref.matrix_rows(2, 0, 256, 1024, "rademacher"))


def test_extension_built_when_required():
    """CI sets ADAPTINF_REQUIRE_CUDA: then _C must have been compiled and must import without a GPU."""
    if os.environ.get("ADAPTINF_REQUIRE_CUDA", "OFF").upper() in ("1", "ON", "TRUE", "YES"):
        assert cuda_extension() is not None, "ADAPTINF_REQUIRE_CUDA is set but adaptinf_fast._C did not import"
    ext = cuda_extension()
    if ext is not None:
        assert ext.cuda_device_count() >= 0 and ext.cuda_runtime_version() > 0


needs_ext = pytest.mark.skipif(cuda_extension() is None, reason="adaptinf_fast._C not built")


@needs_ext
@pytest.mark.parametrize("ctr,key,want", KAT)
def test_cuda_philox_known_answers_host(ctr, key, want):
    assert tuple(cuda_extension().philox4x32_10(ctr, key)) == want


@needs_ext
@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_cuda_mapping_matches_reference_host(kind, rng):
    seed = int(torch.randint(0, 2**62, (1,), generator=rng)) * 3
    row0 = int(torch.randint(0, 2**40, (1,), generator=rng))
    got = torch.tensor(cuda_extension().projection_rows_host(7, 261, seed, row0, kind)).view(7, 261)
    want = ref.matrix_rows(seed, row0, 7, 261, kind)
    if kind == "rademacher":
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, rtol=2e-6, atol=2e-6)


@gpu
@needs_ext
@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_cuda_fill_matches_reference(kind):
    from adaptinf_fast import projection_matrix

    got = projection_matrix(333, 1000, seed=2**40 + 5, kind=kind, row_offset=2**33, device="cuda").cpu()
    want = ref.projection_matrix(333, 1000, seed=2**40 + 5, kind=kind, row_offset=2**33)
    if kind == "rademacher":
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
