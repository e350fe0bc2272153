// Fused k-means assignment on tensor cores: the N x K score matrix is never written.
//
// A block owns 64 rows of x and walks the centroids 64 at a time; for each centroid tile it forms
// x . c^T over D (32 at a time, tile_mma.cuh), stages the 64 x 64 scores in shared memory, and two
// threads per row fold them into a running (best, index): thread half h scans columns
// [32h, 32h + 32) of every tile. Scores: ||c||^2 - 2 x.c (L2) or -x.c (cosine, unit rows). A later
// column replaces the running best only when strictly better, and the two halves merge with ties
// to the lower index, so ties go to the lowest centroid index.
#if !defined(__CUDACC_RTC__)  // NVRTC (the CuPy JIT path) has the math functions built in
#include <math.h>
#endif

#include "tile_mma.cuh"

namespace adaptinf {

template <typename T, bool COSINE>
__global__ void __launch_bounds__(kThreads)
    adaptinf_kmeans_assign(const T* __restrict__ x, const T* __restrict__ c, const float* __restrict__ c_sqnorm,
                           const float* __restrict__ x_sqnorm, long long* __restrict__ labels,
                           float* __restrict__ values, long long n, long long k, long long d) {
  __shared__ TileSmem<T> sm;
  __shared__ float half_best[kTileM];
  __shared__ long long half_index[kTileM];
  const long long r0 = static_cast<long long>(blockIdx.x) * kTileM;
  const int row = threadIdx.x / 2, half = threadIdx.x % 2;
  float best = INFINITY;
  long long best_index = 0;
  WarpTile<T, true> tile;
  for (long long k0 = 0; k0 < k; k0 += kTileN) {
    gram_tile(sm, tile, x, r0, n, c, k0, k, d);
    for (int j = 0; j < kTileN / 2; ++j) {
      const int col = half * (kTileN / 2) + j;
      const long long g = k0 + col;
      if (g >= k) break;
      const float dot = sm.c[row * kLdC + col];
      const float score = COSINE ? -dot : c_sqnorm[g] - 2.0f * dot;
      if (score < best) {
        best = score;
        best_index = g;
      }
    }
    __syncthreads();  // the staging tile is rewritten by the next centroid tile
  }
  if (half == 1) {
    half_best[row] = best;
    half_index[row] = best_index;
  }
  __syncthreads();
  if (half == 0 && r0 + row < n) {
    const float other = half_best[row];
    const long long other_index = half_index[row];
    if (other < best || (other == best && other_index < best_index)) {
      best = other;
      best_index = other_index;
    }
    labels[r0 + row] = best_index;
    values[r0 + row] = COSINE ? -best : fmaxf(best + x_sqnorm[r0 + row], 0.0f);
  }
}

}  // namespace adaptinf
