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
