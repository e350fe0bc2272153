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

#include "pipe.cuh"
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

// ---- The pipelined 16-bit kernel (pipe.cuh) ------------------------------------------------------
//
// Block: 128 rows of x, 2 consumer warpgroups; the stages walk (centroid tile of 128, D step of 64)
// in that order, so the producers prefetch the next centroid tile while the consumers fold the last
// one. Each thread keeps a running (best, second, index) per row slot over its columns of every
// tile, visiting columns in increasing order and replacing only on a strictly better score; the
// threads sharing a row then merge with ties to the lower index (pipe::Top2). Same scores and tie
// rule as above. With `second_out`, `values` gets the raw best score and `second_out` the second
// best (an exact tie makes them equal): the inputs of the float32 screen of ops/screen.py, as the
// Triton kernel gives.
struct Smaller {  // k-means: the smaller score wins, ties to the lower centroid index
  static __device__ __forceinline__ bool wins(float o, long long oi, float b, long long bi) {
    return o < b || (o == b && oi < bi);
  }
  static __device__ __forceinline__ float pick(float a, float b) { return fminf(a, b); }
};

template <typename T, bool COSINE, int ARCH>
__global__ void __launch_bounds__(pipe::Layout<2>::kThreads, 1)
    adaptinf_kmeans_assign_pipe(const T* __restrict__ x, const T* __restrict__ c,
                                const float* __restrict__ c_sqnorm, const float* __restrict__ x_sqnorm,
                                long long* __restrict__ labels, float* __restrict__ values,
                                float* __restrict__ second_out, long long n, long long k, long long d) {
  using namespace pipe;
  using A = Acc<ARCH>;
  constexpr int C = 2, S = A::kSlots;
  const Pipe<C> pp = make_pipe<C>();
  const long long r0 = static_cast<long long>(blockIdx.x) * Layout<C>::kBM;
  const long long dsteps = (d + kBK - 1) / kBK, ktiles = (k + kBN - 1) / kBN;
  if (is_producer()) {
    const int s = producer_warp();
    for (long long it = s; it < ktiles * dsteps; it += kStages) {
      acquire(pp.empty(s), it / kStages);
      const long long d0 = (it % dsteps) * kBK;
      load_rows_async<T, Layout<C>::kBM>(pp.a(s), x, r0, n, d, d0, d);
      load_rows_async<T, kBN>(pp.b(s), c, (it / dsteps) * kBN, k, d, d0, d);
      publish(pp.full(s));
    }
    return;
  }
  Top2<Smaller, S> top;
#pragma unroll
  for (int s = 0; s < S; ++s) {
    top.best[s] = top.second[s] = INFINITY;
    top.index[s] = 0;
  }
  float acc[64];
  for (long long t = 0; t < ktiles; ++t) {
    consume<T, ARCH, C>(pp, t * dsteps, dsteps, acc);
#pragma unroll
    for (int i = 0; i < 64; ++i) {
      const long long g = t * kBN + A::col(i);
      if (g < k) {
        const float score = COSINE ? -acc[i] : c_sqnorm[g] - 2.0f * acc[i];
        const int h = A::slot(i);
        if (score < top.best[h]) {
          top.second[h] = top.best[h];
          top.best[h] = score;
          top.index[h] = g;
        } else if (score < top.second[h]) {
          top.second[h] = score;  // an exact tie lands here: gap 0
        }
      }
    }
  }
  top.template merge_rows<ARCH, C>(pp.addr);
  if (!A::writes_rows()) return;
#pragma unroll
  for (int h = 0; h < S; ++h) {
    const long long row = r0 + consumer() * 64 + A::slot_row(h);
    if (row < n) {
      labels[row] = top.index[h];
      if (second_out != nullptr) {  // the screen's inputs: raw best and second-best scores
        values[row] = top.best[h];
        second_out[row] = top.second[h];
      } else {
        values[row] = COSINE ? -top.best[h] : fmaxf(top.best[h] + x_sqnorm[row], 0.0f);
      }
    }
  }
}

}  // namespace adaptinf
