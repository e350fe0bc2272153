"""The pipelined 16-bit CUDA kernels (kernels/pipe.cuh) on both of their paths. Without a GPU the
host emulator runs ARCH 90 (wgmma from swizzled shared-memory descriptors) and ARCH 80 (ldmatrix +
mma.sync), chosen with ADAPTINF_EMULATE_ARCH; on a GPU (the GPU check) the path the device takes
runs on CUDA tensors. References take the same 16-bit-rounded inputs in float32, so only the
summation order differs. Also: which launches take the pipeline, and that the emulator reports
broken uses of the new instructions."""

from __future__ import annotations

import math

import pytest
import torch

from adaptinf_fast.backends import cuda_emulating, cuda_kernels
from adaptinf_fast.ops.dedup import cuda as dedup_cuda
from adaptinf_fast.ops.dedup import reference as dedup_ref
from adaptinf_fast.ops.kmeans import cuda as kmeans_cuda
from adaptinf_fast.ops.kmeans import reference as kmeans_ref
from adaptinf_fast.ops.projection import cuda as proj_cuda
from adaptinf_fast.ops.projection import reference as proj_ref

ON_GPU = torch.cuda.is_available() and not cuda_emulating()
pytestmark = pytest.mark.skipif(cuda_kernels() is None or not (ON_GPU or cuda_emulating()),
                                reason="needs the CUDA kernels: a GPU, or the host emulator")

ARCHS = ["gpu"] if ON_GPU else ["90", "80"]
DTYPES = [torch.bfloat16, torch.float16]
CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


DEVICE = "cuda" if ON_GPU else "cpu"


@pytest.fixture(params=ARCHS, ids=lambda a: f"sm{a}")
def arch(request, monkeypatch):
    """The path under test: the emulator's ADAPTINF_EMULATE_ARCH, or what this GPU takes."""
    if request.param != "gpu":
        monkeypatch.setenv("ADAPTINF_EMULATE_ARCH", request.param)
        return int(request.param)
    major = torch.cuda.get_device_capability()[0]
    return 90 if major == 9 and cuda_kernels().__name__.endswith("_C") else 80


def test_which_launches_take_the_pipeline(arch, monkeypatch):
    ext = cuda_kernels()
    x = torch.zeros(4, 72, dtype=torch.bfloat16, device=DEVICE)
    assert ext.pipeline_arch(CODES[torch.bfloat16], x.data_ptr(), 72, 0) == arch  # 90 on an sm_90a build of _C
    assert ext.pipeline_arch(CODES[torch.float16], x.data_ptr(), 72, 0) == arch
    assert ext.pipeline_arch(CODES[torch.float32], x.data_ptr(), 72, 0) == 0  # fp32: WMMA tf32 tiles
    assert ext.pipeline_arch(CODES[torch.bfloat16], x.data_ptr(), 70, 0) == 0  # rows not 16-byte aligned
    assert ext.pipeline_arch(CODES[torch.bfloat16], x.data_ptr() + 2, 72, 0) == 0
    monkeypatch.setenv("ADAPTINF_CUDA_PIPELINE", "0")
    assert ext.pipeline_arch(CODES[torch.bfloat16], x.data_ptr(), 72, 0) == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("b,p,k,splits", [(1, 8, 1, 1), (130, 200, 260, 1), (7, 1000, 128, 3), (64, 136, 300, 2)],
                         ids=str)
def test_projection_equals_reference(arch, dtype, b, p, k, splits, rng):
    x = torch.randn(b, p, generator=rng).to(dtype)
    seed, offset = 2**40 + 17, 2**33 + 5
    xd = x.to(DEVICE)
    assert cuda_kernels().pipeline_arch(CODES[dtype], xd.data_ptr(), p, 0) == arch
    got = torch.zeros(b, k, device=DEVICE)
    proj_cuda.project_into(xd, got, seed=seed, kind="rademacher", row_offset=offset, splits=splits)
    want = x.float() @ proj_ref.matrix_rows(seed, offset, p, k, "rademacher") / math.sqrt(k)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-5)


def _assign_reference(x, c, metric):
    return kmeans_ref.assign(x.float(), c.float(), metric)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("n,k,d", [(1, 1, 8), (300, 200, 136), (129, 129, 64)], ids=str)
def test_kmeans_assign_equals_reference(arch, dtype, metric, n, k, d, rng):
    x = torch.randn(n, d, generator=rng)
    c = torch.randn(k, d, generator=rng)
    if metric == "cosine":
        x, c = torch.nn.functional.normalize(x, dim=1), torch.nn.functional.normalize(c, dim=1)
    x, c = x.to(dtype), c.to(dtype)
    labels, values = (t.cpu() for t in kmeans_cuda.assign(x.to(DEVICE), c.to(DEVICE), metric))
    want_labels, want_values = _assign_reference(x, c, metric)
    torch.testing.assert_close(values, want_values, rtol=1e-4, atol=1e-3)
    # labels agree wherever the best centroid is not within float32 summation noise of the second
    scores = torch.cdist(x.float(), c.float()) ** 2 if metric == "l2" else -(x.float() @ c.float().T)
    top = scores.topk(min(2, k), dim=1, largest=False).values
    clear = (top[:, 1] - top[:, 0] > 1e-3) if k > 1 else torch.ones(n, dtype=torch.bool)
    assert torch.equal(labels[clear], want_labels[clear])


def test_kmeans_exact_ties_go_to_the_lowest_index_across_tiles(arch, rng):
    x = torch.randn(200, 64, generator=rng).to(torch.bfloat16)
    c = torch.randn(300, 64, generator=rng).to(torch.bfloat16)
    c[0] = x[0]
    c[5] = c[0]
    c[200] = c[0]  # another centroid tile
    c[130:140] = c[9]
    x[1] = c[9]
    labels, _ = kmeans_cuda.assign(x.to(DEVICE), c.to(DEVICE), "l2")
    assert labels[0] == 0 and labels[1] == 9


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_max_similarity_equals_reference(arch, dtype, rng):
    n, d = 300, 72
    x = torch.randn(n, d, generator=rng)
    labels = torch.randint(0, 4, (n,), generator=rng)
    labels[::5] = 10 + torch.arange(len(labels[::5]))  # singletons: no predecessor
    x[200:210] = x[201]  # exact duplicates: ties to the earliest
    labels[200:210] = 2
    xn = torch.nn.functional.normalize(x, dim=1).to(dtype)
    order = torch.randperm(n, generator=rng)
    best, arg = (t.cpu() for t in dedup_cuda.max_similarity(xn.to(DEVICE), labels.to(DEVICE), order.to(DEVICE)))
    want_best, want_arg = dedup_ref.max_similarity(xn.float(), labels, order)
    torch.testing.assert_close(best, want_best, rtol=1e-5, atol=1e-5)
    assert torch.equal(arg == -1, want_arg == -1)
    dups = [i for i in range(200, 210) if want_best[i] > 0.99]  # an earlier duplicate exists
    assert dups and all(arg[i] == want_arg[i] for i in dups)


@pytest.mark.parametrize("name,msg", [("cp_async_misaligned", "not 16-byte aligned"),
                                      ("mbarrier_uninitialised", "before mbarrier.init"),
                                      ("wgmma_unswizzled", "128-byte swizzle")])
@pytest.mark.skipif(ON_GPU, reason="emulator self-tests")
def test_emulator_reports_broken_uses_of_the_pipeline_instructions(name, msg):
    with pytest.raises(RuntimeError, match=msg):
        cuda_kernels().selftest(name)
