// Launch plumbing shared by the host launchers; the same launcher source builds for the GPU (nvcc)
// and for the host emulator (ADAPTINF_EMULATE, g++), which is how CPU-only CI runs the kernels.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>

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

// The largest dynamic shared memory of a pipelined kernel (pipe.cuh Layout<2>::kLaunchBytes).
constexpr unsigned kPipeSharedBytes = 4 * (128 + 128) * 128 + 2 * 4 * 8 + 1024;

// Raises a kernel's dynamic shared-memory limit once per (kernel, device): the attribute persists,
// and a runtime call per launch costs microseconds on a hot path. set() does the raising; the pair
// counts as done only once set() returned, so a failed raise (it throws) is tried again next launch.
struct OptIns {  // one registry for the process (a static inside the template would be one per lambda type)
  std::mutex m;
  std::set<std::pair<const void*, int>> done;
};
inline OptIns& opt_ins() {
  static OptIns registry;
  return registry;
}
template <class Set>
void opt_in_shared_memory(const void* kernel, int device, Set&& set) {
  OptIns& r = opt_ins();
  std::lock_guard<std::mutex> lock(r.m);
  if (r.done.count({kernel, device})) return;
  set();
  r.done.insert({kernel, device});
}

// Grid limits of every CUDA device since sm_30 (and of the emulator).
inline void check_grid(const Grid& g, const char* what) {
  if (g.x > 0x7fffffffLL || g.y > 65535 || g.z > 65535)
    throw std::invalid_argument(std::string(what) + ": the problem needs a grid beyond CUDA's limits; split the call");
}

#if defined(ADAPTINF_EMULATE)
// The emulator counts the opt-ins a real launch would make (tests check they happen once).
inline std::atomic<long long>& smem_opt_ins() {
  static std::atomic<long long> n{0};
  return n;
}
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
#define ADAPTINF_LAUNCH_SMEM(kernel, grid, threads, smem, stream, ...)                                       \
  do {                                                                                                       \
    (void)(stream);                                                                                          \
    ::adaptinf::opt_in_shared_memory(reinterpret_cast<const void*>(kernel), 0, [] { ++::adaptinf::smem_opt_ins(); }); \
    ::adaptinf_emu::launch(                                                                                  \
        ::adaptinf_emu::Dim3{static_cast<unsigned>((grid).x), static_cast<unsigned>((grid).y),               \
                             static_cast<unsigned>((grid).z)},                                               \
        ::adaptinf_emu::Dim3{static_cast<unsigned>(threads), 1u, 1u}, [&] { kernel(__VA_ARGS__); }, (smem)); \
  } while (0)
// The emulator takes the path ADAPTINF_EMULATE_ARCH names (90: wgmma, default; 80: mma.sync).
inline int device_pipe_arch(int) {
  const char* arch = std::getenv("ADAPTINF_EMULATE_ARCH");
  return arch != nullptr && std::string(arch) == "80" ? 80 : 90;
}
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
// Every launch of a pipelined kernel asks for the same bytes (Layout<C>::kLaunchBytes), so the limit
// raised at its first launch on a device holds for the rest; the caller has selected the device.
#define ADAPTINF_LAUNCH_SMEM(kernel, grid, threads, smem, stream, ...)                                        \
  do {                                                                                                        \
    int device_ = 0;                                                                                          \
    check(cudaGetDevice(&device_), "cudaGetDevice");                                                          \
    ::adaptinf::opt_in_shared_memory(reinterpret_cast<const void*>(kernel), device_, [&] {                     \
      check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)), \
            "cudaFuncSetAttribute");                                                                          \
    });                                                                                                       \
    kernel<<<dim3(static_cast<unsigned>((grid).x), static_cast<unsigned>((grid).y),                           \
                  static_cast<unsigned>((grid).z)),                                                          \
             (threads), (smem), reinterpret_cast<cudaStream_t>(stream)>>>(__VA_ARGS__);                      \
  } while (0)
// wgmma SASS exists only for sm_90a (CMake defines ADAPTINF_HAS_SM90A when it builds it); every
// other GPU from sm_80 on takes the mma.sync path (newer ones through the PTX), older ones WMMA.
// GPUs whose blocks cannot have the pipeline's shared memory (sm_86 / sm_89: 99 KiB) keep WMMA.
// Asked once per device (launches are hot; the answer cannot change while the process runs).
inline int device_pipe_arch(int device) {
  static std::atomic<int> known[64] = {};  // 0: not asked yet, else the path + 1
  if (device >= 0 && device < 64 && known[device].load() != 0) return known[device].load() - 1;
  int major = 0, smem = 0, arch = 0;
  check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), "cudaDeviceGetAttribute");
  if (smem >= static_cast<int>(kPipeSharedBytes)) {
    arch = major >= 8 ? 80 : 0;
#if defined(ADAPTINF_HAS_SM90A)
    if (major == 9) arch = 90;
#endif
  }
  if (device >= 0 && device < 64) known[device].store(arch + 1);
  return arch;
}
#endif

// Which kernels a 16-bit launch takes: the pipelined ones (pipe.cuh) on ARCH 90 or 80, or 0 for the
// WMMA tile kernels (fp32, rows that are not 16-byte aligned, ADAPTINF_CUDA_PIPELINE=0, pre-sm_80).
// ADAPTINF_CUDA_PIPELINE=0 switches the pipeline off, =80 takes the mma.sync path even where wgmma
// exists (the GPU check runs both paths on one Hopper GPU).
inline int pipe_arch(int dtype, int device, std::uintptr_t ptr, long long row_pitch) {
  const char* env = std::getenv("ADAPTINF_CUDA_PIPELINE");
  const std::string choice = env != nullptr ? env : "";
  if (choice == "0") return 0;
  if (dtype == kFloat32 || ptr % 16 != 0 || row_pitch % 8 != 0) return 0;
  const int arch = device_pipe_arch(device);
  return choice == "80" && arch != 0 ? 80 : arch;
}

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
