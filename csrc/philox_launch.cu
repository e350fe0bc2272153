#include <stdexcept>
#include <string>

#include <cuda_runtime.h>

#include "launch.h"
#include "philox_fill.cu"

namespace adaptinf {

namespace {
void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error so later calls are not poisoned
    throw std::runtime_error(std::string("adaptinf_fast._C: ") + what + ": " + cudaGetErrorString(err));
  }
}
}  // namespace

void launch_philox_fill(std::uintptr_t out, std::int64_t rows, std::int64_t cols, std::uint64_t seed,
                        std::uint64_t row_offset, int kind, float scale, std::uintptr_t stream,
                        int device) {
  if (rows == 0 || cols == 0) return;
  // _C's runtime is separate from torch's: select the tensor's device on every call.
  check(cudaSetDevice(device), "cudaSetDevice");
  const long long work = rows * ((cols + 31) / 32);
  const int threads = 256;
  const long long grid = (work + threads - 1) / threads;
  if (grid > 0x7fffffffLL) throw std::invalid_argument("philox_fill: buffer too large for one launch");
  adaptinf_philox_fill<<<static_cast<unsigned int>(grid), threads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
      reinterpret_cast<float*>(out), rows, cols, seed, row_offset, kind, scale);
  check(cudaGetLastError(), "adaptinf_philox_fill launch");
}

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

int cuda_runtime_version() {
  int v = 0;
  cudaRuntimeGetVersion(&v);
  return v;
}

}  // namespace adaptinf
