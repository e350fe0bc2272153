// Launch plumbing shared by the host launchers; the same launcher source builds for the GPU (nvcc)
// and for the host emulator (ADAPTINF_EMULATE, g++), which is how CPU-only CI runs the kernels.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "launch.h"

#if defined(ADAPTINF_EMULATE)
#include "cuda_emu.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

namespace adaptinf {

struct Grid {
  long long x, y, z;
};

// Grid limits of every CUDA device since sm_30 (and of the emulator).
inline void check_grid(const Grid& g, const char* what) {
  if (g.x > 0x7fffffffLL || g.y > 65535 || g.z > 65535)
    throw std::invalid_argument(std::string(what) + ": the problem needs a grid beyond CUDA's limits; split the call");
}

#if defined(ADAPTINF_EMULATE)
inline void prepare_device(int) {}  // host memory: no device to select
inline void check_launch(const char*) {}
// `kernel` must be a plain name (take a pointer to a template instance first: no commas).
#define ADAPTINF_LAUNCH(kernel, grid, threads, stream, ...)                                           \
  do {                                                                                                \
    (void)(stream);                                                                                   \
    ::adaptinf_emu::launch(                                                                           \
        ::adaptinf_emu::Dim3{static_cast<unsigned>((grid).x), static_cast<unsigned>((grid).y),        \
                             static_cast<unsigned>((grid).z)},                                        \
        ::adaptinf_emu::Dim3{static_cast<unsigned>(threads), 1u, 1u}, [&] { kernel(__VA_ARGS__); }); \
  } while (0)
#else
inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear a non-sticky error so later calls are not poisoned
    throw std::runtime_error(std::string("adaptinf_fast._C: ") + what + ": " + cudaGetErrorString(err));
  }
}
// _C's runtime is separate from torch's: select the tensors' device on every call.
inline void prepare_device(int device) { check(cudaSetDevice(device), "cudaSetDevice"); }
inline void check_launch(const char* what) { check(cudaGetLastError(), what); }
#define ADAPTINF_LAUNCH(kernel, grid, threads, stream, ...)                                              \
  kernel<<<dim3(static_cast<unsigned>((grid).x), static_cast<unsigned>((grid).y),                       \
                static_cast<unsigned>((grid).z)),                                                        \
           (threads), 0, reinterpret_cast<cudaStream_t>(stream)>>>(__VA_ARGS__)
#endif

inline long long ceil_div(long long a, long long b) { return (a + b - 1) / b; }

// Calls f(T{}) with T the element type of a launch.h DType code (float, __half, __nv_bfloat16).
template <class F>
void dispatch_dtype(int dtype, const char* op, F&& f) {
  switch (dtype) {
    case kFloat32: f(float{}); break;
    case kFloat16: f(__half{}); break;
    case kBFloat16: f(__nv_bfloat16{}); break;
    default: throw std::invalid_argument(std::string(op) + ": unknown dtype code " + std::to_string(dtype));
  }
}

}  // namespace adaptinf
