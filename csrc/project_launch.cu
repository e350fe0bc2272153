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
}  // namespace

void launch_project(std::uintptr_t x, int dtype, std::uintptr_t ws, std::int64_t batch, std::int64_t p,
                    std::int64_t k, std::int64_t ldx, std::uint64_t seed, std::uint64_t row_offset,
                    std::int64_t p_per_split, int kind, std::uintptr_t stream, int device) {
  if (batch == 0 || p == 0 || k == 0) return;
  if (p_per_split < 1) throw std::invalid_argument("project: p_per_split must be >= 1");
  const Grid grid{ceil_div(k, kTileN), ceil_div(batch, kTileM), ceil_div(p, p_per_split)};
  check_grid(grid, "project");
  prepare_device(device);
  dispatch_dtype(dtype, "project", [&](auto tag) {
    project_kind<decltype(tag)>(kind, x, ws, batch, p, k, ldx, seed, row_offset, p_per_split, grid, stream);
  });
  check_launch("adaptinf_project launch");
}

}  // namespace adaptinf
