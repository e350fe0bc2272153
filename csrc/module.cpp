// adaptinf_fast._C: pybind11 bindings. Argument checks live here; device code lives in kernels/.
#include <array>
#include <initializer_list>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "launch.h"
#include "philox.cuh"

namespace py = pybind11;

namespace {

int parse_kind(const std::string& kind) {
  if (kind == "rademacher") return adaptinf::kRademacher;
  if (kind == "gaussian") return adaptinf::kGaussian;
  throw std::invalid_argument("kind is '" + kind + "'; expected 'rademacher' or 'gaussian'");
}

void check_sizes(const char* op, std::initializer_list<std::int64_t> sizes) {
  for (auto v : sizes)
    if (v < 0) throw std::invalid_argument(std::string(op) + ": sizes must be >= 0");
}

void check_pointers(const char* op, bool nonempty, std::initializer_list<std::uintptr_t> ptrs) {
  if (!nonempty) return;
  for (auto p : ptrs)
    if (p == 0) throw std::invalid_argument(std::string(op) + ": null pointer");
}

void check_device(const char* op, int device) {
  if (device < 0) throw std::invalid_argument(std::string(op) + ": device must be >= 0");
}

void philox_fill(std::uintptr_t out, std::int64_t rows, std::int64_t cols, std::uint64_t seed,
                 std::uint64_t row_offset, const std::string& kind, float scale, std::uintptr_t stream,
                 int device) {
  check_sizes("philox_fill", {rows, cols});
  if (cols > 0xffffffffLL * 4) throw std::invalid_argument("philox_fill: cols exceeds the 32-bit block counter");
  check_pointers("philox_fill", rows * cols > 0, {out});
  check_device("philox_fill", device);
  const int k = parse_kind(kind);
  py::gil_scoped_release release;
  adaptinf::launch_philox_fill(out, rows, cols, seed, row_offset, k, scale, stream, device);
}

void project(std::uintptr_t x, int dtype, std::uintptr_t ws, std::int64_t batch, std::int64_t p, std::int64_t k,
             std::int64_t ldx, std::uint64_t seed, std::uint64_t row_offset, std::int64_t p_per_split,
             const std::string& kind, std::uintptr_t stream, int device) {
  check_sizes("project", {batch, p, k, ldx});
  if (k > 0xffffffffLL * 4) throw std::invalid_argument("project: k exceeds the 32-bit block counter");
  if (batch > 1 && ldx < p) throw std::invalid_argument("project: ldx must be >= p");
  check_pointers("project", batch * p * k > 0, {x, ws});
  check_device("project", device);
  const int kd = parse_kind(kind);
  py::gil_scoped_release release;
  adaptinf::launch_project(x, dtype, ws, batch, p, k, ldx, seed, row_offset, p_per_split, kd, stream, device);
}

void kmeans_assign(std::uintptr_t x, std::uintptr_t c, int dtype, std::uintptr_t c_sqnorm, std::uintptr_t x_sqnorm,
                   std::uintptr_t labels, std::uintptr_t values, std::int64_t n, std::int64_t k, std::int64_t d,
                   bool cosine, std::uintptr_t stream, int device, std::uintptr_t second) {
  check_sizes("kmeans_assign", {n, k, d});
  check_pointers("kmeans_assign", n > 0, {x, c, labels, values});
  if (!cosine) check_pointers("kmeans_assign", n > 0, {c_sqnorm, x_sqnorm});
  check_device("kmeans_assign", device);
  py::gil_scoped_release release;
  adaptinf::launch_kmeans_assign(x, c, dtype, c_sqnorm, x_sqnorm, labels, values, n, k, d, cosine, stream, device,
                                 second);
}

void max_sim(std::uintptr_t xs, int dtype, std::uintptr_t cluster_start, std::uintptr_t tiles, std::int64_t n_tiles,
             std::uintptr_t best, std::uintptr_t arg, std::int64_t n, std::int64_t d, std::uintptr_t stream,
             int device, std::uintptr_t second) {
  check_sizes("max_sim", {n_tiles, n, d});
  check_pointers("max_sim", n > 0, {xs, cluster_start, tiles, best, arg});
  check_device("max_sim", device);
  py::gil_scoped_release release;
  adaptinf::launch_max_sim(xs, dtype, cluster_start, tiles, n_tiles, best, arg, n, d, stream, device, second);
}

// Host execution of the very device functions the kernels use: lets CPU-only CI check the mapping.
std::array<std::uint32_t, 4> philox_host(std::array<std::uint32_t, 4> ctr, std::array<std::uint32_t, 2> key) {
  const adaptinf::Philox4 r = adaptinf::philox4x32_10(adaptinf::Philox4{ctr[0], ctr[1], ctr[2], ctr[3]}, key[0], key[1]);
  return {r.x, r.y, r.z, r.w};
}

std::vector<float> projection_rows_host(std::int64_t rows, std::int64_t cols, std::uint64_t seed,
                                        std::uint64_t row_offset, const std::string& kind) {
  if (rows < 0 || cols < 0 || rows * cols > (1LL << 26))
    throw std::invalid_argument("projection_rows_host is for small test sizes (rows*cols <= 2^26)");
  const int k = parse_kind(kind);
  const int per_block = adaptinf::entries_per_block(k);
  std::vector<float> out(static_cast<size_t>(rows * cols));
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < cols; ++c) {
      const auto blk = adaptinf::projection_block(seed, row_offset + r, static_cast<unsigned int>(c / per_block));
      out[static_cast<size_t>(r * cols + c)] = adaptinf::projection_entry(blk, static_cast<unsigned int>(c), k);
    }
  }
  return out;
}

void define(py::module_& m) {
  m.attr("__version__") = ADAPTINF_VERSION;
  m.def("philox_fill", &philox_fill, py::arg("out"), py::arg("rows"), py::arg("cols"), py::arg("seed"),
        py::arg("row_offset"), py::arg("kind"), py::arg("scale"), py::arg("stream"), py::arg("device"),
        "Fill a row-major float32 device buffer (rows, cols) with scale * R[row_offset + r, c].");
  m.def("philox4x32_10", &philox_host, py::arg("counter"), py::arg("key"),
        "Host run of the device Philox4x32-10 (for known-answer tests).");
  m.def("projection_rows_host", &projection_rows_host, py::arg("rows"), py::arg("cols"), py::arg("seed"),
        py::arg("row_offset"), py::arg("kind"),
        "Host run of the device mapping (seed, row, col) -> unscaled R entry, row-major (small sizes).");
  m.def("cuda_device_count", &adaptinf::cuda_device_count, "Visible CUDA devices (0 without a driver).");
  m.def("pipeline_arch", &adaptinf::pipeline_arch, py::arg("dtype"), py::arg("ptr"), py::arg("row_pitch"),
        py::arg("device"),
        "Kernels a 16-bit launch on these rows takes: 90 (wgmma pipeline), 80 (mma.sync pipeline), 0 (WMMA tiles).");
  m.def("cuda_runtime_version", &adaptinf::cuda_runtime_version, "Version of the linked CUDA runtime.");
  m.def("project", &project, py::arg("x"), py::arg("dtype"), py::arg("ws"), py::arg("batch"), py::arg("p"),
        py::arg("k"), py::arg("ldx"), py::arg("seed"), py::arg("row_offset"), py::arg("p_per_split"), py::arg("kind"),
        py::arg("stream"), py::arg("device"),
        "ws[s] = x[:, s*p_per_split:(s+1)*p_per_split] @ R[row_offset + ...] (unscaled, float32 (splits, batch, k)).");
  m.def("kmeans_assign", &kmeans_assign, py::arg("x"), py::arg("c"), py::arg("dtype"), py::arg("c_sqnorm"),
        py::arg("x_sqnorm"), py::arg("labels"), py::arg("values"), py::arg("n"), py::arg("k"), py::arg("d"),
        py::arg("cosine"), py::arg("stream"), py::arg("device"), py::arg("second") = 0,
        "Fused nearest-centroid search: labels int64 (n,), values float32 (n,) [, second-best float32 (n,)].");
  m.def("max_sim", &max_sim, py::arg("xs"), py::arg("dtype"), py::arg("cluster_start"), py::arg("tiles"), py::arg("n_tiles"),
        py::arg("best"), py::arg("arg"), py::arg("n"), py::arg("d"), py::arg("stream"), py::arg("device"),
        py::arg("second") = 0,
        "Max similarity to an earlier row of the same cluster over cluster-major rows [, second best].");
}

}  // namespace

#if defined(ADAPTINF_EMULATE)
#include "cuda_util.h"

namespace adaptinf {
void emu_selftest(const std::string& name);
}

namespace {
py::dict smem_report() {
  py::dict out;
  for (int k = 0; k < adaptinf_emu::kSmemKinds; ++k) {
    const auto& st = adaptinf_emu::profile_[k];
    out[adaptinf_emu::kSmemKindNames[k]] = py::make_tuple(st.requests, st.wavefronts, st.bytes);
  }
  return out;
}
}  // namespace

PYBIND11_MODULE(_cuda_emu, m) {
  m.doc() = "adaptinf_fast CUDA kernels run by the host emulator (tests: host pointers, one launch at a time)";
  define(m);
  m.def("selftest", &adaptinf::emu_selftest, py::arg("name"),
        "Launch a kernel that breaks a CUDA rule on purpose ('divergent_barrier', 'misaligned_wmma', "
        "'cp_async_misaligned', 'mbarrier_uninitialised', 'wgmma_unswizzled', 'named_barrier_mismatch').");
  m.def("smem_profile", &adaptinf_emu::smem_profile, py::arg("on"),
        "Reset the shared-memory bank profile and switch it on or off (launches record while on).");
  m.def("smem_report", &smem_report,
        "{kind: (warp requests, wavefronts, bytes)} of the shared-memory accesses recorded since smem_profile(True): "
        "st.shared, ld.shared, cp.async, ldmatrix (per 8-lane phase bank model), wgmma (operand bytes / 128).");
  m.def("smem_opt_ins", [] { return adaptinf::smem_opt_ins().load(); },
        "How many dynamic shared-memory opt-ins (cudaFuncSetAttribute on a GPU) the launches have made.");
}
#else
PYBIND11_MODULE(_C, m) {
  m.doc() = "adaptinf_fast CUDA kernels (runtime API only; raw pointers, sizes and streams from Python)";
  define(m);
}
#endif
