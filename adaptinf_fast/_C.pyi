"""Type stub of the optional compiled extension ``adaptinf_fast._C`` (built only when a CUDA
compiler is present; ``adaptinf_fast._cuda_emu``, the host emulator, exports the same names plus
``selftest``). Pointers, streams and sizes are plain ints: the Python side (``ops/*/cuda.py``) owns
validation, allocation and dtype codes (0 float32, 1 float16, 2 bfloat16)."""

__version__: str

def philox_fill(out: int, rows: int, cols: int, seed: int, row_offset: int, kind: str, scale: float,
                stream: int, device: int) -> None:
    """Fill a row-major float32 device buffer (rows, cols) with scale * R[row_offset + r, c]."""

def philox4x32_10(counter: tuple[int, int, int, int], key: tuple[int, int]) -> list[int]:
    """Host run of the device Philox4x32-10 (known-answer tests)."""

def projection_rows_host(rows: int, cols: int, seed: int, row_offset: int, kind: str) -> list[float]:
    """Host run of the device mapping (seed, row, col) -> unscaled R entry, row-major."""

def cuda_device_count() -> int: ...
def cuda_runtime_version() -> int: ...
def pipeline_arch(dtype: int, ptr: int, row_pitch: int, device: int) -> int:
    """Kernels a 16-bit launch on these rows takes: 90 (wgmma pipeline), 80 (mma.sync pipeline), 0 (WMMA tiles)."""

def project(x: int, dtype: int, ws: int, batch: int, p: int, k: int, ldx: int, seed: int, row_offset: int,
            p_per_split: int, kind: str, stream: int, device: int) -> None:
    """ws[s] = x[:, s*p_per_split:(s+1)*p_per_split] @ R[row_offset + ...], unscaled, float32 (splits, batch, k)."""

def kmeans_assign(x: int, c: int, dtype: int, c_sqnorm: int, x_sqnorm: int, labels: int, values: int, n: int,
                  k: int, d: int, cosine: bool, stream: int, device: int, second: int = 0) -> None:
    """Fused nearest-centroid search: labels int64 (n,), values float32 (n,) [, second-best float32 (n,)]."""

def max_sim(xs: int, dtype: int, cluster_start: int, tiles: int, n_tiles: int, best: int, arg: int, n: int, d: int,
            stream: int, device: int, second: int = 0) -> None:
    """Max similarity to an earlier row of the same cluster over cluster-major rows [, second best]."""
