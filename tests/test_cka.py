"""Linear CKA streamed over samples: the direct formula, 1 for identical activations, invariance
to orthogonal transforms, isotropic scaling and offsets, any chunking, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adaptinf_fast.ops.cka import linear_cka
from adaptinf_fast.ops.cka.reference import linear_cka as cka_ref


def chunked(xs, ys, size):
    n = xs[0].shape[0]
    return [([x[i : i + size] for x in xs], [y[i : i + size] for y in ys]) for i in range(0, n, size)]


def test_all_pairs_equal_the_direct_formula_for_any_chunking(rng):
    xs = [torch.randn(60, d, generator=rng) for d in (5, 9, 16)]
    ys = [torch.randn(60, d, generator=rng) @ torch.randn(d, d, generator=rng) for d in (7, 3)]
    ys[0][:, :5] += 5.0 * xs[0]  # a strong shared signal
    want = torch.tensor([[cka_ref(x, y) for y in ys] for x in xs], dtype=torch.float64)
    for size in (60, 13, 1):
        got = linear_cka(chunked(xs, ys, size))
        assert got.shape == (3, 2)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    assert want[0, 0] > want[1, 0]  # the shared signal shows


def test_identical_activations_give_one_and_the_invariances_hold(rng):
    x = torch.randn(40, 12, generator=rng)
    y = torch.randn(40, 8, generator=rng)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=rng))
    got = linear_cka([([x, x @ q * 3.5 + 100.0, x], [x, y])])
    torch.testing.assert_close(got[:, 0], torch.ones(3, dtype=torch.float64), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got[1, 1], got[0, 1], rtol=1e-6, atol=1e-9)  # orthogonal, scaled, shifted (x@q in fp32)
    assert 0 <= float(got[0, 1]) < 1


def test_diagonal_pairs_and_inputs_of_any_array_type(rng):
    xs = [torch.randn(30, 6, generator=rng) for _ in range(3)]
    ys = [x + 0.3 * torch.randn(30, 6, generator=rng) for x in xs]
    full = linear_cka(chunked(xs, ys, 7))
    diag = linear_cka([([x.numpy() for x in xs], [y.numpy().astype(np.float16) for y in ys])], pairs="diagonal")
    torch.testing.assert_close(diag, torch.diagonal(full), rtol=1e-3, atol=1e-3)  # fp16 copies: 1e-3


def test_no_spread_is_nan_and_bad_input_is_refused(rng):
    x = torch.randn(10, 4, generator=rng)
    assert torch.isnan(linear_cka([([torch.ones(10, 4)], [x])])).all()
    with pytest.raises(ValueError, match="same samples"):
        linear_cka([([x, x[:5]], [x])])
    with pytest.raises(ValueError, match="model B"):
        linear_cka([([x], [x[:5]])])
    with pytest.raises(ValueError, match="at least 2 samples"):
        linear_cka([([x[:1]], [x[:1]])])
    with pytest.raises(ValueError, match="diagonal"):
        linear_cka([([x, x], [x])], pairs="diagonal")
    with pytest.raises(ValueError, match="same layers"):
        linear_cka([([x], [x]), ([x, x], [x])])
    with pytest.raises(ValueError, match="pairs"):
        linear_cka([], pairs="some")
