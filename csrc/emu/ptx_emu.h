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
// * bar.sync id, count (named barriers): the first `count` arrivals at barrier `id` release it.
// * Shared-memory bank profile (smem_profile): every ld/st.shared, cp.async and ldmatrix lane
//   address is logged per warp instruction; a request is split into phases of 128 bytes (8 lanes
//   for 16-byte accesses, 16 for 8-byte, 32 for 4-byte) and each phase costs as many wavefronts as
//   the most distinct 4-byte words that fall into one of the 32 banks. wgmma operand reads (A and
//   B through their descriptors, once per warpgroup) count their bytes at 128 per wavefront: the
//   128-byte swizzle lets the tensor cores read 8 rows' chunks from 8 distinct bank groups.
// Not modelled: timing, the async proxy (fence.proxy.async is a no-op), register-level hazards of
// touching accumulators between a wgmma and its wait.
#pragma once

#include <atomic>
#include <chrono>
#include <deque>
#include <tuple>

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

// ---- shared-memory bank profile ------------------------------------------------------------------
enum SmemKind : int { kStShared = 0, kLdShared, kCpAsync, kLdmatrix, kWgmma, kSmemKinds };
inline const char* const kSmemKindNames[kSmemKinds] = {"st.shared", "ld.shared", "cp.async", "ldmatrix", "wgmma"};
struct SmemStats {
  long long requests = 0, wavefronts = 0, bytes = 0;
};
struct SmemAccess {
  int kind;
  long long seq;  // the thread's n-th access of this kind: the same warp instruction on every lane
  unsigned addr, bytes;
  int thread;
};
inline std::atomic<bool> profiling_{false};
inline std::mutex profile_mutex_;
inline SmemStats profile_[kSmemKinds];
inline std::vector<SmemAccess> block_accesses_;
inline thread_local std::vector<SmemAccess> thread_accesses_;
inline thread_local long long access_seq_[kSmemKinds] = {};

inline void record(SmemKind kind, unsigned addr, unsigned bytes) {
  if (!profiling_.load(std::memory_order_relaxed)) return;
  thread_accesses_.push_back(SmemAccess{kind, access_seq_[kind]++, addr, bytes, linear_thread()});
}

inline void end_thread_profile() {
  for (auto& k : access_seq_) k = 0;
  if (thread_accesses_.empty()) return;
  std::lock_guard<std::mutex> lock(profile_mutex_);
  block_accesses_.insert(block_accesses_.end(), thread_accesses_.begin(), thread_accesses_.end());
  thread_accesses_.clear();
}

// Wavefronts of one warp instruction: (lane, address, bytes) of its active lanes.
inline long long wavefronts(const std::vector<SmemAccess>& lanes) {
  const unsigned width = lanes.front().bytes;
  const int per_phase = static_cast<int>(std::min(32u, 128u / std::max(width, 1u)));
  long long total = 0;
  for (int phase = 0; phase < 32 / per_phase; ++phase) {
    std::map<unsigned, std::vector<unsigned>> words;  // bank -> distinct 4-byte words
    for (const auto& a : lanes) {
      const int lane = a.thread % 32;
      if (lane / per_phase != phase) continue;
      for (unsigned w = a.addr / 4; w <= (a.addr + a.bytes - 1) / 4; ++w) {
        auto& in_bank = words[w % 32];
        if (std::find(in_bank.begin(), in_bank.end(), w) == in_bank.end()) in_bank.push_back(w);
      }
    }
    std::size_t most = 0;
    for (const auto& kv : words) most = std::max(most, kv.second.size());
    total += static_cast<long long>(most);
  }
  return total;
}

inline void end_block_profile() {
  std::lock_guard<std::mutex> lock(profile_mutex_);
  std::map<std::tuple<int, int, long long>, std::vector<SmemAccess>> requests;  // (kind, warp, seq)
  for (const auto& a : block_accesses_) requests[{a.kind, a.thread / 32, a.seq}].push_back(a);
  block_accesses_.clear();
  for (const auto& kv : requests) {
    SmemStats& st = profile_[std::get<0>(kv.first)];
    ++st.requests;
    for (const auto& a : kv.second) st.bytes += a.bytes;
    st.wavefronts += std::get<0>(kv.first) == kWgmma ? kv.second.front().bytes / 128 : wavefronts(kv.second);
  }
}

inline void smem_profile(bool on) {
  std::lock_guard<std::mutex> lock(profile_mutex_);
  for (auto& st : profile_) st = SmemStats{};
  block_accesses_.clear();
  profiling_.store(on);
}

// ---- plain shared-memory accesses, named barriers, nanosleep ------------------------------------
inline void st_shared16(unsigned addr, const void* v) {
  if (addr % 16) fail("st.shared.v4: address not 16-byte aligned");
  record(kStShared, addr, 16);
  std::memcpy(smem_at(addr, 16), v, 16);
}
inline void ld_shared16(unsigned addr, void* v) {
  if (addr % 16) fail("ld.shared.v4: address not 16-byte aligned");
  record(kLdShared, addr, 16);
  std::memcpy(v, smem_at(addr, 16), 16);
}

inline void st_global_v2(float* p, float a, float b) {
  if (reinterpret_cast<std::uintptr_t>(p) % 8) fail("st.global.v2.f32: address not 8-byte aligned");
  p[0] = a;
  p[1] = b;
}

inline void nanosleep() { std::this_thread::yield(); }

struct NamedBarrier {
  int expected = 0, arrived = 0;
  long long generation = 0;
};
inline std::mutex named_mutex_;
inline std::condition_variable named_cv_;
inline std::map<int, NamedBarrier> named_barriers_;  // by id, for the running block

inline void named_barrier(int id, int threads) {
  if (id < 1 || id > 15) fail("bar.sync: barrier id outside 1..15 (0 is __syncthreads)");
  if (threads % 32 || threads < 32 || threads > static_cast<int>(blockDim_.x * blockDim_.y * blockDim_.z))
    fail("bar.sync: thread count not a multiple of 32 within the block");
  std::unique_lock<std::mutex> lock(named_mutex_);
  NamedBarrier& b = named_barriers_[id];
  if (b.arrived == 0) b.expected = threads;
  if (b.expected != threads) fail("bar.sync: arrivals at one barrier disagree on the thread count");
  const long long gen = b.generation;
  if (++b.arrived == b.expected) {
    b.arrived = 0;
    ++b.generation;
    named_cv_.notify_all();
    return;
  }
  if (!named_cv_.wait_for(lock, std::chrono::seconds(60), [&] { return named_barriers_[id].generation != gen; }))
    fail("a named barrier was not reached by all its threads in 60 s (a deadlock)");
}

// ---- cp.async ------------------------------------------------------------------------------------
struct Copy {
  unsigned dst;
  unsigned char bytes[16];
};
inline thread_local std::vector<Copy> open_copies_;
inline thread_local std::deque<std::vector<Copy>> copy_groups_;

inline void cp_async16(unsigned dst, const void* src, int src_bytes) {
  if (dst % 16) fail("cp.async: shared address not 16-byte aligned");
  record(kCpAsync, dst, 16);
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
  {
    std::lock_guard<std::mutex> named(named_mutex_);
    named_barriers_.clear();
  }
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
  record(kLdmatrix, addr, 16);
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
  if (linear_thread() % 128 == 0) record(kWgmma, 0, (64 + 128) * 16 * 2);  // A and B of one k16 step
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
