#include <cuda_runtime.h>

#include "cuda_util.h"
#include "launch.h"

namespace adaptinf {

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

int pipeline_arch(int dtype, std::uintptr_t ptr, std::int64_t row_pitch, int device) {
  return pipe_arch(dtype, device, ptr, row_pitch);
}

int cuda_runtime_version() {
  int v = 0;
  cudaRuntimeGetVersion(&v);
  return v;
}

}  // namespace adaptinf
