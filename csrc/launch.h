// Host-side launchers: raw device pointers, sizes, the caller's stream and device. No torch.
// Each throws std::invalid_argument on sizes the kernels cannot take and std::runtime_error with
// the CUDA error string when a launch fails.
#pragma once
#include <cstdint>

namespace adaptinf {

enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

void launch_philox_fill(std::uintptr_t out, std::int64_t rows, std::int64_t cols, std::uint64_t seed,
                        std::uint64_t row_offset, int kind, float scale, std::uintptr_t stream, int device);

// ws (splits, batch, k) float32 = x[:, s*p_per_split : ...] @ R[row_offset + ...], unscaled.
void launch_project(std::uintptr_t x, int dtype, std::uintptr_t ws, std::int64_t batch, std::int64_t p,
                    std::int64_t k, std::int64_t ldx, std::uint64_t seed, std::uint64_t row_offset,
                    std::int64_t p_per_split, int kind, std::uintptr_t stream, int device);

// labels int64 (n,), values float32 (n,) for row-major x (n, d) and c (k, d) of one dtype; with a
// non-zero `second` (float32 (n,), pipelined kernels only) values and second get each row's raw best
// and second-best scores (‖c‖² − 2x·c or −x·c) instead.
void launch_kmeans_assign(std::uintptr_t x, std::uintptr_t c, int dtype, std::uintptr_t c_sqnorm,
                          std::uintptr_t x_sqnorm, std::uintptr_t labels, std::uintptr_t values, std::int64_t n,
                          std::int64_t k, std::int64_t d, bool cosine, std::uintptr_t stream, int device,
                          std::uintptr_t second = 0);

// best float32 (n,), arg int64 (n,) over cluster-major rows xs (n, d); tiles: 64-row tile starts; a
// non-zero `second` (float32 (n,)) also gets each row's second-best similarity (pipelined kernels only).
void launch_max_sim(std::uintptr_t xs, int dtype, std::uintptr_t cluster_start, std::uintptr_t tiles, std::int64_t n_tiles,
                    std::uintptr_t best, std::uintptr_t arg, std::int64_t n, std::int64_t d, std::uintptr_t stream,
                    int device, std::uintptr_t second = 0);

// The kernels a 16-bit launch on these rows takes: 90 (wgmma pipeline), 80 (mma.sync pipeline) or 0
// (WMMA tiles: fp32, rows not 16-byte aligned, ADAPTINF_CUDA_PIPELINE=0, GPUs before sm_80).
int pipeline_arch(int dtype, std::uintptr_t ptr, std::int64_t row_pitch, int device);

int cuda_device_count();     // 0 when no driver or no device (never throws)
int cuda_runtime_version();  // the statically linked runtime's version, e.g. 13000 (0 in the emulator)

}  // namespace adaptinf
