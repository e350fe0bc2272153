// The PTX the pipelined kernels (pipe.cuh) are built from, one small wrapper per instruction:
// cp.async (16-byte global -> shared copies with zero fill), mbarrier phases, ldmatrix and
// mma.sync (sm_80 and later), wgmma with shared-memory descriptors (sm_90a only).
//
// Shared memory is addressed by its 32-bit shared-window address (what the instructions take).
// Under ADAPTINF_EMULATE every wrapper forwards to csrc/emu/cuda_emu.h, which carries out the
// instruction's documented semantics on the host (per-lane fragment layouts, descriptors and the
// 128-byte swizzle, deferred copies and MMAs that land only at their wait).
#pragma once

#include "cuda_compat.cuh"

namespace adaptinf {
namespace ptx {

struct alignas(16) U4 {
  unsigned x, y, z, w;
};

#if defined(ADAPTINF_EMULATE)

__device__ __forceinline__ unsigned char* dynamic_smem() { return ::adaptinf_emu::dynamic_smem(); }
__device__ __forceinline__ unsigned smem_addr(const void* p) { return ::adaptinf_emu::smem_addr(p); }
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, int src_bytes) {
  ::adaptinf_emu::cp_async16(dst, src, src_bytes);
}
__device__ __forceinline__ void cp_async_commit() { ::adaptinf_emu::cp_async_commit(); }
__device__ __forceinline__ void cp_async_wait_all() { ::adaptinf_emu::cp_async_wait_all(); }
__device__ __forceinline__ void mbar_init(unsigned bar, unsigned count) { ::adaptinf_emu::mbar_init(bar, count); }
__device__ __forceinline__ void mbar_arrive(unsigned bar) { ::adaptinf_emu::mbar_arrive(bar); }
__device__ __forceinline__ bool mbar_test(unsigned bar, unsigned parity) { return ::adaptinf_emu::mbar_test(bar, parity); }
__device__ __forceinline__ void fence_proxy_async() {}
__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], unsigned addr) { ::adaptinf_emu::ldmatrix_x4(r, addr); }
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  ::adaptinf_emu::mma_16816<T>(d, a, b0, b1);
}
__device__ __forceinline__ void wgmma_fence() {}
__device__ __forceinline__ void wgmma_commit() { ::adaptinf_emu::wgmma_commit(); }
template <int N> __device__ __forceinline__ void wgmma_wait() { ::adaptinf_emu::wgmma_wait(N); }
template <typename T>
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[64], unsigned long long da, unsigned long long db,
                                                 int scale_d) {
  ::adaptinf_emu::wgmma_m64n128k16<T>(d, da, db, scale_d);
}
template <typename T> __device__ __forceinline__ T shfl_xor(T v, int mask) { return ::adaptinf_emu::shfl_xor(v, mask); }
__device__ __forceinline__ unsigned and_or(unsigned a, unsigned b, unsigned c) { return (a & b) | c; }
__device__ __forceinline__ void nanosleep(unsigned) { ::adaptinf_emu::nanosleep(); }
__device__ __forceinline__ void named_barrier(int id, int threads) { ::adaptinf_emu::named_barrier(id, threads); }
__device__ __forceinline__ void st_shared(unsigned addr, const U4& v) { ::adaptinf_emu::st_shared16(addr, &v); }
__device__ __forceinline__ void st_global_v2(float* p, float a, float b) { ::adaptinf_emu::st_global_v2(p, a, b); }
__device__ __forceinline__ U4 ld_shared(unsigned addr) {
  U4 v;
  ::adaptinf_emu::ld_shared16(addr, &v);
  return v;
}
template <int N> __device__ __forceinline__ void fence_operands(float (&)[N]) {}
__device__ __forceinline__ unsigned f2u(float v) {
  unsigned u;
  std::memcpy(&u, &v, 4);
  return u;
}
__device__ __forceinline__ float u2f(unsigned u) {
  float v;
  std::memcpy(&v, &u, 4);
  return v;
}

#else  // nvcc / NVRTC

extern __shared__ unsigned char dynamic_smem_bytes[];
__device__ __forceinline__ unsigned char* dynamic_smem() { return dynamic_smem_bytes; }
__device__ __forceinline__ unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
// 16 bytes from src to shared dst; bytes past src_bytes (0..16) are zero-filled and never read.
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }
__device__ __forceinline__ void mbar_init(unsigned bar, unsigned count) {
  asm volatile("mbarrier.init.shared.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(unsigned bar) {
  asm volatile("{\n.reg .b64 state;\nmbarrier.arrive.shared.b64 state, [%0];\n}\n" ::"r"(bar) : "memory");
}
// True once the phase of parity `parity` has completed (a fresh barrier: phase 1 counts as done).
// sm_90 waits in try_wait (the warp is suspended for a while instead of spinning on issue slots
// that the MMA warps share); sm_80 has only the non-blocking test_wait.
__device__ __forceinline__ bool mbar_test(unsigned bar, unsigned parity) {
  unsigned done;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(done)
      : "r"(bar), "r"(parity)
      : "memory");
#else
  asm volatile(
      "{\n.reg .pred p;\nmbarrier.test_wait.parity.shared.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(done)
      : "r"(bar), "r"(parity)
      : "memory");
#endif
  return done != 0;
}
// Orders this thread's generic-proxy shared-memory writes before later async-proxy reads (wgmma).
__device__ __forceinline__ void fence_proxy_async() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], unsigned addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1);
template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const unsigned (&a)[4], unsigned b0,
                                                         unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <typename T> __device__ __forceinline__ T shfl_xor(T v, int mask) { return __shfl_xor_sync(0xffffffffu, v, mask); }
// Suspends the thread for about `ns` nanoseconds (sm_70+): the back-off of a polling wait.
__device__ __forceinline__ void nanosleep(unsigned ns) { asm volatile("nanosleep.u32 %0;\n" ::"r"(ns)); }
// Barrier `id` (1..15; 0 is __syncthreads) over the first `threads` threads of the block (a
// multiple of 32): lets the consumer warpgroups meet without the producers, which have exited.
__device__ __forceinline__ void named_barrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
// Two floats to an 8-byte aligned global address in one store (a plain pair of assignments may be
// split back into two by the compiler when a scalar path sits beside it).
__device__ __forceinline__ void st_global_v2(float* p, float a, float b) {
  asm volatile("st.global.v2.f32 [%0], {%1, %2};\n" ::"l"(p), "f"(a), "f"(b) : "memory");
}
// 16-byte shared-memory store and load by window address (the emulator profiles their banks).
__device__ __forceinline__ void st_shared(unsigned addr, const U4& v) {
  asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
               : "memory");
}
__device__ __forceinline__ U4 ld_shared(unsigned addr) {
  U4 v;
  asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr)
               : "memory");
  return v;
}
// Keeps the compiler from moving reads or writes of the wgmma accumulators across this point
// (CUTLASS's warpgroup_fence_operand): around the asynchronous MMAs they must stay where written.
template <int N> __device__ __forceinline__ void fence_operands(float (&acc)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(acc[i])::"memory");
}
__device__ __forceinline__ unsigned f2u(float v) { return __float_as_uint(v); }
__device__ __forceinline__ float u2f(unsigned u) { return __uint_as_float(u); }
// (a & b) | c in one LOP3 (the compiler splits it when b and c are both immediates).
__device__ __forceinline__ unsigned and_or(unsigned a, unsigned b, unsigned c) {
  unsigned d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)  // wgmma exists on sm_90a only
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
template <typename T>
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[64], unsigned long long da, unsigned long long db,
                                                 int scale_d);
// One specialisation per input type (the PTX type name is the only difference).
#define ADAPTINF_WGMMA_M64N128K16(T, PTX_TYPE)                                                            \
  template <>                                                                                           \
  __device__ __forceinline__ void wgmma_m64n128k16<T>(float (&d)[64], unsigned long long da,             \
                                                      unsigned long long db, int scale_d) {              \
    asm volatile(                                                                                       \
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                                   \
        "wgmma.mma_async.sync.aligned.m64n128k16.f32." PTX_TYPE "." PTX_TYPE " "                        \
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "                                                                                  \
        "%64, %65, p, 1, 1, 0, 0;\n}\n"                                                               \
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),                            \
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),                            \
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),                            \
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),                            \
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),                            \
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),                            \
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),                            \
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])                                  \
        : "l"(da), "l"(db), "r"(scale_d));                                                             \
  }
ADAPTINF_WGMMA_M64N128K16(__nv_bfloat16, "bf16")
ADAPTINF_WGMMA_M64N128K16(__half, "f16")
#undef ADAPTINF_WGMMA_M64N128K16
#else  // never launched: the launchers take the wgmma path only on sm_90a builds of compute capability 9.0
__device__ __forceinline__ void wgmma_fence() { __trap(); }
__device__ __forceinline__ void wgmma_commit() { __trap(); }
template <int N> __device__ __forceinline__ void wgmma_wait() { __trap(); }
template <typename T>
__device__ __forceinline__ void wgmma_m64n128k16(float (&)[64], unsigned long long, unsigned long long, int) {
  __trap();
}
#endif

#endif  // ADAPTINF_EMULATE

// Shared-memory matrix descriptor of a K-major tile in the 128-byte swizzle: rows of 64 16-bit
// values (128 B), 8-row atoms 1024 B apart (SBO), atoms 1024-byte aligned; LBO is unused by this
// layout (encoded 1). Start address bits [0, 14) hold addr >> 4; layout type 1 (bits 62-63) is the
// 128-byte swizzle. Advancing K by 16 values adds 32 bytes, i.e. 2 to the descriptor.
__device__ __forceinline__ unsigned long long sw128_desc(unsigned addr) {
  return static_cast<unsigned long long>((addr & 0x3FFFFu) >> 4) | (1ull << 16) | (static_cast<unsigned long long>(1024 >> 4) << 32) |
         (1ull << 62);
}

}  // namespace ptx
}  // namespace adaptinf
