// The launchers compiled for the host emulator (module adaptinf_fast._cuda_emu): same source as _C.
#include "../dedup_launch.cu"
#include "../kmeans_launch.cu"
#include "../philox_launch.cu"
#include "../project_launch.cu"

namespace adaptinf {
int pipeline_arch(int dtype, std::uintptr_t ptr, std::int64_t row_pitch, int device) {
  return pipe_arch(dtype, device, ptr, row_pitch);
}
int cuda_device_count() { return 0; }
int cuda_runtime_version() { return 0; }
}  // namespace adaptinf
