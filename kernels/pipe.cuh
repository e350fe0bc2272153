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
// per thread; Acc<ARCH> maps accumulator i to its (row, column) and to the thread's row slot:
//   ARCH 90 (sm_90a): 4 wgmma.m64n128k16 per stage from shared-memory descriptors, one group kept
//                     in flight (a stage is released when the next one's group is issued); warp w
//                     of the warpgroup holds rows 16w .. 16w + 15, all 128 columns (wgmma's layout).
//   ARCH 80 (sm_80+): ldmatrix.x4 + mma.sync.m16n8k16 with the warps of a warpgroup in a 2 x 2
//                     grid of 32 x 64 tiles: a k16 step loads 2 A and 4 B fragments for 16 MMAs
//                     (a warp owning 16 rows x 128 columns would load 1 + 8 for the same 16), so
//                     the stage is read from shared memory 1.5 times less. Rows are split over two
//                     warps (column halves), which merge per-row results in shared memory.
#pragma once

#include "ptx.cuh"

namespace adaptinf {
namespace pipe {

constexpr int kBK = 64, kBN = 128, kStages = 4, kWarpgroup = 128, kRowBytes = 128;

using ptx::U4;

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

// Waits for the phase of parity `parity`. sm_90's try_wait suspends the warp in hardware between
// polls; sm_80's test_wait returns at once, so the loop backs off with nanosleep (32 .. 256 ns)
// instead of spinning on issue slots the MMA warps of its sub-partition need.
__device__ __forceinline__ void wait(unsigned bar, unsigned parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  while (!ptx::mbar_test(bar, parity)) {
  }
#else
  if (ptx::mbar_test(bar, parity)) return;
  for (unsigned ns = 32; !ptx::mbar_test(bar, parity); ns = ns < 256 ? 2 * ns : 256) ptx::nanosleep(ns);
#endif
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

// Coordinates of accumulator i of this thread inside its warpgroup's 64 x 128 tile, and its row
// slot (the thread's rows: 2 on ARCH 90, 4 on ARCH 80). Accumulators i and i + 1 (i even) are
// columns c, c + 1 of one row on both paths.
template <int ARCH>
struct Acc {
  static constexpr int kSlots = ARCH == 90 ? 2 : 4;
  static constexpr bool kSplitColumns = ARCH != 90;  // rows shared by two warps (column halves)
  static __device__ __forceinline__ int warp() { return (threadIdx.x % kWarpgroup) / 32; }
  static __device__ __forceinline__ int lane() { return threadIdx.x % 32; }
  static __device__ __forceinline__ int slot(int i) { return ARCH == 90 ? (i >> 1) & 1 : ((i >> 1) & 1) + 2 * (i >> 5); }
  static __device__ __forceinline__ int slot_row(int s) {
    return ARCH == 90 ? 16 * warp() + lane() / 4 + 8 * s : 32 * (warp() / 2) + 16 * (s >> 1) + lane() / 4 + 8 * (s & 1);
  }
  static __device__ __forceinline__ int row(int i) { return slot_row(slot(i)); }
  static __device__ __forceinline__ int col(int i) {
    return ARCH == 90 ? 8 * (i >> 2) + 2 * (lane() % 4) + (i & 1)
                      : 64 * (warp() % 2) + 8 * ((i >> 2) & 7) + 2 * (lane() % 4) + (i & 1);
  }
  // Threads that hold a row's final result after merge(): lane 0 of each quad (of the wc = 0 warp
  // on ARCH 80).
  static __device__ __forceinline__ bool writes_rows() { return lane() % 4 == 0 && (!kSplitColumns || warp() % 2 == 0); }
};

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
      ptx::fence_operands(acc);
      ptx::wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBK / 16; ++kk)
        ptx::wgmma_m64n128k16<T>(acc, da + 2 * kk, db + 2 * kk, (i > 0 || kk > 0) ? 1 : 0);
      ptx::wgmma_commit();
      ptx::fence_operands(acc);
      ptx::wgmma_wait<1>();
      ptx::fence_operands(acc);
      if (i > 0) ptx::mbar_arrive(p.empty(static_cast<int>((it - 1) % kStages)));
    }
    ptx::wgmma_wait<0>();
    ptx::fence_operands(acc);
    ptx::mbar_arrive(p.empty(static_cast<int>((it0 + n - 1) % kStages)));
  } else {
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[i] = 0.0f;
    const int lane = threadIdx.x % 32, m = lane / 8, warp = (threadIdx.x % kWarpgroup) / 32;
    // ldmatrix row of this lane: A (rows + 8 for matrices 1, 3; k + 8 for 2, 3) and B (rows + 8 for
    // matrices 2, 3; k + 8 for 1, 3), so the four registers are mma.sync's a0..a3 and b0, b1 of two
    // n8 tiles. Warp (wr, wc) = (warp / 2, warp % 2) owns rows 32 wr + [0, 32), columns 64 wc + [0, 64).
    const unsigned a_row = 32 * (warp / 2) + (m % 2) * 8 + lane % 8, a_chunk = m / 2;
    const unsigned b_row = 64 * (warp % 2) + (m / 2) * 8 + lane % 8, b_chunk = m % 2;
    for (long long i = 0; i < n; ++i) {
      const long long it = it0 + i;
      const int s = static_cast<int>(it % kStages);
      wait(p.full(s), static_cast<unsigned>((it / kStages) & 1));
      const unsigned a = p.a(s) + a_row0, b = p.b(s);
#pragma unroll
      for (int kk = 0; kk < kBK / 16; ++kk) {
        unsigned fa[2][4];
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) ptx::ldmatrix_x4(fa[mt], a + swizzle(a_row + 16 * mt, 2 * kk + a_chunk));
#pragma unroll
        for (int q = 0; q < 4; ++q) {  // n16 group q: n8 tiles 2q, 2q + 1 of the warp's 64 columns
          unsigned fb[4];
          ptx::ldmatrix_x4(fb, b + swizzle(16 * q + b_row, 2 * kk + b_chunk));
#pragma unroll
          for (int mt = 0; mt < 2; ++mt) {
            float(&d0)[4] = *reinterpret_cast<float(*)[4]>(&acc[32 * mt + 8 * q]);
            float(&d1)[4] = *reinterpret_cast<float(*)[4]>(&acc[32 * mt + 8 * q + 4]);
            ptx::mma_16816<T>(d0, fa[mt], fb[0], fb[1]);
            ptx::mma_16816<T>(d1, fa[mt], fb[2], fb[3]);
          }
        }
      }
      ptx::mbar_arrive(p.empty(s));
    }
  }
}

// A running per-row (best, second best, index) kept by a consumer thread for each of its row
// slots, and its merge with the state another thread holds for the same row. Better decides the
// order and the tie rule (k-means: smaller, ties to the lower index; max-sim: larger, ties to the
// earlier column, -1 = none).
template <class Better, int S>
struct Top2 {
  float best[S], second[S];
  long long index[S];

  __device__ __forceinline__ void merge(int s, float o, float o_second, long long o_index) {
    if (Better::wins(o, o_index, best[s], index[s])) {
      second[s] = Better::pick(o_second, best[s]);
      best[s] = o;
      index[s] = o_index;
    } else {
      second[s] = Better::pick(second[s], o);
    }
  }

  // Merges the four lanes of each quad (they hold other columns of the same rows), then on ARCH 80
  // the two warps of a row (column halves) through shared memory at `scratch` (16 bytes per row of
  // the block; the stages are free once every consumer is past its last one). Afterwards the
  // threads with Acc<ARCH>::writes_rows() hold every row's result.
  template <int ARCH, int C>
  __device__ __forceinline__ void merge_rows(unsigned scratch) {
#pragma unroll
    for (int s = 0; s < S; ++s) {
#pragma unroll
      for (int mask = 1; mask <= 2; mask <<= 1)
        merge(s, ptx::shfl_xor(best[s], mask), ptx::shfl_xor(second[s], mask), ptx::shfl_xor(index[s], mask));
    }
    if constexpr (Acc<ARCH>::kSplitColumns) {
      using A = Acc<ARCH>;
      const bool upper = A::warp() % 2 == 1, lead = A::lane() % 4 == 0;
      ptx::named_barrier(1, kWarpgroup * C);  // every consumer is done with the stages
      if (upper && lead) {
#pragma unroll
        for (int s = 0; s < S; ++s) {
          const unsigned at = scratch + 16u * static_cast<unsigned>(consumer() * 64 + A::slot_row(s));
          const unsigned long long u = static_cast<unsigned long long>(index[s]);
          ptx::st_shared(at, ptx::U4{ptx::f2u(best[s]), ptx::f2u(second[s]), static_cast<unsigned>(u),
                                     static_cast<unsigned>(u >> 32)});
        }
      }
      ptx::named_barrier(1, kWarpgroup * C);
      if (!upper && lead) {
#pragma unroll
        for (int s = 0; s < S; ++s) {
          const ptx::U4 v = ptx::ld_shared(scratch + 16u * static_cast<unsigned>(consumer() * 64 + A::slot_row(s)));
          merge(s, ptx::u2f(v.x), ptx::u2f(v.y),
                static_cast<long long>((static_cast<unsigned long long>(v.w) << 32) | v.z));
        }
      }
    }
  }
};

}  // namespace pipe
}  // namespace adaptinf
