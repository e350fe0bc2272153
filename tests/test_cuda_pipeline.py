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
    monkeypatch.setenv("ADAPTINF_CUDA_PIPELINE", "80")  # the mma.sync path even where wgmma exists
    assert ext.pipeline_arch(CODES[torch.bfloat16], x.data_ptr(), 72, 0) == 80
    assert ext.pipeline_arch(CODES[torch.float32], x.data_ptr(), 72, 0) == 0
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


@pytest.mark.skipif(ON_GPU, reason="emulator self-tests")
def test_a_failed_shared_memory_opt_in_is_tried_again():
    cuda_kernels().selftest("opt_in_retry")  # raises when the failed raise was recorded as done


# ---- shared-memory traffic, launch plumbing (the emulator's bank profile: per-lane addresses) ----

def _profile(run):
    ext = cuda_kernels()
    ext.smem_profile(True)
    try:
        run()
        return {kind: dict(zip(("requests", "wavefronts", "bytes"), v)) for kind, v in ext.smem_report().items()}
    finally:
        ext.smem_profile(False)


@pytest.mark.skipif(ON_GPU, reason="the emulator's bank profile")
def test_projection_stage_traffic_is_conflict_free(arch):
    stages = 3
    x = torch.randn(128, 64 * stages).to(torch.bfloat16)
    prof = _profile(lambda: proj_cuda.project_into(x, torch.zeros(128, 128), seed=3, kind="rademacher", row_offset=0,
                                                   splits=1))
    # The producer writes the 128 x 128-byte R tile with 32 16-byte stores per stage: 4 wavefronts
    # each (8 lanes hit 8 bank groups). Lane (lane / 4, lane % 4) gave 16: four rows, one chunk.
    st = prof["st.shared"]
    assert st["requests"] == 32 * stages and st["wavefronts"] == 4 * st["requests"]
    cp = prof["cp.async"]  # x tile: 128 rows x 128 bytes
    assert cp["bytes"] == 128 * 128 * stages and cp["wavefronts"] == 4 * cp["requests"]
    if arch == 80:
        # 2 x 2 warps of 32 x 64: per k16 step 2 A + 4 B ldmatrix.x4 per warp (1 + 8 with 16 x 128 warps)
        lm = prof["ldmatrix"]
        assert lm["requests"] == 8 * 4 * 6 * stages and lm["wavefronts"] == 4 * lm["requests"]
    else:
        assert prof["wgmma"]["requests"] == 2 * 4 * stages and prof["ldmatrix"]["requests"] == 0


@pytest.mark.skipif(ON_GPU, reason="the emulator's bank profile")
@pytest.mark.parametrize("op", ["kmeans", "max_sim"])
def test_sm80_column_halves_merge_rows_through_shared_memory(op, monkeypatch, rng):
    """ARCH 80 splits each row over two warps; the upper warp hands its per-row state over in one
    16-byte store per row slot (4 per lead lane), conflict-free."""
    monkeypatch.setenv("ADAPTINF_EMULATE_ARCH", "80")
    x = torch.nn.functional.normalize(torch.randn(128, 64, generator=rng), dim=1).to(torch.float16)
    if op == "kmeans":
        prof = _profile(lambda: kmeans_cuda.assign(x, x[:130], "cosine"))
    else:
        labels = torch.zeros(64, dtype=torch.long)
        prof = _profile(lambda: dedup_cuda.max_similarity(x[:64], labels, torch.arange(64)))
    st, ld = prof["st.shared"], prof["ld.shared"]
    warps = 8 if op == "kmeans" else 4
    assert st["requests"] == ld["requests"] == 4 * warps // 2  # 4 row slots per thread, upper warps store
    assert st["bytes"] == ld["bytes"] == 16 * 64 * warps // 4  # one 16-byte entry per block row
    # lead lanes 0, 4, .., 28 write consecutive rows: two per 8-lane phase, in distinct banks
    assert st["wavefronts"] == ld["wavefronts"] == 4 * st["requests"]


@pytest.mark.skipif(ON_GPU, reason="the emulator's launch counters")
def test_shared_memory_opt_in_happens_once_per_kernel():
    ext = cuda_kernels()
    x = torch.randn(128, 64).to(torch.bfloat16)
    proj_cuda.project_into(x, torch.zeros(128, 128), seed=0, kind="rademacher", row_offset=0, splits=1)
    before = ext.smem_opt_ins()
    for _ in range(3):
        proj_cuda.project_into(x, torch.zeros(128, 128), seed=0, kind="rademacher", row_offset=0, splits=1)
    assert before >= 1 and ext.smem_opt_ins() == before


def test_pipelined_projection_refuses_splits_off_16_byte_boundaries(arch):
    x = torch.randn(16, 200).to(torch.bfloat16).to(DEVICE)
    ws = torch.zeros(2, 16, 128, device=DEVICE)
    args = (x.data_ptr(), CODES[torch.bfloat16], ws.data_ptr(), 16, 200, 128, 200, 0, 0)
    stream = torch.cuda.current_stream().cuda_stream if ON_GPU else 0
    with pytest.raises(ValueError, match="multiple of 8"):
        cuda_kernels().project(*args, 100, "rademacher", stream, 0)  # split 1 would start at column 100
    cuda_kernels().project(*args, 104, "rademacher", stream, 0)
    want = x.float().cpu() @ proj_ref.matrix_rows(0, 0, 200, 128, "rademacher")
    torch.testing.assert_close(ws.sum(0).cpu(), want, rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(ON_GPU, reason="emulator self-tests")
def test_emulator_reports_mismatched_named_barriers():
    with pytest.raises(RuntimeError, match="disagree on the thread count"):
        cuda_kernels().selftest("named_barrier_mismatch")
