// Kernels that break CUDA's rules on purpose: tests check that the emulator reports each one.
#include "cuda_util.h"
#include "ptx.cuh"

namespace adaptinf {

namespace {
__global__ void divergent_barrier_kernel() {
  if (threadIdx.x < 64) __syncthreads();  // half the block skips the barrier
}

__global__ void misaligned_wmma_kernel(const __half* p) {
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __half, nvcuda::wmma::row_major> f;
  nvcuda::wmma::load_matrix_sync(f, p + 1, 16);  // 2-byte offset: WMMA needs 32-byte alignment
}
__global__ void cp_async_misaligned_kernel(const unsigned char* src) {
  ptx::cp_async16(ptx::smem_addr(ptx::dynamic_smem()) + 4, src, 16);  // shared side 4 bytes off
  ptx::cp_async_wait_all();
}

__global__ void named_barrier_mismatch_kernel() { ptx::named_barrier(1, threadIdx.x < 32 ? 64 : 32); }

__global__ void mbarrier_uninitialised_kernel() { ptx::mbar_arrive(ptx::smem_addr(ptx::dynamic_smem())); }

__global__ void wgmma_unswizzled_kernel() {
  float acc[64] = {};
  const unsigned long long desc = ptx::sw128_desc(ptx::smem_addr(ptx::dynamic_smem())) & ~(3ull << 62);
  ptx::wgmma_m64n128k16<__nv_bfloat16>(acc, desc, desc, 0);
  ptx::wgmma_commit();
  ptx::wgmma_wait<0>();
}
}  // namespace

void emu_selftest(const std::string& name) {
  const Grid one{1, 1, 1};
  if (name == "divergent_barrier") {
    auto kernel = divergent_barrier_kernel;
    ADAPTINF_LAUNCH(kernel, one, 128, 0);
  } else if (name == "misaligned_wmma") {
    alignas(32) static __half buffer[16 * 17];
    auto kernel = misaligned_wmma_kernel;
    ADAPTINF_LAUNCH(kernel, one, 32, 0, buffer);
  } else if (name == "cp_async_misaligned") {
    alignas(16) static unsigned char src[16];
    auto kernel = cp_async_misaligned_kernel;
    ADAPTINF_LAUNCH_SMEM(kernel, one, 32, 1024, 0, src);
  } else if (name == "mbarrier_uninitialised") {
    auto kernel = mbarrier_uninitialised_kernel;
    ADAPTINF_LAUNCH_SMEM(kernel, one, 32, 1024, 0);
  } else if (name == "named_barrier_mismatch") {
    auto kernel = named_barrier_mismatch_kernel;
    ADAPTINF_LAUNCH(kernel, one, 64, 0);
  } else if (name == "wgmma_unswizzled") {
    auto kernel = wgmma_unswizzled_kernel;
    ADAPTINF_LAUNCH_SMEM(kernel, one, 128, 32768, 0);
  } else if (name == "opt_in_retry") {  // a raise that fails is tried again, one that worked is not
    static int marker;
    int calls = 0;
    try {
      opt_in_shared_memory(&marker, 7, [&] { ++calls; throw std::runtime_error("cudaFuncSetAttribute failed"); });
    } catch (const std::runtime_error&) {
    }
    opt_in_shared_memory(&marker, 7, [&] { ++calls; });
    opt_in_shared_memory(&marker, 7, [&] { ++calls; });
    if (calls != 2) throw std::runtime_error("opt-in made " + std::to_string(calls) + " raises; expected 2");
  } else {
    throw std::invalid_argument("unknown self-test " + name);
  }
}

}  // namespace adaptinf
