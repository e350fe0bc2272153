#include "cuda_util.h"
#include "launch.h"
#include "project.cu"

namespace adaptinf {

namespace {
template <typename T, int KIND>
void project_typed(std::uintptr_t x, std::uintptr_t ws, long long batch, long long p, long long k, long long ldx,
                   std::uint64_t seed, std::uint64_t row_offset, long long p_per_split, const Grid& grid,
                   std::uintptr_t stream) {
  auto kernel = adaptinf_project<T, KIND>;
  ADAPTINF_LAUNCH(kernel, grid, kThreads, stream, reinterpret_cast<const T*>(x), reinterpret_cast<float*>(ws), batch,
                  p, k, ldx, static_cast<unsigned long long>(seed), static_cast<unsigned long long>(row_offset),
                  p_per_split);
}

template <typename T>
void project_kind(int kind, std::uintptr_t x, std::uintptr_t ws, long long batch, long long p, long long k,
                  long long ldx, std::uint64_t seed, std::uint64_t row_offset, long long p_per_split, const Grid& grid,
                  std::uintptr_t stream) {
  if (kind == kRademacher)
    project_typed<T, kRademacher>(x, ws, batch, p, k, ldx, seed, row_offset, p_per_split, grid, stream);
  else
    project_typed<T, kGaussian>(x, ws, batch, p, k, ldx, seed, row_offset, p_per_split, grid, stream);
}
template <typename T>
void project_pipe(int arch, std::uintptr_t x, std::uintptr_t ws, long long batch, long long p, long long k,
                  long long ldx, std::uint64_t seed, std::uint64_t row_offset, long long p_per_split,
                  std::uintptr_t stream) {
  using L = pipe::Layout<2>;
  static_assert(L::kLaunchBytes == kPipeSharedBytes, "cuda_util.h's shared-memory check must match pipe.cuh");
  // The producers copy x in 16-byte chunks from column split * p_per_split + 64 it + 8 c: a split
  // must start on a 16-byte boundary, or cp.async faults on a misaligned address.
  if (p_per_split % 8 != 0)
    throw std::invalid_argument("project: p_per_split must be a multiple of 8 for 16-bit inputs with 16-byte aligned "
                                "rows (the pipelined kernel copies x in 16-byte chunks); got " +
                                std::to_string(p_per_split));
  const Grid grid{ceil_div(k, pipe::kBN), ceil_div(batch, L::kBM), ceil_div(p, p_per_split)};
  check_grid(grid, "project");
  auto kernel = arch == 90 ? adaptinf_project_pipe<T, 90> : adaptinf_project_pipe<T, 80>;
  ADAPTINF_LAUNCH_SMEM(kernel, grid, L::kThreads, L::kLaunchBytes, stream, reinterpret_cast<const T*>(x),
                       reinterpret_cast<float*>(ws), batch, p, k, ldx, static_cast<unsigned long long>(seed),
                       static_cast<unsigned long long>(row_offset), p_per_split);
}
}  // namespace

void launch_project(std::uintptr_t x, int dtype, std::uintptr_t ws, std::int64_t batch, std::int64_t p,
                    std::int64_t k, std::int64_t ldx, std::uint64_t seed, std::uint64_t row_offset,
                    std::int64_t p_per_split, int kind, std::uintptr_t stream, int device) {
  if (batch == 0 || p == 0 || k == 0) return;
  if (p_per_split < 1) throw std::invalid_argument("project: p_per_split must be >= 1");
  const Grid grid{ceil_div(k, kTileN), ceil_div(batch, kTileM), ceil_div(p, p_per_split)};
  prepare_device(device);
  const int arch = kind == kRademacher ? pipe_arch(dtype, device, x, ldx) : 0;
  if (arch != 0) {
    if (dtype == kFloat16)
      project_pipe<__half>(arch, x, ws, batch, p, k, ldx, seed, row_offset, p_per_split, stream);
    else
      project_pipe<__nv_bfloat16>(arch, x, ws, batch, p, k, ldx, seed, row_offset, p_per_split, stream);
    check_launch("adaptinf_project_pipe launch");
    return;
  }
  check_grid(grid, "project");
  dispatch_dtype(dtype, "project", [&](auto tag) {
    project_kind<decltype(tag)>(kind, x, ws, batch, p, k, ldx, seed, row_offset, p_per_split, grid, stream);
  });
  check_launch("adaptinf_project launch");
}

}  // namespace adaptinf
