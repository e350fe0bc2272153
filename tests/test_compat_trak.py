"""adaptinf_fast.compat.trak keeps TRAK's projector conventions."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

import adaptinf_fast as af
from adaptinf_fast.compat.trak import BasicProjector, CudaProjector, ProjectionType


@pytest.mark.parametrize("cls", [BasicProjector, CudaProjector])
@pytest.mark.parametrize("ptype,kind", [(ProjectionType.rademacher, "rademacher"), ("normal", "gaussian")])
def test_unscaled_product_with_model_id_seed(cls, ptype, kind, rng):
    proj = cls(grad_dim=300, proj_dim=128, seed=5, proj_type=ptype, device="cpu", max_batch_size=16)
    g = torch.randn(4, 300, generator=rng)
    y = proj.project(g, model_id=3)
    r = af.projection_matrix(300, 128, seed=(3 << 32) | 5, kind=kind) * math.sqrt(128)  # no 1/sqrt(k)
    torch.testing.assert_close(y, g @ r, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(y, proj.project(g, model_id=4))


def test_dict_gradients_dtype_and_errors(rng):
    proj = BasicProjector(grad_dim=10, proj_dim=16, seed=0, proj_type="rademacher", device="cpu", dtype=torch.float16)
    grads = {"w": torch.randn(2, 2, 3, generator=rng), "b": torch.randn(2, 4, generator=rng)}
    y = proj.project({k: v.half() for k, v in grads.items()}, model_id=0)
    assert y.dtype == torch.float16 and y.shape == (2, 16)
    flat = torch.cat([grads["w"].reshape(2, 6), grads["b"]], 1)
    torch.testing.assert_close(y.float(), proj.project(flat, 0), rtol=2e-3, atol=2e-2)
    with pytest.raises(ValueError, match="expected \\(B, 10\\)"):
        proj.project(torch.randn(2, 11), 0)
    with pytest.raises(KeyError):
        BasicProjector(10, 16, 0, "sparse", "cpu")


def test_constructor_accepts_trak_keywords():
    trak = pytest.importorskip("trak.projectors", reason="traker not installed (optional baseline)")
    ours = set(inspect.signature(BasicProjector.__init__).parameters)
    for cls in (trak.BasicProjector, trak.CudaProjector):
        theirs = {p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")}
        assert theirs <= ours, theirs - ours


# ---- TRAK's own projector properties (trak/tests/test_jl.py), on CPU and, on a GPU, on CUDA ---------

import itertools  # noqa: E402

import numpy as np  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SHAPES = [(1, 25), (8, 10_000), (9, 10_002), (45, 1049)]
CASES = [(seed, ptype, dtype, shape, 1024) for seed, ptype, dtype, shape in itertools.product(
    [0, 10**8], [ProjectionType.normal, ProjectionType.rademacher], [torch.float16, torch.float32], SHAPES)]
CASES.append((1, ProjectionType.rademacher, torch.float32, (16, 10_001), 4096))


def trak_input(shape, dtype, device, gen):
    """TRAK's make_tensor inputs (uniform in [-9, 9]), as a dict of two parameter groups."""
    g = (torch.rand(*shape, generator=gen) * 18 - 9).to(dtype).to(device)
    cut = shape[1] // 2
    return {"a": g[:, :cut], "b": g[:, cut:]}, g


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed,ptype,dtype,shape,proj_dim", CASES,
                         ids=lambda v: getattr(v, "value", None) or str(v).replace("torch.", ""))
def test_trak_projector_properties(device, seed, ptype, dtype, shape, proj_dim):
    gen = torch.Generator().manual_seed(seed % 1000)
    make = lambda: CudaProjector(grad_dim=shape[1], proj_dim=proj_dim, seed=seed, proj_type=ptype,  # noqa: E731
                                 device=device, dtype=dtype, max_batch_size=32)
    proj = make()
    grads, g = trak_input(shape, dtype, device, gen)
    p = proj.project(grads, model_id=0)
    # seed consistency: the same projector again, and a new one with the same seed
    torch.testing.assert_close(p, proj.project(grads, model_id=0), equal_nan=True)
    torch.testing.assert_close(p, make().project(grads, model_id=0), equal_nan=True)
    g, pf = g.float().cpu(), p.float().cpu()
    rng = np.random.default_rng(seed)
    # norm preservation of differences and inner products, with TRAK's criteria as its tests write them
    eps = np.sqrt(np.log(1 / 0.05) / proj_dim)
    ok = 0
    for _ in range(100):
        i, j = rng.choice(shape[0], size=2)
        n = (g[i] - g[j]).norm()
        ok += int(abs(n - (pf[i] - pf[j]).norm() / np.sqrt(shape[1])) <= 35 * eps * n)
    assert ok >= 100 * (1 - 3 * 0.05)
    eps = np.sqrt(np.log(1 / 0.2) / proj_dim)
    ok = 0
    for _ in range(100):
        i, j = rng.choice(shape[0], size=2)
        n = g[i] @ g[j]
        res = abs(n.abs() - ((pf[i] / np.sqrt(shape[1])) @ (pf[j] / shape[1])).abs())
        ok += int(res <= abs(50 * np.sqrt(proj_dim) * eps * n)) or np.isinf(float(res))  # TRAK lets inf through, not NaN
    assert ok >= 100 * (1 - 2 * 0.2)
    # and the JL property itself, properly scaled: ‖p_i‖ / sqrt(k) within a few eps of ‖g_i‖
    if dtype == torch.float32:
        ratio = pf.norm(dim=1) / np.sqrt(proj_dim) / g.norm(dim=1)
        assert (ratio - 1).abs().max() < 6 * np.sqrt(1 / proj_dim)
    # every output sees a single non-zero feature, the first one, the last one
    for where in ("random", "first", "last"):
        z = torch.zeros(shape, dtype=dtype, device=device)
        for row in range(shape[0]):
            col = {"first": 0, "last": shape[1] - 1}.get(where, int(rng.integers(shape[1])))
            z[row, col] = float(torch.randn(1, generator=gen)) if where == "random" else 1.0
        out = proj.project(z, model_id=0)
        assert (~torch.isclose(out, torch.zeros_like(out))).all(), where
    # the same features give the same output, up to the rounding of a sum over the row (TRAK's test
    # asks allclose at float32's default tolerances; a CPU GEMM may sum two rows in different orders)
    same = g.clone().to(dtype).to(device)
    same[-1] = same[0]
    out = proj.project(same, model_id=0).float()
    assert float((out[0] - out[-1]).norm() / out[0].norm()) < (2e-3 if dtype == torch.float16 else 1e-5)
