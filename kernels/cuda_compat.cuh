// What the tensor-core kernels need from CUDA: WMMA, half and bfloat16 types, conversions.
// With ADAPTINF_EMULATE the host emulator in csrc/emu stands in (CPU-only tests of the same source).
#pragma once

#if defined(ADAPTINF_EMULATE)
#include "cuda_emu.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#endif

#if defined(__CUDACC_RTC__) && !defined(INFINITY)  // NVRTC has no <math.h>
#define INFINITY __int_as_float(0x7f800000)
#endif

namespace adaptinf {

// std::is_same without <type_traits>: NVRTC (the CuPy JIT path) has no C++ standard library.
template <typename A, typename B> inline constexpr bool is_same_v = false;
template <typename A> inline constexpr bool is_same_v<A, A> = true;

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ long long min_ll(long long a, long long b) { return a < b ? a : b; }

}  // namespace adaptinf
