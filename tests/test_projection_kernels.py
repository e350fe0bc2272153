"""Every projection kernel against reference.py: same bits of R, odd sizes, split-P, dtypes."""

from __future__ import annotations

import pytest
import torch

import adaptinf_fast as af
from adaptinf_fast.ops.projection import reference as ref
from conftest import kernel_cases

CASES = kernel_cases("project")
pytestmark = pytest.mark.skipif(not CASES, reason="no projection kernel can run here")


def reference(x, k, **kw):
    return af.project(x.cpu(), k, backend="torch", **kw)


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 257, 130), (17, 95, 64), (2, 40, 300)],
                         ids=lambda s: "B{}-P{}-k{}".format(*s))
def test_fp32_matches_reference(backend, device, kind, shape, rng):
    b, p, k = shape
    x = torch.randn(b, p, generator=rng)
    seed = int(torch.randint(0, 2**62, (1,), generator=rng)) * 3  # exercises both key words
    kw = dict(seed=seed, kind=kind, row_offset=2**33 + 5)  # rows past 2**32: both counter words
    got = af.project(x.to(device), k, backend=backend, **kw).cpu()
    torch.testing.assert_close(got, reference(x, k, **kw), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend,device", CASES)
def test_rademacher_entries_are_bit_exact(backend, device):
    # x = identity rows: the projection *is* the scaled rows of R, which must match exactly
    p, k = 40, 200
    eye = torch.eye(p)
    got = af.project(eye.to(device), k, seed=2**63 + 11, row_offset=77, backend=backend).cpu()
    want = ref.projection_matrix(p, k, seed=2**63 + 11, kind="rademacher", row_offset=77)
    assert torch.equal(got, want)


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_low_precision(backend, device, dtype, kind, rng):
    x = torch.randn(5, 150, generator=rng).to(dtype)
    got = af.project(x.to(device), 96, kind=kind, seed=4, backend=backend).cpu()
    want = reference(x, 96, kind=kind, seed=4)
    # Rademacher: R is exact in any dtype, so only fp32 summation order differs. Gaussian: R is
    # rounded to the input dtype inside the kernel (documented): relative error ~2^-8 per entry.
    tol = 1e-5 if kind == "rademacher" else (2e-2 if dtype == torch.bfloat16 else 3e-3)
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * 5)


@pytest.mark.parametrize("backend,device", CASES)
def test_split_p_workspace_reduction_and_out_accumulation(backend, device, rng, monkeypatch):
    if backend == "triton":
        from adaptinf_fast.ops.projection import triton as tri

        monkeypatch.setattr(tri, "_config", lambda *a: tri.Config(16, 16, num_warps=4, num_stages=2, splits=3))
    if backend == "cuda":
        from adaptinf_fast.ops.projection import cuda

        monkeypatch.setattr(cuda, "_splits", lambda b, p, k, dev, tile: 3)
    x = torch.randn(3, 101, generator=rng)
    out = torch.full((3, 70), 2.0)
    got = af.project(x.to(device), 70, seed=1, out=out.to(device), backend=backend).cpu()
    torch.testing.assert_close(got - 2.0, reference(x, 70, seed=1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend,device", CASES)
def test_strided_input(backend, device, rng):
    base = torch.randn(6, 300, generator=rng)
    x = base[::2, 1::2]  # non-contiguous view
    got = af.project(x.to(device) if device != "cpu" else x, 64, backend=backend).cpu()
    torch.testing.assert_close(got, reference(x.contiguous(), 64), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_batch_over_128_rows_takes_the_two_warpgroup_tile_and_matches(backend, device, dtype, rng):
    """Above 128 rows the sm_90 launcher picks a 256-row tile on 8 warps (one R tile for both
    warpgroups); rows 129.. of it and its masked tail must come out right."""
    from adaptinf_fast.ops.projection import triton as tri

    if backend != "triton":
        pytest.skip("the Triton launcher's tile")
    cfg = tri._config(130, 200, 64, dtype, "rademacher", torch.device(device))
    from adaptinf_fast.ops import _triton_util as tu

    hopper = tu.capability(torch.device(device))[0] >= 9  # the interpreter takes the sm_90 choice
    assert (cfg.block_b, cfg.num_warps) == ((256, 8) if hopper else (128, 8))
    x = torch.randn(130, 200, generator=rng).to(dtype)
    got = af.project(x.to(device), 64, seed=3, row_offset=7, backend="triton").cpu()
    torch.testing.assert_close(got, reference(x, 64, seed=3, row_offset=7), rtol=1e-5, atol=1e-5)
