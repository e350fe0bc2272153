// The pipelined tensor-core skeleton of the 16-bit kernels (project, kmeans_assign, max_sim).
//
// A block is one producer warpgroup plus C consumer warpgroups (warp specialisation) sharing a
// ring of kStages shared-memory stages. A stage holds an A tile (64 C rows) and a B tile (kBN =
// 128 rows), both K-major, kBK = 64 16-bit values (128 bytes) per row in the 128-byte swizzle:
// 16-byte chunk c of row r sits at r * 128 + ((c ^ (r % 8)) << 4), 1024-byte aligned 8-row atoms.
// This is the layout wgmma reads through a descriptor and ldmatrix reads without bank conflicts.
//
// Producer warp w fills stage w (4 warps, 4 stages), one stage in flight each: it waits for the
// stage's `empty` barrier, issues 16-byte cp.async copies (zero-filled past the matrix edges) and,
// for the projection, generates the R tile with plain stores; then it waits for its copies, fences
// them for the async proxy, and its 32 lanes arrive on the stage's `full` barrier. Consumers wait
// for `full`, multiply, and every consumer thread arrives on `empty` once its MMAs have read the
// stage. Each consumer warpgroup owns 64 rows x 128 columns of the output, 64 fp32 accumulators
// per thread, in the same fragment layout on both paths (acc_row / acc_col):
//   ARCH 90 (sm_90a): 4 wgmma.m64n128k16 per stage from shared-memory descriptors, one group kept
//                     in flight (a stage is released when the next one's group is issued).
//   ARCH 80 (sm_80+): each warp multiplies its 16 rows with ldmatrix.x4 + mma.sync.m16n8k16.
#pragma once

#include "ptx.cuh"

namespace adaptinf {
namespace pipe {

constexpr int kBK = 64, kBN = 128, kStages = 4, kWarpgroup = 128, kRowBytes = 128;

struct alignas(16) U4 {
  unsigned x, y, z, w;
};

__device__ __forceinline__ unsigned swizzle(unsigned row, unsigned chunk) { return row * 128u + ((chunk ^ (row & 7u)) << 4); }

template <int C>
struct Layout {
  static constexpr int kBM = 64 * C, kThreads = kWarpgroup * (C + 1);
  static constexpr unsigned kA = kBM * kRowBytes, kB = kBN * kRowBytes, kStage = kA + kB;
  static constexpr unsigned kBarriers = kStages * kStage;  // full[kStages], empty[kStages]
  static constexpr unsigned kBytes = kBarriers + 2 * kStages * 8;
  static constexpr unsigned kLaunchBytes = kBytes + 1024;  // the base is aligned up to 1024 bytes
};

template <int C>
struct Pipe {
  using L = Layout<C>;
  unsigned char* base;  // generic pointer of stage 0, 1024-byte aligned
  unsigned addr;        // its shared-window address
  __device__ __forceinline__ unsigned a(int s) const { return addr + s * L::kStage; }
  __device__ __forceinline__ unsigned b(int s) const { return a(s) + L::kA; }
  __device__ __forceinline__ unsigned char* b_ptr(int s) const { return base + s * L::kStage + L::kA; }
  __device__ __forceinline__ unsigned full(int s) const { return addr + L::kBarriers + 8 * s; }
  __device__ __forceinline__ unsigned empty(int s) const { return addr + L::kBarriers + 8 * (kStages + s); }
};

// Every thread of the block: align the dynamic shared memory, initialise the barriers, synchronise.
template <int C>
__device__ __forceinline__ Pipe<C> make_pipe() {
  static_assert(kStages == 4, "producer warp w owns stage w");
  unsigned char* raw = ptx::dynamic_smem();
  const unsigned raw_addr = ptx::smem_addr(raw);
  const unsigned pad = (1024u - (raw_addr & 1023u)) & 1023u;
  const Pipe<C> p{raw + pad, raw_addr + pad};
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      ptx::mbar_init(p.full(s), 32);
      ptx::mbar_init(p.empty(s), kWarpgroup * C);
    }
  }
  __syncthreads();
  return p;
}

__device__ __forceinline__ void wait(unsigned bar, unsigned parity) {
  while (!ptx::mbar_test(bar, parity)) {
  }
}

__device__ __forceinline__ bool is_producer() { return threadIdx.x < kWarpgroup; }
__device__ __forceinline__ int producer_warp() { return threadIdx.x / 32; }
__device__ __forceinline__ int consumer() { return threadIdx.x / kWarpgroup - 1; }

// Producer warp: stage s is free for its round `round` (the it-th stage is round it / kStages).
__device__ __forceinline__ void acquire(unsigned empty_bar, long long round) {
  wait(empty_bar, static_cast<unsigned>(round & 1) ^ 1u);
}

// Producer warp: this lane's copies and stores into the stage are complete and visible to the MMAs.
__device__ __forceinline__ void publish(unsigned full_bar) {
  ptx::cp_async_wait_all();
  ptx::fence_proxy_async();
  ptx::mbar_arrive(full_bar);
}

// Producer warp: rows row0 .. row0 + R - 1, columns col0 .. col0 + 63 of a row-major 16-bit matrix
// (row pitch ld elements, 16-byte aligned rows) into the swizzled tile at dst; zero past rows/cols.
template <typename T, int R>
__device__ __forceinline__ void load_rows_async(unsigned dst, const T* __restrict__ src, long long row0,
                                                long long rows, long long ld, long long col0, long long cols) {
  static_assert(sizeof(T) == 2, "16-bit tiles");
  const int lane = threadIdx.x % 32, c = lane % 8, r = lane / 8;  // lane copies chunk c of rows r + 4i
  const long long col = col0 + 8 * c;
  const int bytes = col < cols ? static_cast<int>(min_ll(16, (cols - col) * 2)) : 0;
  const int valid = static_cast<int>(min_ll(rows - row0 - r, R));  // row r + 4i exists iff 4i < valid
  // A zero src-size reads nothing, so rows past the end keep the running pointer (never dereferenced).
  const T* ptr = src + (row0 + r) * ld + col;
#pragma unroll
  for (int i = 0; i < R / 4; ++i, ptr += 4 * ld) ptx::cp_async16(dst + swizzle(r + 4 * i, c), ptr, 4 * i < valid ? bytes : 0);
}

// Coordinates of accumulator i of this thread inside its warpgroup's 64 x 128 tile.
__device__ __forceinline__ int acc_row(int i) {
  const int wl = threadIdx.x % kWarpgroup;
  return 16 * (wl / 32) + (wl % 32) / 4 + 8 * ((i >> 1) & 1);
}
__device__ __forceinline__ int acc_col(int i) { return 8 * (i >> 2) + 2 * (threadIdx.x % 4) + (i & 1); }

// Consumer warpgroup: acc = A[rows of this warpgroup] . B^T over stages it0 .. it0 + n - 1 (n >= 1),
// releasing every stage once it has been read.
template <typename T, int ARCH, int C>
__device__ __forceinline__ void consume(const Pipe<C>& p, long long it0, long long n, float (&acc)[64]) {
  const unsigned a_row0 = consumer() * 64 * kRowBytes;
  if constexpr (ARCH == 90) {
    for (long long i = 0; i < n; ++i) {
      const long long it = it0 + i;
      const int s = static_cast<int>(it % kStages);
      wait(p.full(s), static_cast<unsigned>((it / kStages) & 1));
      const unsigned long long da = ptx::sw128_desc(p.a(s) + a_row0), db = ptx::sw128_desc(p.b(s));
      ptx::wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBK / 16; ++kk)
        ptx::wgmma_m64n128k16<T>(acc, da + 2 * kk, db + 2 * kk, (i > 0 || kk > 0) ? 1 : 0);
      ptx::wgmma_commit();
      ptx::wgmma_wait<1>();
      if (i > 0) ptx::mbar_arrive(p.empty(static_cast<int>((it - 1) % kStages)));
    }
    ptx::wgmma_wait<0>();
    ptx::mbar_arrive(p.empty(static_cast<int>((it0 + n - 1) % kStages)));
  } else {
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[i] = 0.0f;
    const int lane = threadIdx.x % 32, m = lane / 8;
    // ldmatrix row of this lane: A (rows +8 for matrices 1, 3; k + 8 for 2, 3) and B (rows + 8 for
    // matrices 2, 3; k + 8 for 1, 3), so the four registers are mma.sync's a0..a3 and b0, b1 of two
    // n8 tiles.
    const unsigned a_row = (threadIdx.x % kWarpgroup) / 32 * 16 + (m % 2) * 8 + lane % 8, a_chunk = m / 2;
    const unsigned b_row = (m / 2) * 8 + lane % 8, b_chunk = m % 2;
    for (long long i = 0; i < n; ++i) {
      const long long it = it0 + i;
      const int s = static_cast<int>(it % kStages);
      wait(p.full(s), static_cast<unsigned>((it / kStages) & 1));
      const unsigned a = p.a(s) + a_row0, b = p.b(s);
#pragma unroll
      for (int kk = 0; kk < kBK / 16; ++kk) {
        unsigned fa[4];
        ptx::ldmatrix_x4(fa, a + swizzle(a_row, 2 * kk + a_chunk));
#pragma unroll
        for (int q = 0; q < kBN / 16; ++q) {
          unsigned fb[4];
          ptx::ldmatrix_x4(fb, b + swizzle(16 * q + b_row, 2 * kk + b_chunk));
          float(&d0)[4] = *reinterpret_cast<float(*)[4]>(&acc[8 * q]);
          float(&d1)[4] = *reinterpret_cast<float(*)[4]>(&acc[8 * q + 4]);
          ptx::mma_16816<T>(d0, fa, fb[0], fb[1]);
          ptx::mma_16816<T>(d1, fa, fb[2], fb[3]);
        }
      }
      ptx::mbar_arrive(p.empty(s));
    }
  }
}

}  // namespace pipe
}  // namespace adaptinf
