// Dense random projection on tensor cores: ws[split] = x[:, slice] @ R[row_offset + slice, :].
//
// Grid (column tiles, batch tiles, splits of P); the caller splits batches above 65535 x 64 rows. A block walks its slice of P 32 rows at a time:
// it stages the x tile, generates the matching R tile straight into shared memory from Philox
// (philox.cuh, bit-identical to the reference), and multiplies on tensor cores. Every R tile is
// generated once per block and reused by all 64 rows of the batch tile; a 64-column tile lies in
// one 128-column Philox block, so 32 Philox calls feed a whole Rademacher tile. The caller reduces
// the splits in a fixed order and scales by 1/sqrt(k) (deterministic, no atomics).
#include "philox.cuh"
#include "pipe.cuh"
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

// ---- The pipelined 16-bit Rademacher kernel (pipe.cuh) ------------------------------------------
//
// Block: 128 batch rows x 128 columns, 2 consumer warpgroups; stages walk P 64 rows at a time. The
// producer warp of a stage copies the x tile and generates R straight into the K-major B tile.
// Lane (g, q) = (lane % 8, lane / 8) stores the 16-byte chunks g of tile rows (= columns of R)
// 32q .. 32q + 31: each holds the 8 signs of P rows 8g .. 8g + 7 in one column, which are bits of
// word q of those rows' Philox blocks. In every 8-lane phase of a 16-byte store the lanes then hit
// 8 distinct chunks of one tile row, 8 bank groups: 4 wavefronts per store, the minimum (the
// swizzle puts chunk g of row n at chunk g ^ (n % 8)). Each Philox block is computed once: lane
// (g, q) computes the blocks of P rows 8g + 2q and 8g + 2q + 1, and the four lanes of a g exchange
// words in a 4 x 4 transpose over lane bits 3 and 4 (two shuffle rounds), after which lane (g, q)
// holds word q of all 8 rows. Two rows' words are interleaved by one byte permute (bit j of both
// at bits j and j + 16), after which each pair of 16-bit entries is one shift and one LOP:
// (z << (15 - j)) & 0x80008000 | (+1, +1).

// Lane (g, q) holds words[2p + b] = word p of the block of P row 8g + 2q + b; afterwards word q of
// P row 8g + 2p + b (the transpose of the 4 x 4 matrix of word pairs held by the lanes q = 0..3).
__device__ __forceinline__ void transpose_words(unsigned (&words)[8], int q) {
#pragma unroll
  for (int bit = 0; bit < 2; ++bit) {
    const bool high = (q >> bit) & 1;  // this lane sends and receives the slots p whose bit differs
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      if ((p >> bit) & 1) continue;
      const int other = p | (1 << bit);  // slots p (bit clear) and other (bit set)
#pragma unroll
      for (int b = 0; b < 2; ++b) {
        const unsigned got = ptx::shfl_xor(high ? words[2 * p + b] : words[2 * other + b], 8 << bit);
        if (high)
          words[2 * p + b] = got;
        else
          words[2 * other + b] = got;
      }
    }
  }
}

// b[n][k] = R[row0 + k][col0 + n] for k < 64, n < 128 (col0 % 128 == 0), one warp; b is the tile's
// shared-window address.
template <typename T>
__device__ __forceinline__ void rademacher_stage(unsigned b, unsigned long long seed, unsigned long long row0,
                                                 long long col0) {
  constexpr unsigned kOne = is_same_v<T, __half> ? 0x3C003C00u : 0x3F803F80u;  // +1 in both halves
  constexpr unsigned kSigns = 0x80008000u;
  const int lane = threadIdx.x % 32, g = lane % 8, q = lane / 8;
  const unsigned block = static_cast<unsigned>(col0 >> 7);
  unsigned w[8];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const Philox4 blk = projection_block(seed, row0 + 8 * g + 2 * q + i, block);
    w[i] = blk.x;
    w[2 + i] = blk.y;
    w[4 + i] = blk.z;
    w[6 + i] = blk.w;
  }
  transpose_words(w, q);
  unsigned lo[4], hi[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    lo[i] = __byte_perm(w[2 * i], w[2 * i + 1], 0x5410);  // low halves: bit j of both at j, j + 16
    hi[i] = __byte_perm(w[2 * i], w[2 * i + 1], 0x7632);  // high halves: bit j at j - 16, j
  }
#pragma unroll
  for (int j = 0; j < 32; ++j) {
    ptx::U4 v;
    unsigned* out = &v.x;
#pragma unroll
    for (int i = 0; i < 4; ++i) out[i] = ptx::and_or(j < 16 ? lo[i] << (15 - j) : hi[i] << (31 - j), kSigns, kOne);
    ptx::st_shared(b + pipe::swizzle(32 * q + j, g), v);
  }
}

// ws[split] = x[:, slice] @ R[row_offset + slice, :] for 16-bit x with 16-byte aligned rows (ldx % 8
// == 0) and slices starting on 16-byte boundaries (p_per_split % 8 == 0: the launchers check it);
// grid (column tiles of 128, batch tiles of 128, splits of P), pipe::Layout<2> shared memory.
template <typename T, int ARCH>
__global__ void __launch_bounds__(pipe::Layout<2>::kThreads, 1)
    adaptinf_project_pipe(const T* __restrict__ x, float* __restrict__ ws, long long batch, long long p, long long k,
                          long long ldx, unsigned long long seed, unsigned long long row_offset,
                          long long p_per_split) {
  using namespace pipe;
  using A = Acc<ARCH>;
  constexpr int C = 2;
  const Pipe<C> pp = make_pipe<C>();
  const long long n0 = static_cast<long long>(blockIdx.x) * kBN;
  const long long b0 = static_cast<long long>(blockIdx.y) * Layout<C>::kBM;
  const long long p_start = static_cast<long long>(blockIdx.z) * p_per_split;
  const long long p_end = min_ll(p_start + p_per_split, p);
  const long long steps = (p_end - p_start + kBK - 1) / kBK;
  if (is_producer()) {
    const int s = producer_warp();
    for (long long it = s; it < steps; it += kStages) {
      acquire(pp.empty(s), it / kStages);
      const long long p0 = p_start + it * kBK;
      load_rows_async<T, Layout<C>::kBM>(pp.a(s), x, b0, batch, ldx, p0, p_end);
      rademacher_stage<T>(pp.b(s), seed, row_offset + static_cast<unsigned long long>(p0), n0);
      publish(pp.full(s));
    }
    return;
  }
  float acc[64];
  consume<T, ARCH, C>(pp, 0, steps, acc);
  float* out = ws + static_cast<long long>(blockIdx.z) * batch * k;
  const long long r0 = b0 + consumer() * 64;
  const bool pairs = k % 2 == 0;  // then (r k + c) is even for even c: 8-byte aligned float2 stores
#pragma unroll
  for (int i = 0; i < 64; i += 2) {  // accumulators i, i + 1: columns c, c + 1 of one row
    const long long r = r0 + A::row(i), c = n0 + A::col(i);
    if (r >= batch || c >= k) continue;
    if (pairs) {
      ptx::st_global_v2(out + r * k + c, acc[i], acc[i + 1]);
    } else {
      out[r * k + c] = acc[i];
      if (c + 1 < k) out[r * k + c + 1] = acc[i + 1];
    }
  }
}

}  // namespace adaptinf
