// Philox4x32-10 and the mapping (seed, global row, column) -> entry of the projection matrix R.
//
// This header is the CUDA twin of adaptinf_fast/ops/projection/reference.py, which documents the
// mapping in full; both must agree bit for bit (Rademacher) or to a few ulp (Gaussian: libm vs
// CUDA transcendental rounding). It is written to compile under nvcc (host and device) and NVRTC.
#pragma once

#if !defined(__CUDACC_RTC__)
#if !defined(__CUDACC_RTC__)  // NVRTC (the CuPy JIT path) has the math functions built in
#include <math.h>
#endif
#endif

#if defined(__CUDACC__)
#define ADAPTINF_HD __host__ __device__ __forceinline__
#else
#define ADAPTINF_HD inline
#endif

namespace adaptinf {

struct Philox4 {
  unsigned int x, y, z, w;
};

ADAPTINF_HD unsigned int mulhi32(unsigned int a, unsigned int b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<unsigned int>((static_cast<unsigned long long>(a) * b) >> 32);
#endif
}

// Philox4x32 with 10 rounds (Salmon et al., SC'11; Random123's philox4x32_R(10, ...)).
ADAPTINF_HD Philox4 philox4x32_10(Philox4 c, unsigned int k0, unsigned int k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    const unsigned int hi0 = mulhi32(0xD2511F53u, c.x), lo0 = 0xD2511F53u * c.x;
    const unsigned int hi1 = mulhi32(0xCD9E8D57u, c.z), lo1 = 0xCD9E8D57u * c.z;
    c = Philox4{hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0};
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c;
}

enum ProjectionKind : int { kRademacher = 0, kGaussian = 1 };

// Entries per Philox block: 128 Rademacher signs (one bit each) or 4 Gaussians (2 Box-Muller pairs).
ADAPTINF_HD int entries_per_block(int kind) { return kind == kRademacher ? 128 : 4; }

// The 128-bit block for (seed, global row, column block): counter = (row lo, row hi, block, 0),
// key = (seed lo, seed hi).
ADAPTINF_HD Philox4 projection_block(unsigned long long seed, unsigned long long row,
                                     unsigned int block) {
  return philox4x32_10(Philox4{static_cast<unsigned int>(row), static_cast<unsigned int>(row >> 32),
                               block, 0u},
                       static_cast<unsigned int>(seed), static_cast<unsigned int>(seed >> 32));
}

ADAPTINF_HD unsigned int block_word(const Philox4& b, unsigned int i) {
  return i == 0 ? b.x : (i == 1 ? b.y : (i == 2 ? b.z : b.w));
}

// A 32-bit word -> odd multiple of 2^-24 in (0, 1): exact in float32, never 0 (log-safe).
ADAPTINF_HD float word_to_open_unit(unsigned int w) {
  return static_cast<float>(((w >> 9) << 1) | 1u) * 5.9604644775390625e-08f;  // 2^-24
}

// Entry of the *unscaled* R at (row, col) given that column's block.
ADAPTINF_HD float projection_entry(const Philox4& b, unsigned int col, int kind) {
  if (kind == kRademacher) {
    const unsigned int bit = (block_word(b, (col >> 5) & 3u) >> (col & 31u)) & 1u;
    return bit ? -1.0f : 1.0f;
  }
  const unsigned int pair = (col >> 1) & 1u;
  const float u1 = word_to_open_unit(block_word(b, 2u * pair));
  const float u2 = word_to_open_unit(block_word(b, 2u * pair + 1u));
  const float r = sqrtf(-2.0f * logf(u1));
  const float theta = 6.283185307179586f * u2;
  return (col & 1u) ? r * sinf(theta) : r * cosf(theta);
}

}  // namespace adaptinf
