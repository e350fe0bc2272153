#include "cuda_util.h"
#include "launch.h"
#include "philox_fill.cu"

namespace adaptinf {

void launch_philox_fill(std::uintptr_t out, std::int64_t rows, std::int64_t cols, std::uint64_t seed,
                        std::uint64_t row_offset, int kind, float scale, std::uintptr_t stream, int device) {
  if (rows == 0 || cols == 0) return;
  const int threads = 256;
  const Grid grid{ceil_div(rows * ceil_div(cols, 32), threads), 1, 1};
  check_grid(grid, "philox_fill");
  prepare_device(device);
  auto kernel = adaptinf_philox_fill;
  ADAPTINF_LAUNCH(kernel, grid, threads, stream, reinterpret_cast<float*>(out), rows, cols, seed, row_offset, kind,
                  scale);
  check_launch("adaptinf_philox_fill launch");
}

}  // namespace adaptinf
