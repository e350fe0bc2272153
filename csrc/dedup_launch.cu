#include "cuda_util.h"
#include "launch.h"
#include "max_sim.cu"

namespace adaptinf {

void launch_max_sim(std::uintptr_t xs, int dtype, std::uintptr_t cluster_start, std::uintptr_t tiles, std::int64_t n_tiles,
                    std::uintptr_t best, std::uintptr_t arg, std::int64_t n, std::int64_t d, std::uintptr_t stream,
                    int device, std::uintptr_t second) {
  if (n == 0 || n_tiles == 0) return;
  if (d < 1) throw std::invalid_argument("max_sim: d must be >= 1");
  const Grid grid{n_tiles, 1, 1};
  check_grid(grid, "max_sim");
  prepare_device(device);
  const int arch = pipe_arch(dtype, device, xs, d);
  if (arch != 0) {
    using L = pipe::Layout<1>;
    dispatch_dtype(dtype, "max_sim", [&](auto tag) {
      using T = decltype(tag);
      if constexpr (!is_same_v<T, float>) {
        auto kernel = arch == 90 ? adaptinf_max_sim_pipe<T, 90> : adaptinf_max_sim_pipe<T, 80>;
        ADAPTINF_LAUNCH_SMEM(kernel, grid, L::kThreads, L::kLaunchBytes, stream, reinterpret_cast<const T*>(xs),
                             reinterpret_cast<const long long*>(cluster_start),
                             reinterpret_cast<const long long*>(tiles), reinterpret_cast<float*>(best),
                             reinterpret_cast<long long*>(arg), reinterpret_cast<float*>(second), n, d);
      }
    });
    check_launch("adaptinf_max_sim_pipe launch");
    return;
  }
  if (second != 0)
    throw std::invalid_argument("max_sim: second-best similarities come from the pipelined kernels only "
                                "(16-bit rows with 16-byte aligned rows, sm_80 or later)");
  dispatch_dtype(dtype, "max_sim", [&](auto tag) {
    using T = decltype(tag);
    auto kernel = adaptinf_max_sim<T>;
    ADAPTINF_LAUNCH(kernel, grid, kThreads, stream, reinterpret_cast<const T*>(xs),
                    reinterpret_cast<const long long*>(cluster_start), reinterpret_cast<const long long*>(tiles),
                    reinterpret_cast<float*>(best), reinterpret_cast<long long*>(arg), n, d);
  });
  check_launch("adaptinf_max_sim launch");
}

}  // namespace adaptinf
