// adaptinf_fast._C: pybind11 bindings. Argument checks live here; device code lives in kernels/.
#include <array>
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

void philox_fill(std::uintptr_t out, std::int64_t rows, std::int64_t cols, std::uint64_t seed,
                 std::uint64_t row_offset, const std::string& kind, float scale, std::uintptr_t stream,
                 int device) {
  if (rows < 0 || cols < 0) throw std::invalid_argument("philox_fill: rows and cols must be >= 0");
  if (cols > 0xffffffffLL * 4) throw std::invalid_argument("philox_fill: cols exceeds the 32-bit block counter");
  if (out == 0 && rows * cols > 0) throw std::invalid_argument("philox_fill: out is a null pointer");
  if (device < 0) throw std::invalid_argument("philox_fill: device must be >= 0");
  const int k = parse_kind(kind);
  py::gil_scoped_release release;
  adaptinf::launch_philox_fill(out, rows, cols, seed, row_offset, k, scale, stream, device);
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

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "adaptinf_fast CUDA kernels (runtime API only; raw pointers, sizes and streams from Python)";
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
  m.def("cuda_runtime_version", &adaptinf::cuda_runtime_version, "Version of the linked CUDA runtime.");
}
