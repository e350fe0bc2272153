#include "cuda_util.h"
#include "kmeans_assign.cu"
#include "launch.h"

namespace adaptinf {

namespace {
template <typename T>
void assign_typed(bool cosine, std::uintptr_t x, std::uintptr_t c, std::uintptr_t cn, std::uintptr_t xn,
                  std::uintptr_t labels, std::uintptr_t values, long long n, long long k, long long d,
                  const Grid& grid, std::uintptr_t stream) {
  auto kernel = cosine ? adaptinf_kmeans_assign<T, true> : adaptinf_kmeans_assign<T, false>;
  ADAPTINF_LAUNCH(kernel, grid, kThreads, stream, reinterpret_cast<const T*>(x), reinterpret_cast<const T*>(c),
                  reinterpret_cast<const float*>(cn), reinterpret_cast<const float*>(xn),
                  reinterpret_cast<long long*>(labels), reinterpret_cast<float*>(values), n, k, d);
}
template <typename T>
void assign_pipe(int arch, bool cosine, std::uintptr_t x, std::uintptr_t c, std::uintptr_t cn, std::uintptr_t xn,
                 std::uintptr_t labels, std::uintptr_t values, std::uintptr_t second, long long n, long long k,
                 long long d, std::uintptr_t stream) {
  using L = pipe::Layout<2>;
  const Grid grid{ceil_div(n, L::kBM), 1, 1};
  check_grid(grid, "kmeans_assign");
  auto kernel = cosine ? (arch == 90 ? adaptinf_kmeans_assign_pipe<T, true, 90> : adaptinf_kmeans_assign_pipe<T, true, 80>)
                       : (arch == 90 ? adaptinf_kmeans_assign_pipe<T, false, 90> : adaptinf_kmeans_assign_pipe<T, false, 80>);
  ADAPTINF_LAUNCH_SMEM(kernel, grid, L::kThreads, L::kLaunchBytes, stream, reinterpret_cast<const T*>(x),
                       reinterpret_cast<const T*>(c), reinterpret_cast<const float*>(cn),
                       reinterpret_cast<const float*>(xn), reinterpret_cast<long long*>(labels),
                       reinterpret_cast<float*>(values), reinterpret_cast<float*>(second), n, k, d);
}
}  // namespace

void launch_kmeans_assign(std::uintptr_t x, std::uintptr_t c, int dtype, std::uintptr_t c_sqnorm,
                          std::uintptr_t x_sqnorm, std::uintptr_t labels, std::uintptr_t values, std::int64_t n,
                          std::int64_t k, std::int64_t d, bool cosine, std::uintptr_t stream, int device,
                          std::uintptr_t second) {
  if (n == 0) return;
  if (k < 1 || d < 1) throw std::invalid_argument("kmeans_assign: k and d must be >= 1");
  prepare_device(device);
  const int arch = c % 16 == 0 ? pipe_arch(dtype, device, x, d) : 0;
  if (arch != 0) {
    if (dtype == kFloat16)
      assign_pipe<__half>(arch, cosine, x, c, c_sqnorm, x_sqnorm, labels, values, second, n, k, d, stream);
    else
      assign_pipe<__nv_bfloat16>(arch, cosine, x, c, c_sqnorm, x_sqnorm, labels, values, second, n, k, d, stream);
    check_launch("adaptinf_kmeans_assign_pipe launch");
    return;
  }
  if (second != 0)
    throw std::invalid_argument("kmeans_assign: second-best scores come from the pipelined kernels only "
                                "(16-bit rows with 16-byte aligned rows, sm_80 or later)");
  const Grid grid{ceil_div(n, kTileM), 1, 1};
  check_grid(grid, "kmeans_assign");
  dispatch_dtype(dtype, "kmeans_assign", [&](auto tag) {
    assign_typed<decltype(tag)>(cosine, x, c, c_sqnorm, x_sqnorm, labels, values, n, k, d, grid, stream);
  });
  check_launch("adaptinf_kmeans_assign launch");
}

}  // namespace adaptinf
