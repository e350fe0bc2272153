// Host-side launchers: raw device pointers, sizes, the caller's stream and device. No torch.
#pragma once
#include <cstdint>

namespace adaptinf {

// Throws std::runtime_error with the CUDA error string on failure.
void launch_philox_fill(std::uintptr_t out, std::int64_t rows, std::int64_t cols, std::uint64_t seed,
                        std::uint64_t row_offset, int kind, float scale, std::uintptr_t stream,
                        int device);

int cuda_device_count();      // 0 when no driver or no device (never throws)
int cuda_runtime_version();   // the statically linked runtime's version, e.g. 13000

}  // namespace adaptinf
