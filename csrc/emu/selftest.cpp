// Kernels that break CUDA's rules on purpose: tests check that the emulator reports each one.
#include "cuda_util.h"

namespace adaptinf {

namespace {
__global__ void divergent_barrier_kernel() {
  if (threadIdx.x < 64) __syncthreads();  // half the block skips the barrier
}

__global__ void misaligned_wmma_kernel(const __half* p) {
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __half, nvcuda::wmma::row_major> f;
  nvcuda::wmma::load_matrix_sync(f, p + 1, 16);  // 2-byte offset: WMMA needs 32-byte alignment
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
  } else {
    throw std::invalid_argument("unknown self-test " + name);
  }
}

}  // namespace adaptinf
