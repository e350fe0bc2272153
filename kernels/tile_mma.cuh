// The block-level tensor-core tile product shared by the projection, k-means and dedup kernels.
//
// A block of kThreads = 128 threads (4 warps) owns a kTileM x kTileN = 64 x 64 output tile and
// walks the reduction dimension kTileK = 32 at a time: A (64 x 32, row-major) and B (stored as
// 64 x 32 with B's columns contiguous, i.e. B col-major) sit in shared memory; each warp multiplies
// a 32 x 32 quarter with WMMA fragments and fp32 accumulators. fp16/bf16 tiles use m16n16k16;
// fp32 tiles use tf32 m16n16k8 on operands split into hi + lo tf32 parts (a_hi b_hi + a_lo b_hi
// + a_hi b_lo), which keeps products to about fp32 accuracy — the CUDA analogue of Triton's
// tf32x3. A B operand that is exact in tf32 (Rademacher signs) skips its lo part.
#pragma once


#include "cuda_compat.cuh"

namespace adaptinf {

namespace wmma = nvcuda::wmma;

constexpr int kTileM = 64, kTileN = 64, kTileK = 32, kThreads = 128;
// Row pitch of the output staging tile: pointers stay 32-byte aligned (a WMMA requirement) and
// consecutive rows start on different banks.
constexpr int kLdC = kTileN + 4;

template <typename T> struct TileTraits;
template <> struct TileTraits<__half> {
  using Frag = __half;
  static constexpr int kStep = 16, kLd = kTileK + 8;
};
template <> struct TileTraits<__nv_bfloat16> {
  using Frag = __nv_bfloat16;
  static constexpr int kStep = 16, kLd = kTileK + 8;
};
template <> struct TileTraits<float> {
  using Frag = wmma::precision::tf32;
  static constexpr int kStep = 8, kLd = kTileK + 4;
};

// Shared memory of one block: 35 KiB for fp32 tiles, 27 KiB for fp16/bf16 (static, < 48 KiB).
template <typename T> struct TileSmem {
  alignas(32) T a[kTileM * TileTraits<T>::kLd];
  alignas(32) T b[kTileN * TileTraits<T>::kLd];
  alignas(32) float c[kTileM * kLdC];
};

// dst[r][k] = src[row0 + r][col0 + k] (row pitch lds) for R tile rows, zero outside rows x cols.
template <typename T, int R>
__device__ __forceinline__ void load_tile_rows(T* dst, const T* __restrict__ src, long long row0, long long rows,
                                               long long col0, long long cols, long long lds) {
  const T zero = from_float<T>(0.0f);
  for (int i = threadIdx.x; i < R * kTileK; i += kThreads) {
    const int r = i / kTileK, k = i % kTileK;
    const long long gr = row0 + r, gk = col0 + k;
    dst[r * TileTraits<T>::kLd + k] = (gr < rows && gk < cols) ? src[gr * lds + gk] : zero;
  }
}

template <typename FragT>
__device__ __forceinline__ void split_tf32(FragT& hi, FragT& lo) {
  for (int t = 0; t < hi.num_elements; ++t) {
    const float v = hi.x[t];
    const float h = wmma::__float_to_tf32(v);
    hi.x[t] = h;
    lo.x[t] = wmma::__float_to_tf32(v - h);
  }
}

// One warp's 32 x 32 quarter of the block tile, as 2 x 2 WMMA accumulators.
template <typename T, bool kSplitB>
struct WarpTile {
  using Tr = TileTraits<T>;
  using Acc = wmma::fragment<wmma::accumulator, 16, 16, Tr::kStep, float>;
  using FragA = wmma::fragment<wmma::matrix_a, 16, 16, Tr::kStep, typename Tr::Frag, wmma::row_major>;
  using FragB = wmma::fragment<wmma::matrix_b, 16, 16, Tr::kStep, typename Tr::Frag, wmma::col_major>;
  Acc acc[2][2];
  int wm, wn;  // the quarter's first row and column inside the block tile

  __device__ __forceinline__ WarpTile() : wm((threadIdx.x / 32 / 2) * 32), wn((threadIdx.x / 32 % 2) * 32) {}

  __device__ __forceinline__ void zero() {
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  }

  // acc += A_tile[wm:wm+32, :] * B_tile[:, wn:wn+32] over the kTileK columns in shared memory.
  __device__ __forceinline__ void multiply(const T* a, const T* b) {
    for (int kk = 0; kk < kTileK; kk += Tr::kStep) {
      FragA fa[2];
      FragB fb[2];
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], a + (wm + 16 * i) * Tr::kLd + kk, Tr::kLd);
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], b + (wn + 16 * j) * Tr::kLd + kk, Tr::kLd);
      if constexpr (is_same_v<T, float>) {
        FragA fa_lo[2];
        FragB fb_lo[2];
        for (int i = 0; i < 2; ++i) split_tf32(fa[i], fa_lo[i]);
        if constexpr (kSplitB)
          for (int j = 0; j < 2; ++j) split_tf32(fb[j], fb_lo[j]);
        for (int i = 0; i < 2; ++i)
          for (int j = 0; j < 2; ++j) {  // small terms first
            if constexpr (kSplitB) wmma::mma_sync(acc[i][j], fa[i], fb_lo[j], acc[i][j]);
            wmma::mma_sync(acc[i][j], fa_lo[i], fb[j], acc[i][j]);
            wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
          }
      } else {
        for (int i = 0; i < 2; ++i)
          for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
      }
    }
  }

  // Writes the quarter into the row-major staging tile c (pitch kLdC).
  __device__ __forceinline__ void store(float* c) {
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 2; ++j)
        wmma::store_matrix_sync(c + (wm + 16 * i) * kLdC + wn + 16 * j, acc[i][j], kLdC, wmma::mem_row_major);
  }
};

// sm.c[r][c] = a[a_row0 + r, :] . b[b_row0 + c, :] for row-major (rows, d) matrices a and b (rows
// past a_rows / b_rows read as zero), staged for the whole block (synchronised on return).
template <typename T>
__device__ __forceinline__ void gram_tile(TileSmem<T>& sm, WarpTile<T, true>& tile, const T* a, long long a_row0,
                                          long long a_rows, const T* b, long long b_row0, long long b_rows,
                                          long long d) {
  tile.zero();
  for (long long d0 = 0; d0 < d; d0 += kTileK) {
    load_tile_rows<T, kTileM>(sm.a, a, a_row0, a_rows, d0, d, d);
    load_tile_rows<T, kTileN>(sm.b, b, b_row0, b_rows, d0, d, d);
    __syncthreads();
    tile.multiply(sm.a, sm.b);
    __syncthreads();
  }
  tile.store(sm.c);
  __syncthreads();
}

}  // namespace adaptinf
