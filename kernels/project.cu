// Dense random projection on tensor cores: ws[split] = x[:, slice] @ R[row_offset + slice, :].
//
// Grid (column tiles, batch tiles, splits of P); the caller splits batches above 65535 x 64 rows. A block walks its slice of P 32 rows at a time:
// it stages the x tile, generates the matching R tile straight into shared memory from Philox
// (philox.cuh, bit-identical to the reference), and multiplies on tensor cores. Every R tile is
// generated once per block and reused by all 64 rows of the batch tile; a 64-column tile lies in
// one 128-column Philox block, so 32 Philox calls feed a whole Rademacher tile. The caller reduces
// the splits in a fixed order and scales by 1/sqrt(k) (deterministic, no atomics).
#include "philox.cuh"
#include "tile_mma.cuh"

namespace adaptinf {

// b[n][kd] = R[row0 + kd][col0 + n] for kd < rows_left and col0 + n < cols; zero elsewhere.
template <typename T, int KIND>
__device__ __forceinline__ void generate_r_tile(T* b, unsigned long long seed, unsigned long long row0,
                                                long long rows_left, long long col0, long long cols) {
  constexpr int ld = TileTraits<T>::kLd;
  const T zero = from_float<T>(0.0f);
  if constexpr (KIND == kRademacher) {
    static_assert(kThreads == 4 * kTileK && kTileN == 64, "one thread per (row, 16 columns)");
    const int kd = threadIdx.x / 4, n0 = (threadIdx.x % 4) * 16;
    const Philox4 blk = projection_block(seed, row0 + kd, static_cast<unsigned int>(col0 >> 7));
    for (int n = n0; n < n0 + 16; ++n) {
      const bool ok = kd < rows_left && col0 + n < cols;
      b[n * ld + kd] = ok ? from_float<T>(projection_entry(blk, static_cast<unsigned int>(col0 + n), kRademacher)) : zero;
    }
  } else {
    for (int i = threadIdx.x; i < kTileK * (kTileN / 4); i += kThreads) {  // one Philox block per 4 entries
      const int kd = i / (kTileN / 4), n0 = (i % (kTileN / 4)) * 4;
      const Philox4 blk = projection_block(seed, row0 + kd, static_cast<unsigned int>((col0 + n0) >> 2));
      for (int n = n0; n < n0 + 4; ++n) {
        const bool ok = kd < rows_left && col0 + n < cols;
        b[n * ld + kd] = ok ? from_float<T>(projection_entry(blk, static_cast<unsigned int>(col0 + n), kGaussian)) : zero;
      }
    }
  }
}

template <typename T, int KIND>
__global__ void __launch_bounds__(kThreads)
    adaptinf_project(const T* __restrict__ x, float* __restrict__ ws, long long batch, long long p, long long k,
                     long long ldx, unsigned long long seed, unsigned long long row_offset, long long p_per_split) {
  __shared__ TileSmem<T> sm;
  const long long n0 = static_cast<long long>(blockIdx.x) * kTileN;  // x: column tiles (any k)
  const long long b0 = static_cast<long long>(blockIdx.y) * kTileM;  // y: batch tiles (<= 65535)
  const long long p_start = static_cast<long long>(blockIdx.z) * p_per_split;
  const long long p_end = min_ll(p_start + p_per_split, p);
  WarpTile<T, KIND == kGaussian> tile;  // Rademacher signs are exact in tf32: no lo part
  tile.zero();
  for (long long p0 = p_start; p0 < p_end; p0 += kTileK) {
    load_tile_rows<T, kTileM>(sm.a, x, b0, batch, p0, p_end, ldx);
    generate_r_tile<T, KIND>(sm.b, seed, row_offset + static_cast<unsigned long long>(p0), p_end - p0, n0, k);
    __syncthreads();
    tile.multiply(sm.a, sm.b);
    __syncthreads();
  }
  tile.store(sm.c);
  __syncthreads();
  float* out = ws + static_cast<long long>(blockIdx.z) * batch * k;
  for (int i = threadIdx.x; i < kTileM * kTileN; i += kThreads) {
    const int r = i / kTileN, c = i % kTileN;
    if (b0 + r < batch && n0 + c < k) out[(b0 + r) * k + n0 + c] = sm.c[r * kLdC + c];
  }
}

}  // namespace adaptinf
