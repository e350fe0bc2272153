"""The CuPy/NVRTC path of the CUDA backend: every kernel instance compiles with NVRTC for sm_80 and
sm_90 (no GPU needed), and the launchers pass the grids and argument types of csrc/*_launch.cu."""

from __future__ import annotations

import ctypes
import os
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from adaptinf_fast.ops import jit


def _toolkits() -> list[Path]:
    """CUDA toolkit roots: $CUDA_HOME / $CUDA_PATH, the nvcc on PATH, /usr/local/cuda*."""
    roots = [Path(os.environ[v]) for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    if shutil.which("nvcc"):
        roots.append(Path(shutil.which("nvcc")).resolve().parents[1])
    return roots + sorted(Path("/usr/local").glob("cuda*"), reverse=True)


def _nvrtc():
    """libnvrtc from the nvidia-cuda-nvrtc wheel (a test dependency) or a CUDA toolkit."""
    try:
        import nvidia

        roots = [Path(p) for p in nvidia.__path__]
    except ImportError:
        roots = []
    for root in roots + _toolkits():
        for lib in sorted(root.rglob("libnvrtc.so*")):
            if "builtins" not in lib.name and "alt" not in lib.name:
                return ctypes.CDLL(str(lib))
    return None


def _cuda_include() -> Path | None:
    return next((root / "include" for root in _toolkits() if (root / "include" / "cuda_fp16.h").exists()), None)


def _compile(lib, source: str, names: list[str], options: list[str]) -> tuple[int, str, dict, bytes]:
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"adaptinf.cu", 0, None, None) == 0
    for n in names:
        assert lib.nvrtcAddNameExpression(prog, n.encode()) == 0
    opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
    rc = lib.nvrtcCompileProgram(prog, len(options), opts)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    lowered, ptx = {}, b""
    if rc == 0:
        for n in names:
            out = ctypes.c_char_p()
            assert lib.nvrtcGetLoweredName(prog, n.encode(), ctypes.byref(out)) == 0
            lowered[n] = out.value.decode()
        lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetPTX(prog, buf)
        ptx = buf.value
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return rc, log.value.decode(), lowered, ptx


@pytest.mark.parametrize("arch", ["compute_80", "compute_90", "compute_90a"])
@pytest.mark.parametrize("op", sorted(jit.FILES))
def test_every_kernel_instance_compiles_with_nvrtc(op, arch):
    lib, inc = _nvrtc(), _cuda_include()
    if lib is None or inc is None:
        if os.environ.get("ADAPTINF_REQUIRE_CUDA") == "ON":
            pytest.fail("CI has the CUDA toolkit and the nvidia-cuda-nvrtc test dependency: NVRTC must be found")
        pytest.skip("no NVRTC library or CUDA headers here")
    source, names, options = jit.program(op)
    rc, log, lowered, ptx = _compile(lib, source, names, [*options, f"-I{inc}", f"-arch={arch}"])
    assert rc == 0, log
    assert set(lowered) == set(names)
    for name in names:
        assert f".entry {lowered[name]}".encode() in ptx, name


class FakeCupy(types.ModuleType):
    """Records what the JIT module asks CuPy to compile and launch."""

    def __init__(self):
        super().__init__("cupy")
        self.modules, self.launches, self.shared, self.functions = [], [], [], []
        self.capability, self.optin = "90", 232448
        fake = self

        class RawModule:
            def __init__(self, code, options, name_expressions):
                fake.modules.append((code, options, list(name_expressions)))

            def get_function(self, name):
                fake.functions.append(name)

                def launch(grid, block, args, stream=None, shared_mem=0):
                    fake.launches.append((name, grid, block, args, stream))
                    fake.shared.append((name, shared_mem, getattr(launch, "max_dynamic_shared_size_bytes", 0)))

                return launch

        class Device:
            def __init__(self, index):
                self.index = index
                self.compute_capability = fake.capability

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

        self.RawModule = RawModule
        runtime = types.SimpleNamespace(deviceGetAttribute=lambda attr, device: fake.optin if attr == 97 else 0)
        self.cuda = types.SimpleNamespace(Device=Device, ExternalStream=lambda ptr: ("stream", ptr), runtime=runtime)


@pytest.fixture
def fake_cupy(monkeypatch):
    fake = FakeCupy()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    for cached in (jit._module, jit._function, jit._device_pipe_arch):
        cached.cache_clear()
    yield fake
    for cached in (jit._module, jit._function, jit._device_pipe_arch):
        cached.cache_clear()


def test_launchers_use_the_grids_and_argument_types_of_the_c_launchers(fake_cupy):
    t = jit.tile_constants()
    assert t == {"kTileM": 64, "kTileN": 64, "kTileK": 32, "kThreads": 128}
    jit.project(1000, 1, 2000, 130, 10_000, 200, 10_016, 2**64 - 1, 5, 4096, "gaussian", 77, 0)
    name, grid, block, args, stream = fake_cupy.launches[-1]
    assert name == "adaptinf::adaptinf_project<__half, 1>" and grid == (4, 3, 3) and block == (128,)
    assert stream == ("stream", 77) and args[6] == np.uint64(2**64 - 1)
    assert [type(a) for a in args] == [np.uint64, np.uint64] + [np.int64] * 4 + [np.uint64, np.uint64, np.int64]
    jit.kmeans_assign(1, 2, 2, 3, 4, 5, 6, 129, 10, 8, True, 0, 0)
    assert fake_cupy.launches[-1][:3] == ("adaptinf::adaptinf_kmeans_assign<__nv_bfloat16, true>", (3, 1, 1), (128,))
    jit.max_sim(1, 0, 2, 3, 7, 4, 5, 300, 16, 0, 0)
    assert fake_cupy.launches[-1][:3] == ("adaptinf::adaptinf_max_sim<float>", (7, 1, 1), (128,))
    jit.philox_fill(1, 10, 100, 3, 0, "rademacher", 0.5, 0, 0)
    assert fake_cupy.launches[-1][1] == (1, 1, 1) and fake_cupy.launches[-1][3][-2:] == (np.int32(0), np.float32(0.5))
    jit.project(1, 0, 2, 0, 10, 10, 10, 0, 0, 1, "rademacher", 0, 0)  # empty: nothing launched
    assert len(fake_cupy.launches) == 4
    code, options, names = fake_cupy.modules[0]
    assert code == '#include "project.cu"\n' and any(o.startswith("-I") for o in options) and len(names) == 10
    with pytest.raises(ValueError, match="beyond CUDA's limits"):
        jit.project(1, 0, 2, 64 * 70_000, 10, 10, 10, 0, 0, 10, "rademacher", 0, 0)


def test_16_bit_aligned_launches_take_the_mma_sync_pipeline(fake_cupy, monkeypatch):
    rows, threads, smem = jit.pipe_launch(2)
    assert (rows, threads, smem) == (128, 384, 4 * 256 * 128 + 64 + 1024) and jit.pipe_launch(1)[:2] == (64, 256)
    jit.project(4096, 2, 2000, 130, 10_000, 200, 10_016, 7, 5, 4096, "rademacher", 0, 0)
    assert fake_cupy.launches[-1][:3] == ("adaptinf::adaptinf_project_pipe<__nv_bfloat16, 80>", (2, 2, 3), (384,))
    assert fake_cupy.shared[-1][1:] == (smem, smem)
    jit.kmeans_assign(4096, 8192, 1, 3, 4, 5, 6, 129, 10, 64, True, 0, 0)
    assert fake_cupy.launches[-1][:3] == ("adaptinf::adaptinf_kmeans_assign_pipe<__half, true, 80>", (2, 1, 1), (384,))
    jit.max_sim(4096, 2, 2, 3, 7, 4, 5, 300, 16, 0, 0)
    assert fake_cupy.launches[-1][:3] == ("adaptinf::adaptinf_max_sim_pipe<__nv_bfloat16, 80>", (7, 1, 1), (256,))
    assert fake_cupy.shared[-1][1] == jit.pipe_launch(1)[2]
    # Gaussian, fp32, unaligned rows, too little shared memory, or switched off: the WMMA tiles
    jit.project(4096, 2, 2000, 130, 10_000, 200, 10_016, 7, 5, 4096, "gaussian", 0, 0)
    jit.kmeans_assign(4096, 8192, 0, 3, 4, 5, 6, 129, 10, 64, True, 0, 0)
    jit.max_sim(4096, 2, 2, 3, 7, 4, 5, 300, 12, 0, 0)
    fake_cupy.optin = 101376  # sm_86: 99 KiB per block (another device, as the answer is kept per device)
    jit._device_pipe_arch.cache_clear()
    jit.max_sim(4096, 2, 2, 3, 7, 4, 5, 300, 16, 0, 0)
    fake_cupy.optin = 232448
    jit._device_pipe_arch.cache_clear()
    monkeypatch.setenv("ADAPTINF_CUDA_PIPELINE", "0")
    jit.max_sim(4096, 2, 2, 3, 7, 4, 5, 300, 16, 0, 0)
    assert [n.split("<")[0] for n, *_ in fake_cupy.launches[-5:]] == [
        "adaptinf::adaptinf_project", "adaptinf::adaptinf_kmeans_assign"] + ["adaptinf::adaptinf_max_sim"] * 3
    assert jit.pipeline_arch(2, 4096, 16, 0) == 0 and jit.pipeline_arch(0, 4096, 16, 0) == 0


def test_shared_memory_limit_is_raised_once_per_kernel_and_device(fake_cupy):
    smem = jit.pipe_launch(2)[2]
    for _ in range(3):
        jit.project(4096, 2, 2000, 130, 10_000, 200, 10_016, 7, 5, 4096, "rademacher", 0, 0)
    name = "adaptinf::adaptinf_project_pipe<__nv_bfloat16, 80>"
    assert fake_cupy.functions.count(name) == 1 and [s[1:] for s in fake_cupy.shared] == [(smem, smem)] * 3
    jit.project(4096, 2, 2000, 130, 10_000, 200, 10_016, 7, 5, 4096, "rademacher", 0, 1)  # another device
    assert fake_cupy.functions.count(name) == 2


def test_pipelined_projection_refuses_splits_off_16_byte_boundaries(fake_cupy):
    with pytest.raises(ValueError, match="multiple of 8"):
        jit.project(4096, 2, 2000, 130, 10_000, 200, 10_016, 7, 5, 4100, "rademacher", 0, 0)
    jit.project(4096, 2, 2000, 130, 10_000, 200, 10_016, 7, 5, 4104, "rademacher", 0, 0)
    jit.project(4096, 2, 2000, 130, 10_000, 200, 10_016, 7, 5, 4100, "gaussian", 0, 0)  # WMMA kernels take any split
    assert [n.split("<")[0] for n, *_ in fake_cupy.launches] == ["adaptinf::adaptinf_project_pipe", "adaptinf::adaptinf_project"]


def test_the_cuda_backend_launches_through_the_jit_where_asked(fake_cupy, monkeypatch):
    from adaptinf_fast import backends

    cached = backends.cuda_jit
    cached.cache_clear()
    monkeypatch.setattr(backends.importlib.util, "find_spec", lambda name, *a: object() if name == "cupy" else None)
    monkeypatch.setenv("ADAPTINF_CUDA_JIT", "1")
    monkeypatch.delenv("ADAPTINF_CUDA_EMULATE", raising=False)
    try:
        assert backends.cuda_kernels() is jit
        import torch

        assert backends._why_unusable("cuda", torch.device("cuda", 0)) is None
        monkeypatch.setattr(backends, "cuda_jit", lambda: None)
        assert "CuPy is not installed" in backends._why_unusable("cuda", torch.device("cuda", 0))
    finally:
        cached.cache_clear()
