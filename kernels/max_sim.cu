// Within-cluster max similarity over each cluster's triangle (DESIGN 4.3), on tensor cores.
//
// Rows are cluster-major (the caller gathers them, `order` kept inside each cluster) and
// cluster_start[r] is the first row of r's cluster. A block takes one 64-row tile (tiles come
// longest walk first) and walks column tiles from the smallest cluster start among its rows up to
// its own last row, never past the diagonal; a score counts only when
// cluster_start[row] <= col < row (same cluster, earlier in order). Two threads per row keep a
// running (max, argmax) over their halves of each tile; ties go to the earliest column. Rows with
// no predecessor end with -inf and -1. Memory: the gathered rows plus O(N).
#if !defined(__CUDACC_RTC__)  // NVRTC (the CuPy JIT path) has the math functions built in
#include <math.h>
#endif

#include "tile_mma.cuh"

namespace adaptinf {

template <typename T>
__global__ void __launch_bounds__(kThreads)
    adaptinf_max_sim(const T* __restrict__ xs, const long long* __restrict__ cluster_start,
                     const long long* __restrict__ tiles, float* __restrict__ best_out,
                     long long* __restrict__ arg_out, long long n, long long d) {
  __shared__ TileSmem<T> sm;
  __shared__ float half_best[kTileM];
  __shared__ long long half_arg[kTileM];
  __shared__ long long col_lo;
  const long long r0 = tiles[blockIdx.x];
  if (threadIdx.x == 0) {
    long long lo = r0;
    for (int r = 0; r < kTileM && r0 + r < n; ++r) lo = min_ll(lo, cluster_start[r0 + r]);
    col_lo = lo / kTileN * kTileN;
  }
  __syncthreads();
  const long long col_hi = min_ll(r0 + kTileM, n);
  const int row = threadIdx.x / 2, half = threadIdx.x % 2;
  const long long g_row = r0 + row;
  const long long start = g_row < n ? cluster_start[g_row] : n;
  float best = -INFINITY;
  long long arg = -1;
  WarpTile<T, true> tile;
  for (long long c0 = col_lo; c0 < col_hi; c0 += kTileN) {
    gram_tile(sm, tile, xs, r0, n, xs, c0, n, d);
    for (int j = 0; j < kTileN / 2; ++j) {
      const int col = half * (kTileN / 2) + j;
      const long long g = c0 + col;
      if (g >= start && g < g_row) {
        const float s = sm.c[row * kLdC + col];
        if (s > best) {
          best = s;
          arg = g;
        }
      }
    }
    __syncthreads();
  }
  if (half == 1) {
    half_best[row] = best;
    half_arg[row] = arg;
  }
  __syncthreads();
  if (half == 0 && g_row < n) {
    const float other = half_best[row];
    const long long other_arg = half_arg[row];
    if (other > best || (other == best && other_arg >= 0 && other_arg < arg)) {
      best = other;
      arg = other_arg;
    }
    best_out[g_row] = best;
    arg_out[g_row] = arg;
  }
}

}  // namespace adaptinf
