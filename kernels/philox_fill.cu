// Fills a row-major float32 buffer with rows [row_offset, row_offset + rows) of R, times `scale`.
// One thread per (row, 32-column group): one Philox block feeds 32 contiguous Rademacher entries.
#include "philox.cuh"

extern "C" __global__ void adaptinf_philox_fill(float* __restrict__ out, long long rows, long long cols,
                                                unsigned long long seed, unsigned long long row_offset,
                                                int kind, float scale) {
  const long long groups_per_row = (cols + 31) / 32;
  const long long tid = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (tid >= rows * groups_per_row) return;
  const long long r = tid / groups_per_row;
  const long long c0 = (tid % groups_per_row) * 32;
  const int per_block = adaptinf::entries_per_block(kind);
  const unsigned long long row = row_offset + static_cast<unsigned long long>(r);
  float* dst = out + r * cols;
  unsigned int cur_block = 0xffffffffu;
  adaptinf::Philox4 blk{0u, 0u, 0u, 0u};
  for (long long c = c0; c < c0 + 32 && c < cols; ++c) {
    const unsigned int block = static_cast<unsigned int>(c / per_block);
    if (block != cur_block) {  // Gaussian groups span 8 blocks; Rademacher groups one
      blk = adaptinf::projection_block(seed, row, block);
      cur_block = block;
    }
    dst[c] = scale * adaptinf::projection_entry(blk, static_cast<unsigned int>(c), kind);
  }
}
