// Host semantics of the PTX that kernels/ptx.cuh wraps (included at the end of cuda_emu.h).
//
// * Dynamic shared memory is one buffer per block, 1024-byte aligned at window address 0 and
//   filled with 0xFF bytes (16-bit NaNs), so a read of a byte nobody wrote shows in results.
// * cp.async reads its source at issue and writes shared memory only at the cp.async.wait that
//   covers its group: a missing wait leaves the NaN filler (or stale data) in the tile.
// * mbarrier: a phase completes after `count` arrivals; test_wait.parity(P) is true once the phase
//   of parity P has completed (a fresh barrier's "previous" phase, parity 1, counts as done). A
//   wait that never completes fails after 60 s instead of hanging.
// * ldmatrix / mma.sync / shfl are warp collectives: each lane posts its registers, the warp meets
//   at a barrier, and every lane computes its own outputs from the documented fragment layouts
//   (m8n8 b16 matrices; m16n8k16 A row-major, B column-major, f32 C/D).
// * wgmma.mma_async is recorded at issue and carried out at the wgmma.wait_group that retires its
//   group, reading shared memory through its descriptors then (a stage released too early is read
//   after the producer refilled it). Only K-major operands in the 128-byte swizzle are modelled:
//   element (row, k) sits at start + (row / 8) * SBO + (row % 8) * 128 + 2k with address bits
//   [4, 7) XORed by bits [7, 10). D is the m64nN f32 fragment: lane l of warp w holds rows
//   16w + l/4 (+ 8) and columns 8j + 2(l % 4) (+ 1).
// Not modelled: timing, the async proxy (fence.proxy.async is a no-op), register-level hazards of
// touching accumulators between a wgmma and its wait.
#pragma once

#include <chrono>
#include <deque>

inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const unsigned long long v = (static_cast<unsigned long long>(y) << 32) | x;
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) {
    const unsigned sel = (s >> (4 * i)) & 0xFu;
    if (sel & 8u) ::adaptinf_emu::fail("__byte_perm: sign-replicating selectors are not emulated");
    r |= static_cast<unsigned>((v >> (8 * sel)) & 0xFFu) << (8 * i);
  }
  return r;
}

namespace adaptinf_emu {

inline unsigned char* dynamic_smem() {
  if (dyn_base_ == nullptr) fail("dynamic shared memory used outside a launch");
  return dyn_base_;
}

inline unsigned smem_addr(const void* p) {
  const auto* c = static_cast<const unsigned char*>(p);
  if (dyn_base_ == nullptr || c < dyn_base_ || c > dyn_base_ + dyn_bytes_)
    fail("a shared-window address of memory outside the launch's dynamic shared memory");
  return static_cast<unsigned>(c - dyn_base_);
}

inline unsigned char* smem_at(unsigned long long addr, std::size_t bytes) {
  if (addr + bytes > dyn_bytes_) fail("shared-memory access past the launch's dynamic shared memory");
  return dyn_base_ + addr;
}

inline int lane_id() { return linear_thread() % 32; }
inline void warp_sync() { warp_barriers_[linear_thread() / 32]->wait(); }

// ---- cp.async ------------------------------------------------------------------------------------
struct Copy {
  unsigned dst;
  unsigned char bytes[16];
};
inline thread_local std::vector<Copy> open_copies_;
inline thread_local std::deque<std::vector<Copy>> copy_groups_;

inline void cp_async16(unsigned dst, const void* src, int src_bytes) {
  if (dst % 16) fail("cp.async: shared address not 16-byte aligned");
  if (src_bytes < 0 || src_bytes > 16) fail("cp.async: src-size outside [0, 16]");
  if (src_bytes > 0 && reinterpret_cast<std::uintptr_t>(src) % 16) fail("cp.async: global address not 16-byte aligned");
  smem_at(dst, 16);
  Copy c{dst, {}};
  if (src_bytes > 0) std::memcpy(c.bytes, src, static_cast<std::size_t>(src_bytes));
  open_copies_.push_back(c);
}

inline void cp_async_commit() {
  copy_groups_.push_back(std::move(open_copies_));
  open_copies_.clear();
}

inline void cp_async_wait_all() {
  cp_async_commit();
  for (auto& group : copy_groups_)
    for (auto& c : group) std::memcpy(smem_at(c.dst, 16), c.bytes, 16);
  copy_groups_.clear();
}

// ---- mbarrier ------------------------------------------------------------------------------------
struct MBarrier {
  unsigned expected, pending, phases;
};
inline std::mutex& mbar_mutex() {
  static std::mutex m;
  return m;
}
inline std::map<unsigned, MBarrier>& mbars() {
  static std::map<unsigned, MBarrier> m;
  return m;
}
inline MBarrier& mbar(unsigned bar) {
  auto it = mbars().find(bar);
  if (it == mbars().end()) fail("mbarrier used before mbarrier.init");
  return it->second;
}

inline void mbar_init(unsigned bar, unsigned count) {
  if (bar % 8) fail("mbarrier: address not 8-byte aligned");
  if (count == 0) fail("mbarrier.init with a zero count");
  smem_at(bar, 8);
  std::lock_guard<std::mutex> lock(mbar_mutex());
  mbars()[bar] = MBarrier{count, count, 0};
}

inline void mbar_arrive(unsigned bar) {
  std::lock_guard<std::mutex> lock(mbar_mutex());
  MBarrier& b = mbar(bar);
  if (--b.pending == 0) {
    ++b.phases;
    b.pending = b.expected;
  }
}

inline thread_local std::chrono::steady_clock::time_point wait_since_{};
inline thread_local bool waiting_ = false;

inline bool mbar_test(unsigned bar, unsigned parity) {
  bool done;
  {
    std::lock_guard<std::mutex> lock(mbar_mutex());
    done = (mbar(bar).phases & 1u) != (parity & 1u);
  }
  const auto now = std::chrono::steady_clock::now();
  if (done) {
    waiting_ = false;
  } else {
    if (!waiting_) {
      waiting_ = true;
      wait_since_ = now;
    } else if (now - wait_since_ > std::chrono::seconds(60)) {
      fail("an mbarrier wait did not complete in 60 s (a deadlock)");
    }
    std::this_thread::yield();
  }
  return done;
}

// ---- warp collectives ----------------------------------------------------------------------------
struct WarpSlots {
  unsigned u[32][6];
  unsigned long long ull[32];
};
inline std::vector<WarpSlots>& warp_slots() {
  static std::vector<WarpSlots> slots;
  return slots;
}
inline WarpSlots& my_slots() { return warp_slots()[linear_thread() / 32]; }

inline void reset_block_state() {
  std::lock_guard<std::mutex> lock(mbar_mutex());
  mbars().clear();
  warp_slots().assign(warp_barriers_.size(), WarpSlots{});
}

template <class T>
float half_value(unsigned reg, int upper) {
  const std::uint16_t h = static_cast<std::uint16_t>(upper ? reg >> 16 : reg & 0xFFFFu);
  T v;
  std::memcpy(&v, &h, 2);
  if constexpr (std::is_same<T, __half>::value) return __half2float(v);
  else return __bfloat162float(v);
}

// ldmatrix.m8n8.x4.b16: lane i gives the address of row i % 8 of matrix i / 8; register j of lane
// l receives elements 2 (l % 4), +1 of row l / 4 of matrix j.
inline void ldmatrix_x4(unsigned (&r)[4], unsigned addr) {
  if (addr % 16) fail("ldmatrix: row address not 16-byte aligned");
  WarpSlots& s = my_slots();
  const int l = lane_id();
  s.u[l][0] = addr;
  warp_sync();
  for (int j = 0; j < 4; ++j) std::memcpy(&r[j], smem_at(s.u[j * 8 + l / 4][0] + 4 * (l % 4), 4), 4);
  warp_sync();
}

// mma.sync.m16n8k16.row.col.f32: with g = l / 4, t = l % 4, lane l holds A rows g, g + 8 at
// columns 2t, 2t + 1 (a0, a1) and 2t + 8, 2t + 9 (a2, a3); B rows 2t, 2t + 1 (b0) and 2t + 8, 2t + 9
// (b1) of column g; D (g, 2t), (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1).
template <class T>
void mma_16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  WarpSlots& s = my_slots();
  const int l = lane_id();
  for (int i = 0; i < 4; ++i) s.u[l][i] = a[i];
  s.u[l][4] = b0;
  s.u[l][5] = b1;
  warp_sync();
  auto A = [&](int r, int k) { return half_value<T>(s.u[(r % 8) * 4 + (k % 8) / 2][r / 8 + 2 * (k / 8)], k % 2); };
  auto B = [&](int k, int n) { return half_value<T>(s.u[n * 4 + (k % 8) / 2][4 + k / 8], k % 2); };
  const int g = l / 4, t = l % 4;
  float out[4];
  for (int e = 0; e < 4; ++e) {
    const int row = g + 8 * (e / 2), col = 2 * t + e % 2;
    float acc = d[e];
    for (int k = 0; k < 16; ++k) acc += A(row, k) * B(k, col);
    out[e] = acc;
  }
  warp_sync();
  for (int e = 0; e < 4; ++e) d[e] = out[e];
}

template <class T>
T shfl_xor(T v, int mask) {
  static_assert(sizeof(T) <= 8, "shfl of at most 8 bytes");
  WarpSlots& s = my_slots();
  const int l = lane_id();
  std::memcpy(&s.ull[l], &v, sizeof(T));
  warp_sync();
  T out;
  std::memcpy(&out, &s.ull[l ^ mask], sizeof(T));
  warp_sync();
  return out;
}

// ---- wgmma ---------------------------------------------------------------------------------------
struct Wgmma {
  unsigned long long da, db;
  float* d;
  int scale_d;
  bool bf16;
};
inline thread_local std::vector<Wgmma> open_mmas_;
inline thread_local std::deque<std::vector<Wgmma>> mma_groups_;

inline void reset_thread_state() {
  open_copies_.clear();
  copy_groups_.clear();
  open_mmas_.clear();
  mma_groups_.clear();
  waiting_ = false;
}

inline float sw128_operand(unsigned long long desc, int row, int k, bool bf16) {
  if ((desc >> 62) != 1) fail("wgmma: only K-major operands in the 128-byte swizzle are emulated");
  if (((desc >> 49) & 7u) != 0) fail("wgmma: a non-zero matrix base offset is not emulated");
  const unsigned long long start = (desc & 0x3FFFu) << 4, sbo = ((desc >> 32) & 0x3FFFu) << 4;
  unsigned long long a = start + static_cast<unsigned long long>(row / 8) * sbo + (row % 8) * 128 + 2 * k;
  a ^= ((a >> 7) & 7u) << 4;
  unsigned reg = 0;
  std::memcpy(&reg, smem_at(a, 2), 2);
  return bf16 ? half_value<__nv_bfloat16>(reg, 0) : half_value<__half>(reg, 0);
}

inline void run(const Wgmma& m) {
  const int wl = linear_thread() % 128, warp = wl / 32, l = wl % 32;
  for (int i = 0; i < 64; ++i) {
    const int row = 16 * warp + l / 4 + 8 * ((i >> 1) & 1), col = 8 * (i >> 2) + 2 * (l % 4) + (i & 1);
    float acc = m.scale_d ? m.d[i] : 0.0f;
    for (int k = 0; k < 16; ++k) acc += sw128_operand(m.da, row, k, m.bf16) * sw128_operand(m.db, col, k, m.bf16);
    m.d[i] = acc;
  }
}

template <class T>
void wgmma_m64n128k16(float (&d)[64], unsigned long long da, unsigned long long db, int scale_d) {
  open_mmas_.push_back(Wgmma{da, db, d, scale_d, std::is_same<T, __nv_bfloat16>::value});
}

inline void wgmma_commit() {
  mma_groups_.push_back(std::move(open_mmas_));
  open_mmas_.clear();
}

inline void wgmma_wait(int pending) {
  while (static_cast<int>(mma_groups_.size()) > pending) {
    for (const auto& m : mma_groups_.front()) run(m);
    mma_groups_.pop_front();
  }
}

}  // namespace adaptinf_emu
