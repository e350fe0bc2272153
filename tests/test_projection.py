"""project / projection_matrix (DESIGN §4.1) against explicit matrices and the JL property."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import adaptinf_fast as af
from adaptinf_fast.ops.projection import reference as ref

TOL = {torch.float32: (1e-5, 1e-4), torch.float16: (1e-5, 1e-4), torch.bfloat16: (1e-5, 1e-4)}


def dense(x, out_dim, **kw):
    """x @ R in float64 from the materialised matrix: the independent check."""
    r = af.projection_matrix(x.shape[1], out_dim, **kw).double()
    return x.double() @ r


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 257, 130), (5, 1000, 64), (2, 70, 513)],
                         ids=lambda s: "B{}-P{}-k{}".format(*s))
@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_project_equals_matrix_product(shape, kind, rng, device):
    b, p, k = shape
    x = torch.randn(b, p, generator=rng).to(device)
    seed = int(torch.randint(0, 2**40, (1,), generator=rng))
    got = af.project(x, k, seed=seed, kind=kind, row_offset=11)
    assert got.dtype == torch.float32 and got.shape == (b, k) and got.device == x.device
    want = dense(x.cpu(), k, seed=seed, kind=kind, row_offset=11)
    torch.testing.assert_close(got.cpu().double(), want, rtol=1e-5, atol=1e-4 * math.sqrt(p / k))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_input_accumulates_in_fp32(dtype, rng):
    x = torch.randn(4, 3000, generator=rng).to(dtype)
    got = af.project(x, 256, seed=3)
    want = dense(x.float(), 256, seed=3)  # the same input values, exact arithmetic
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-3)


def test_chunking_does_not_change_the_result(rng, monkeypatch):
    x = torch.randn(3, 900, generator=rng)
    whole = af.project(x, 200, seed=9)
    monkeypatch.setattr(ref, "CHUNK_ENTRIES", 200 * 7)  # 7 rows of R per chunk
    torch.testing.assert_close(af.project(x, 200, seed=9), whole, rtol=1e-5, atol=1e-5)


def test_split_k_with_row_offset_equals_whole(rng):
    x = torch.randn(6, 1001, generator=rng)
    whole = af.project(x, 384, seed=5, row_offset=40)
    acc = torch.zeros(6, 384)
    for lo, hi in [(0, 300), (300, 301), (301, 1001)]:
        af.project(x[:, lo:hi], 384, seed=5, row_offset=40 + lo, out=acc)
    torch.testing.assert_close(acc, whole, rtol=1e-5, atol=1e-5)


def test_out_is_added_to_and_returned(rng):
    x = torch.randn(2, 50, generator=rng)
    out = torch.ones(2, 16)
    res = af.project(x, 16, out=out)
    assert res is out
    torch.testing.assert_close(out - 1, af.project(x, 16), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_johnson_lindenstrauss_norms(kind, rng):
    x = torch.randn(64, 4096, generator=rng) * torch.rand(64, 1, generator=rng) * 10
    y = af.project(x, 2048, seed=int(torch.randint(0, 2**31, (1,), generator=rng)), kind=kind)
    ratio = y.pow(2).sum(1) / x.pow(2).sum(1)
    assert abs(ratio.mean().item() - 1) < 0.03
    assert ratio.std().item() < 0.1  # sqrt(2/k) ≈ 0.031 for a JL map


def test_same_seed_same_result_different_seed_different(rng):
    x = torch.randn(3, 500, generator=rng)
    assert torch.equal(af.project(x, 64, seed=1), af.project(x, 64, seed=1))
    assert not torch.allclose(af.project(x, 64, seed=1), af.project(x, 64, seed=2))


def test_numpy_input():
    x = np.random.default_rng(0).standard_normal((2, 40)).astype(np.float32)
    torch.testing.assert_close(af.project(x, 8), af.project(torch.from_numpy(x), 8))


def test_empty_batch():
    assert af.project(torch.zeros(0, 10), 4).shape == (0, 4)


def test_nonfinite_rows_raise_or_are_zeroed():
    x = torch.randn(4, 30)
    x[1, 3] = float("nan")
    x[3, 0] = float("inf")
    with pytest.raises(ValueError, match="2 row"):
        af.project(x, 8)
    with pytest.warns(RuntimeWarning, match="zeroed 2 row"):
        y = af.project(x, 8, nonfinite="zero")
    assert torch.isfinite(y).all() and torch.equal(y[1], torch.zeros(8))


@pytest.mark.parametrize(
    "call,err,msg",
    [
        (lambda: af.project(torch.randn(2, 3, 4), 8), ValueError, "3 dims"),
        (lambda: af.project(torch.randn(5), 8), ValueError, "1 dims"),
        (lambda: af.project(torch.ones(2, 3, dtype=torch.int64), 8), TypeError, "dtype"),
        (lambda: af.project(torch.randn(2, 3), 0), ValueError, "out_dim"),
        (lambda: af.project(torch.randn(2, 3), 2.5), TypeError, "out_dim"),
        (lambda: af.project(torch.randn(2, 3), 4, seed=-1), ValueError, "seed"),
        (lambda: af.project(torch.randn(2, 3), 4, seed=2**64), ValueError, "seed"),
        (lambda: af.project(torch.randn(2, 3), 4, kind="sparse"), ValueError, "kind"),
        (lambda: af.project(torch.randn(2, 3), 4, row_offset=-2), ValueError, "row_offset"),
        (lambda: af.project(torch.randn(2, 3), 4, out=torch.zeros(2, 5)), ValueError, "out has shape"),
        (lambda: af.project(torch.randn(2, 3), 4, out=torch.zeros(2, 4, dtype=torch.float64)), TypeError, "float32"),
        (lambda: af.project(torch.randn(2, 3), 4, backend="nope"), ValueError, "not a backend"),
        (lambda: af.projection_matrix(3, 4, kind="x"), ValueError, "kind"),
    ],
)
def test_bad_input(call, err, msg):
    with pytest.raises(err, match=msg):
        call()
