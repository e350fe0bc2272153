"""project_linear_grads: fused per-sample Linear gradients vs "materialise, then project"."""

from __future__ import annotations

import pytest
import torch

import adaptinf_fast as af
from adaptinf_fast.ops.projection import linear_grads as lg
from conftest import kernel_cases

BACKENDS = [pytest.param("torch", "cpu", id="torch-cpu")] + kernel_cases("project")


def materialised(a, g, mask=None):
    """Per-sample weight gradients, flattened like Linear.weight.grad (out-major), float64."""
    if mask is not None:
        g = g * mask[..., None].to(g.dtype)
    w = torch.einsum("bto,bti->boi", g.double(), a.double())
    return w.reshape(w.shape[0], -1)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 5, 17, 9), (4, 6, 33, 2)], ids=lambda s: "B{}-T{}-din{}-dout{}".format(*s))
def test_dense_equals_materialise_then_project(backend, device, shape, rng, monkeypatch):
    b, t, d_in, d_out = shape
    monkeypatch.setattr(lg, "TILE_ENTRIES", b * d_in * 2)  # several output-row tiles
    a = torch.randn(b, t, d_in, generator=rng)
    g = torch.randn(b, t, d_out, generator=rng)
    mask = torch.rand(b, t, generator=rng) > 0.3
    y, sq = af.project_linear_grads(a.to(device), g.to(device), 96, seed=7, row_offset=123, mask=mask.to(device), backend=backend)
    w = materialised(a, g, mask)
    want = af.project(w.float(), 96, seed=7, row_offset=123)
    torch.testing.assert_close(y.cpu(), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sq.cpu().double(), w.pow(2).sum(1), rtol=1e-5, atol=1e-5)


def test_padding_and_masked_tokens_contribute_nothing(rng):
    a = torch.randn(2, 4, 10, generator=rng)
    g = torch.randn(2, 4, 6, generator=rng)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    padded_a, padded_g = a.clone(), g.clone()
    padded_a[0, 2:] = 1e3  # garbage in padded positions
    padded_g[0, 2:] = -7
    y1, s1 = af.project_linear_grads(padded_a, padded_g, 32, mask=mask)
    y0, s0 = af.project_linear_grads(a[:1, :2], g[:1, :2], 32)  # sample 0 alone, unpadded
    torch.testing.assert_close(y1[0], y0[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s1[0], s0[0], rtol=1e-5, atol=1e-5)


def test_split_k_over_layers_equals_one_call_on_the_concatenation(rng):
    layers = [(torch.randn(3, 5, 8, generator=rng), torch.randn(3, 5, 4, generator=rng)),
              (torch.randn(3, 5, 6, generator=rng), torch.randn(3, 5, 7, generator=rng))]
    acc = torch.zeros(3, 50)
    offset, norms = 0, torch.zeros(3)
    for a, g in layers:
        _, sq = af.project_linear_grads(a, g, 50, seed=2, row_offset=offset, out=acc)
        offset += a.shape[2] * g.shape[2]
        norms += sq
    whole = torch.cat([materialised(a, g) for a, g in layers], 1)
    torch.testing.assert_close(acc, af.project(whole.float(), 50, seed=2), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(norms.double(), whole.pow(2).sum(1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs(dtype, rng):
    a = torch.randn(2, 5, 12, generator=rng).to(dtype)
    g = torch.randn(2, 5, 3, generator=rng).to(dtype)
    y, sq = af.project_linear_grads(a, g, 40)
    w = materialised(a.float(), g.float())
    torch.testing.assert_close(y, af.project(w.float(), 40), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sq.double(), w.pow(2).sum(1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("t", [2, 50])  # both norm formulas (Gram identity and direct)
def test_factored_is_the_kronecker_sketch(t, rng):
    b, d_in, d_out, k_out, k_in = 3, 9, 5, 4, 6
    a = torch.randn(b, t, d_in, generator=rng)
    g = torch.randn(b, t, d_out, generator=rng)
    y, sq = af.project_linear_grads(a, g, k_out * k_in, seed=3, row_offset=10, mode="factored", factors=(k_out, k_in))
    r_in = af.projection_matrix(d_in, k_in, seed=3, row_offset=10).double()
    r_out = af.projection_matrix(d_out, k_out, seed=3, row_offset=10 + d_in).double()
    w = materialised(a, g)
    want = w @ torch.kron(r_out, r_in)  # vec(W) (R_out ⊗ R_in): index p·k_in + q
    torch.testing.assert_close(y.double(), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sq.double(), w.pow(2).sum(1), rtol=1e-5, atol=1e-4)


def test_factored_preserves_norms_on_average(rng):
    a = torch.randn(64, 8, 256, generator=rng)
    g = torch.randn(64, 8, 128, generator=rng)
    y, sq = af.project_linear_grads(a, g, 4096, mode="factored")
    ratio = y.pow(2).sum(1) / sq
    assert abs(ratio.mean().item() - 1) < 0.1
    assert lg.default_factors(8192) == (64, 128) and lg.default_factors(7) == (1, 7)


def test_nonfinite_samples_are_reported():
    a = torch.randn(3, 4, 5)
    g = torch.randn(3, 4, 2)
    a[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match="1 sample"):
        af.project_linear_grads(a, g, 16)
    with pytest.warns(RuntimeWarning, match="zeroed 1 sample"):
        y, sq = af.project_linear_grads(a, g, 16, nonfinite="zero")
    assert torch.isfinite(y).all() and y[1].abs().sum() == 0 and sq[1] == 0
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[1, 2] = False  # a NaN only in a masked-out token contributes nothing
    y, _ = af.project_linear_grads(a, g, 16, mask=mask)
    clean = a.clone()
    clean[1, 2] = 0
    torch.testing.assert_close(y, af.project_linear_grads(clean, g, 16, mask=mask)[0])


@pytest.mark.parametrize(
    "call,msg",
    [
        (lambda: af.project_linear_grads(torch.randn(2, 5), torch.randn(2, 3, 4), 8), "expected \\(B, T"),
        (lambda: af.project_linear_grads(torch.randn(2, 3, 5), torch.randn(2, 4, 4), 8), "output_grads \\(B, T\\)"),
        (lambda: af.project_linear_grads(torch.randn(2, 3, 5), torch.randn(2, 3, 4), 8, mask=torch.ones(3, 2)), "mask has shape"),
        (lambda: af.project_linear_grads(torch.randn(2, 3, 5), torch.randn(2, 3, 4), 8, mode="kron"), "mode"),
        (lambda: af.project_linear_grads(torch.randn(2, 3, 5), torch.randn(2, 3, 4), 8, mode="factored", factors=(3, 3)), "factors"),
        (lambda: af.project_linear_grads(torch.randn(2, 3, 5), torch.randn(2, 3, 4), 8, out=torch.zeros(2, 9)), "out must be"),
    ],
)
def test_bad_input(call, msg):
    with pytest.raises(ValueError, match=msg):
        call()
