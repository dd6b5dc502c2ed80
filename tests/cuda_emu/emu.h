// A small CPU emulation of the CUDA features stats_cuda.cu uses, so that its kernels run (slowly)
// on a machine without a GPU: every block runs as blockDim std::threads (blocks one after another),
// __syncthreads is a block barrier, __shfl_xor_sync a warp barrier with an exchange slot, __shared__
// is function-static storage, and half / bfloat16 are stored as bits with round-to-nearest-even
// conversions. tests/test_cuda_emulated.py rewrites the launch syntax (kernel<<<...>>>(args) ->
// ::emu::Launcher(kernel, ...)(args)) and the dynamic shared memory declaration before compiling.
// Test tool only: it checks the kernels' logic (indexing, reductions, orders), not their speed.
#pragma once

#include <barrier>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <math.h>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

using std::fma;

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

enum cudaError_t { cudaSuccess = 0 };
using cudaStream_t = struct emu_stream*;
inline cudaError_t cudaGetLastError() { return cudaSuccess; }

// ---- half and bfloat16 ----

struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};

inline uint32_t emu_f2u(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float emu_u2f(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float __bfloat162float(__nv_bfloat16 h) { return emu_u2f(static_cast<uint32_t>(h.bits) << 16); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u = emu_f2u(f);
  if (std::isnan(f)) return {static_cast<uint16_t>(0x7FC0)};
  u += 0x7FFF + ((u >> 16) & 1);
  return {static_cast<uint16_t>(u >> 16)};
}
inline float __half2float(__half h) {
  _Float16 v;
  std::memcpy(&v, &h.bits, 2);
  return static_cast<float>(v);
}
inline __half __float2half_rn(float f) {
  const _Float16 v = static_cast<_Float16>(f);  // IEEE round to nearest even
  __half h;
  std::memcpy(&h.bits, &v, 2);
  return h;
}

// ---- threads, blocks, warps ----

namespace emu {

struct Warp {
  explicit Warp(int n) : bar(n) {}
  std::barrier<> bar;
  double slots[32] = {};
};

struct Block {
  explicit Block(int n) : sync(n), done(n) {
    for (int w = 0; w * 32 < n; ++w) warps.push_back(std::make_unique<Warp>(std::min(32, n - w * 32)));
  }
  std::barrier<> sync, done;
  std::vector<std::unique_ptr<Warp>> warps;
  std::vector<unsigned char> smem;
};

struct ThreadState {
  dim3 thread, block, block_dim, grid_dim;
  Block* blk = nullptr;
};
inline thread_local ThreadState tls;

inline unsigned char* dynamic_smem() { return tls.blk->smem.data(); }

// Threads are kept between launches (creating 256 threads per launch dominates otherwise).
class Pool {
 public:
  static Pool& get() {
    static Pool* pool = new Pool();  // never destroyed: workers are detached
    return *pool;
  }
  void run(int n, const std::function<void(int)>& job) {
    std::unique_lock<std::mutex> lock(m_);
    while (static_cast<int>(workers_) < n) {
      std::thread(&Pool::work, this, static_cast<int>(workers_++)).detach();
    }
    job_ = &job;
    participants_ = n;
    remaining_ = n;
    ++generation_;
    start_.notify_all();
    done_.wait(lock, [&] { return remaining_ == 0; });
  }

 private:
  void work(int id) {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(m_);
    for (;;) {
      start_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (id >= participants_) continue;
      const std::function<void(int)>* job = job_;
      lock.unlock();
      (*job)(id);
      lock.lock();
      if (--remaining_ == 0) done_.notify_all();
    }
  }
  std::mutex m_;
  std::condition_variable start_, done_;
  const std::function<void(int)>* job_ = nullptr;
  size_t workers_ = 0;
  int participants_ = 0, remaining_ = 0;
  uint64_t generation_ = 0;
};

struct Launcher {
  Launcher(dim3 grid, dim3 block, size_t smem = 0, cudaStream_t = nullptr) : grid_(grid), block_(block), smem_(smem) {}

  template <typename... KArgs, typename... Args>
  void run(void (*kernel)(KArgs...), Args&&... args) {
    const int n = static_cast<int>(block_.x * block_.y * block_.z);
    Block blk(n);
    blk.smem.assign(smem_ + 16, 0);
    const std::function<void(int)> job = [&](int t) {
      tls.thread = dim3(t, 0, 0);
      tls.block_dim = block_;
      tls.grid_dim = grid_;
      tls.blk = &blk;
      for (unsigned z = 0; z < grid_.z; ++z)
        for (unsigned y = 0; y < grid_.y; ++y)
          for (unsigned x = 0; x < grid_.x; ++x) {
            tls.block = dim3(x, y, z);
            kernel(KArgs(args)...);
            blk.done.arrive_and_wait();
          }
    };
    Pool::get().run(n, job);
  }
  dim3 grid_, block_;
  size_t smem_;
};

// ::emu::Launcher(kernel, cfg...)(args...): binds the kernel pointer first.
template <typename... KArgs>
struct Bound {
  void (*kernel)(KArgs...);
  Launcher l;
  template <typename... Args>
  void operator()(Args&&... args) {
    l.run(kernel, std::forward<Args>(args)...);
  }
};

}  // namespace emu

#define threadIdx (::emu::tls.thread)
#define blockIdx (::emu::tls.block)
#define blockDim (::emu::tls.block_dim)
#define gridDim (::emu::tls.grid_dim)

inline void __syncthreads() { ::emu::tls.blk->sync.arrive_and_wait(); }

template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int lane_mask, int = 32) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  ::emu::Warp& w = *::emu::tls.blk->warps[threadIdx.x / 32];
  w.slots[lane] = static_cast<double>(v);
  w.bar.arrive_and_wait();
  const T r = static_cast<T>(w.slots[lane ^ lane_mask]);
  w.bar.arrive_and_wait();
  return r;
}

namespace emu {
template <typename... KArgs, typename... Cfg>
Bound<KArgs...> launch(void (*kernel)(KArgs...), Cfg... cfg) {
  return Bound<KArgs...>{kernel, Launcher(cfg...)};
}
}  // namespace emu
