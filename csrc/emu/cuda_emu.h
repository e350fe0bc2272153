// Host emulation of the small CUDA subset our kernels use, so CPU-only CI executes the very kernel
// source (indexing, masking, tiling, barriers, tie rules) that nvcc compiles for the GPU.
//
// Model: a launch runs its blocks one after another; the threads of a block are real std::threads,
// so __syncthreads is a real barrier and a missing one shows up as a race. `__shared__` variables
// become function-local statics: shared by the threads of the running block (one launch at a time).
// WMMA fragments hold the whole tile in logical (row, col) order; the collective operations are
// carried out by lane 0 of each warp, and every operation checks the documented requirements
// (32-byte aligned pointers, ldm a multiple of 16 bytes). Code may only touch fragment elements
// element-wise (as the CUDA docs require), so the layout difference cannot leak into results.
// Not modelled: warp-level timing, memory coalescing, real tensor-core accumulation order.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <algorithm>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __forceinline__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

namespace adaptinf_emu {

struct Dim3 {
  unsigned int x = 1, y = 1, z = 1;
};

inline Dim3 gridDim_, blockDim_;
inline thread_local Dim3 blockIdx_, threadIdx_;
inline thread_local long long syncs_ = 0;

class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait() {
    std::unique_lock<std::mutex> lock(m_);
    const long long gen = gen_;
    if (++count_ >= n_) {
      release();
    } else {
      cv_.wait(lock, [&] { return gen != gen_; });
    }
  }
  // A finished thread leaves the barrier, so a divergent __syncthreads reports instead of hanging.
  void drop() {
    std::lock_guard<std::mutex> lock(m_);
    if (--n_ > 0 && count_ >= n_) release();
  }

 private:
  void release() {
    count_ = 0;
    ++gen_;
    cv_.notify_all();
  }
  std::mutex m_;
  std::condition_variable cv_;
  int n_, count_ = 0;
  long long gen_ = 0;
};

inline Barrier* barrier_ = nullptr;
inline std::vector<Barrier*> warp_barriers_;  // one per warp of the running block (ptx_emu.h)
inline unsigned char* dyn_base_ = nullptr;     // the running block's dynamic shared memory, 1024-aligned
inline std::size_t dyn_bytes_ = 0;
void reset_block_state();                      // ptx_emu.h: mbarriers of the previous block
void reset_thread_state();                     // ptx_emu.h: pending copies and MMAs
void end_thread_profile();                     // ptx_emu.h: hand this thread's shared accesses to the block
void end_block_profile();                      // ptx_emu.h: count the block's wavefronts

inline std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

inline int linear_thread() { return static_cast<int>(threadIdx_.x + blockDim_.x * (threadIdx_.y + blockDim_.y * threadIdx_.z)); }
inline bool warp_leader() { return linear_thread() % 32 == 0; }

[[noreturn]] inline void fail(const std::string& what) { throw std::runtime_error("CUDA emulator: " + what); }

// Runs body() as grid x block threads; rethrows the first error of any thread.
template <class F>
void launch(Dim3 grid, Dim3 block, F&& body, std::size_t smem_bytes = 0) {
  std::lock_guard<std::mutex> guard(launch_mutex());
  const int threads = static_cast<int>(block.x * block.y * block.z);
  if (threads < 1 || threads > 1024) fail("block of " + std::to_string(threads) + " threads");
  if (grid.y > 65535 || grid.z > 65535) fail("grid.y/grid.z above 65535");
  gridDim_ = grid;
  blockDim_ = block;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        Barrier bar(threads);
        barrier_ = &bar;
        // Dynamic shared memory starts as 0xFF bytes (16-bit NaNs), so reading unwritten shared
        // memory shows in results; its window address 0 is 1024-byte aligned.
        std::vector<unsigned char> smem(smem_bytes + 1024, 0xFF);
        dyn_base_ = smem.data() + ((1024 - reinterpret_cast<std::uintptr_t>(smem.data()) % 1024) % 1024);
        dyn_bytes_ = smem_bytes;
        std::vector<std::unique_ptr<Barrier>> warps;
        warp_barriers_.clear();
        for (int w = 0; w * 32 < threads; ++w) {
          warps.emplace_back(new Barrier(std::min(32, threads - 32 * w)));
          warp_barriers_.push_back(warps.back().get());
        }
        reset_block_state();
        std::vector<long long> syncs(threads);
        std::exception_ptr error;
        std::mutex error_mutex;
        std::vector<std::thread> pool;
        pool.reserve(threads);
        for (int t = 0; t < threads; ++t) {
          pool.emplace_back([&, t] {
            blockIdx_ = Dim3{bx, by, bz};
            threadIdx_ = Dim3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
            syncs_ = 0;
            reset_thread_state();
            try {
              body();
            } catch (...) {
              std::lock_guard<std::mutex> lock(error_mutex);
              if (!error) error = std::current_exception();
            }
            syncs[t] = syncs_;
            end_thread_profile();
            bar.drop();
            warp_barriers_[t / 32]->drop();
          });
        }
        for (auto& th : pool) th.join();
        end_block_profile();
        barrier_ = nullptr;
        dyn_base_ = nullptr;
        if (error) std::rethrow_exception(error);
        for (int t = 1; t < threads; ++t)
          if (syncs[t] != syncs[0]) fail("threads of a block reached __syncthreads a different number of times");
      }
}

}  // namespace adaptinf_emu

#define gridDim ::adaptinf_emu::gridDim_
#define blockDim ::adaptinf_emu::blockDim_
#define blockIdx ::adaptinf_emu::blockIdx_
#define threadIdx ::adaptinf_emu::threadIdx_

inline void __syncthreads() {
  ++adaptinf_emu::syncs_;
  adaptinf_emu::barrier_->wait();
}

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
namespace precision {
struct tf32 {};
}  // namespace precision

// cvt.rna.tf32.f32: round the float32 to 10 mantissa bits, ties away from zero.
inline float __float_to_tf32(float v) {
  if (!std::isfinite(v)) return v;
  std::uint32_t u;
  std::memcpy(&u, &v, 4);
  u = (u + 0x1000u) & 0xffffe000u;
  std::memcpy(&v, &u, 4);
  return v;
}

template <class T> struct storage { using type = T; };
template <> struct storage<precision::tf32> { using type = float; };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static constexpr int rows = std::is_same<Use, matrix_b>::value ? K : M;
  static constexpr int cols = std::is_same<Use, matrix_a>::value ? K : N;
  static constexpr int num_elements = rows * cols;
  using element_type = typename storage<T>::type;
  element_type x[num_elements] = {};  // logical row-major (r, c)
};

inline float value(float v) { return v; }
inline float value(__half v) { return __half2float(v); }
inline float value(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class E>
void check_access(const E* p, unsigned ldm, const char* op) {
  if (reinterpret_cast<std::uintptr_t>(p) % 32 != 0) adaptinf_emu::fail(std::string(op) + ": pointer not 32-byte aligned");
  if ((ldm * sizeof(E)) % 16 != 0) adaptinf_emu::fail(std::string(op) + ": ldm is not a multiple of 16 bytes");
}

template <class Use, int M, int N, int K, class T, class L, class E>
void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const E* p, unsigned ldm) {
  static_assert(std::is_same<E, typename fragment<Use, M, N, K, T, L>::element_type>::value, "pointer type");
  static_assert(!std::is_same<Use, accumulator>::value, "accumulators load with a layout");
  check_access(p, ldm, "load_matrix_sync");
  if (!adaptinf_emu::warp_leader()) return;
  using F = fragment<Use, M, N, K, T, L>;
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c)
      f.x[r * F::cols + c] = std::is_same<L, row_major>::value ? p[r * ldm + c] : p[c * ldm + r];
}

template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm, layout_t layout) {
  check_access(p, ldm, "store_matrix_sync");
  if (!adaptinf_emu::warp_leader()) return;
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) p[layout == mem_row_major ? r * ldm + c : c * ldm + r] = f.x[r * N + c];
}

template <class Use, int M, int N, int K, class T, class L>
void fill_fragment(fragment<Use, M, N, K, T, L>& f, typename fragment<Use, M, N, K, T, L>::element_type v) {
  for (auto& e : f.x) e = v;
}

// Tensor cores read only the tf32 bits of a float operand (the low 13 mantissa bits are ignored).
inline float operand(float v, bool tf32) {
  if (!tf32) return v;
  std::uint32_t u;
  std::memcpy(&u, &v, 4);
  u &= 0xffffe000u;
  std::memcpy(&v, &u, 4);
  return v;
}

template <int M, int N, int K, class T>
void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, T, row_major>& a,
              const fragment<matrix_b, M, N, K, T, col_major>& b, const fragment<accumulator, M, N, K, float>& c) {
  if (!adaptinf_emu::warp_leader()) return;
  constexpr bool tf32 = std::is_same<T, precision::tf32>::value;
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float acc = c.x[i * N + j];
      for (int k = 0; k < K; ++k) acc += operand(value(a.x[i * K + k]), tf32) * operand(value(b.x[k * N + j]), tf32);
      d.x[i * N + j] = acc;
    }
}

}  // namespace wmma
}  // namespace nvcuda

#include "ptx_emu.h"
