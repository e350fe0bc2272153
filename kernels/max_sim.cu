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

#include "pipe.cuh"
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

// ---- The pipelined 16-bit kernel (pipe.cuh) ------------------------------------------------------
//
// Block: one 64-row tile of `tiles`, 1 consumer warpgroup; the stages walk (column tile of 128 from
// the smallest cluster start among the rows, D step of 64). Same mask and tie rule as above: a
// running (max, argmax) per row over increasing columns, strictly greater replaces, the threads
// sharing a row merge with ties to the earliest column (pipe::Top2). With `second_out` the
// second-best similarity is written too, for the float32 screen of ops/screen.py (as the Triton
// kernel does).
struct Larger {  // max similarity: the larger wins, ties to the earlier column; -1 = no predecessor
  static __device__ __forceinline__ bool wins(float o, long long oi, float b, long long bi) {
    return o > b || (o == b && oi >= 0 && oi < bi);
  }
  static __device__ __forceinline__ float pick(float a, float b) { return fmaxf(a, b); }
};

template <typename T, int ARCH>
__global__ void __launch_bounds__(pipe::Layout<1>::kThreads, 1)
    adaptinf_max_sim_pipe(const T* __restrict__ xs, const long long* __restrict__ cluster_start,
                          const long long* __restrict__ tiles, float* __restrict__ best_out,
                          long long* __restrict__ arg_out, float* __restrict__ second_out, long long n,
                          long long d) {
  using namespace pipe;
  using A = Acc<ARCH>;
  constexpr int C = 1, S = A::kSlots;
  const Pipe<C> pp = make_pipe<C>();
  const long long r0 = tiles[blockIdx.x];
  long long col_lo = r0;
  for (int r = 0; r < 64 && r0 + r < n; ++r) col_lo = min_ll(col_lo, cluster_start[r0 + r]);
  const long long col_hi = min_ll(r0 + 64, n);
  const long long dsteps = (d + kBK - 1) / kBK, ctiles = (col_hi - col_lo + kBN - 1) / kBN;
  if (is_producer()) {
    const int s = producer_warp();
    for (long long it = s; it < ctiles * dsteps; it += kStages) {
      acquire(pp.empty(s), it / kStages);
      const long long d0 = (it % dsteps) * kBK;
      load_rows_async<T, 64>(pp.a(s), xs, r0, n, d, d0, d);
      load_rows_async<T, kBN>(pp.b(s), xs, col_lo + (it / dsteps) * kBN, n, d, d0, d);
      publish(pp.full(s));
    }
    return;
  }
  long long row[S], start[S];
  Top2<Larger, S> top;
#pragma unroll
  for (int h = 0; h < S; ++h) {
    top.best[h] = top.second[h] = -INFINITY;
    top.index[h] = -1;
    row[h] = r0 + A::slot_row(h);
    start[h] = row[h] < n ? cluster_start[row[h]] : n;
  }
  float acc[64];
  for (long long t = 0; t < ctiles; ++t) {
    consume<T, ARCH, C>(pp, t * dsteps, dsteps, acc);
#pragma unroll
    for (int i = 0; i < 64; ++i) {
      const long long g = col_lo + t * kBN + A::col(i);
      const int h = A::slot(i);
      if (g >= start[h] && g < row[h]) {
        if (acc[i] > top.best[h]) {
          top.second[h] = top.best[h];
          top.best[h] = acc[i];
          top.index[h] = g;
        } else if (acc[i] > top.second[h]) {
          top.second[h] = acc[i];  // an exact tie lands here: gap 0
        }
      }
    }
  }
  top.template merge_rows<ARCH, C>(pp.addr);
  if (!A::writes_rows()) return;
#pragma unroll
  for (int h = 0; h < S; ++h) {
    if (row[h] < n) {
      best_out[row[h]] = top.best[h];
      arg_out[row[h]] = top.index[h];
      if (second_out != nullptr) second_out[row[h]] = top.second[h];
    }
  }
}

}  // namespace adaptinf
