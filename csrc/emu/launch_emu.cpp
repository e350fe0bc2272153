// The launchers compiled for the host emulator (module adaptinf_fast._cuda_emu): same source as _C.
#include "../dedup_launch.cu"
#include "../kmeans_launch.cu"
#include "../philox_launch.cu"
#include "../project_launch.cu"

namespace adaptinf {
int cuda_device_count() { return 0; }
int cuda_runtime_version() { return 0; }
}  // namespace adaptinf
