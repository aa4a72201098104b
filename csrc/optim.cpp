#include "optim.hpp"

#include <cmath>
#include <memory>
#include <vector>

namespace fg4r {

namespace {

// Rows of a large catalog's tables are random accesses far apart (a 1M-item table of 100 floats
// is 400 MB, three tables with acc and vel): each row's cache lines are requested
// kPrefetchAhead rows before they are updated, so the memory latency overlaps the arithmetic.
// Measured: 1.34 -> 0.56 ms for 2112 rows of 100 floats in 760,000-row tables, together with
// the vectorized 1/sqrt (-fno-math-errno, CMakeLists.txt).
constexpr int64_t kPrefetchAhead = 8;

template <class T>
inline void prefetch_row(const T* row, int64_t width) {
#if defined(__GNUC__) || defined(__clang__)
  constexpr int64_t kLine = 64 / static_cast<int64_t>(sizeof(T));
  for (int64_t h = 0; h < width; h += kLine) __builtin_prefetch(row + h, 1);
#else
  (void)row;
  (void)width;
#endif
}

// The id's bits mixed by MurmurHash3's 64-bit finaliser (every input bit moves every output bit),
// so the top bits taken as the slot spread any id pattern: a bare multiplicative hash maps
// strided ids (multiples of a constant) onto few slots and the linear probing runs long.
inline uint64_t mix_id(int64_t id) {
  uint64_t x = static_cast<uint64_t>(id);
  x ^= x >> 33;
  x *= 0xFF51AFD7ED558CCDull;
  x ^= x >> 33;
  x *= 0xC4CEB9FE1A85EC53ull;
  x ^= x >> 33;
  return x;
}

}  // namespace

template <class T>
void adagrad_momentum_rows(T* table, T* acc, T* vel, const int64_t* rows, int64_t n_rows,
                           const T* grad, int64_t width, T lr, T momentum, T eps) {
  for (int64_t u = 0; u < n_rows; ++u) {
    if (u + kPrefetchAhead < n_rows) {
      const int64_t ahead = rows[u + kPrefetchAhead] * width;
      prefetch_row(table + ahead, width);
      prefetch_row(acc + ahead, width);
      if (vel != nullptr) prefetch_row(vel + ahead, width);
    }
    const int64_t off = rows[u] * width;
    const T* g = grad + u * width;
    T* a = acc + off;
    T* p = table + off;
    if (vel != nullptr) {
      T* v = vel + off;
      for (int64_t h = 0; h < width; ++h) {
        const T acc_h = a[h] + g[h] * g[h];
        a[h] = acc_h;
        // g · (1 / sqrt(acc + eps)): torch's rsqrt on the CPU
        const T step = g[h] * (T(1) / std::sqrt(acc_h + eps));
        const T v_h = v[h] * momentum - lr * step;
        v[h] = v_h;
        p[h] += v_h;
      }
    } else {
      for (int64_t h = 0; h < width; ++h) {
        const T acc_h = a[h] + g[h] * g[h];
        a[h] = acc_h;
        p[h] -= lr * (g[h] * (T(1) / std::sqrt(acc_h + eps)));
      }
    }
  }
}

template void adagrad_momentum_rows<float>(float*, float*, float*, const int64_t*, int64_t,
                                           const float*, int64_t, float, float, float);
template void adagrad_momentum_rows<double>(double*, double*, double*, const int64_t*, int64_t,
                                            const double*, int64_t, double, double, double);

template <class T>
void adagrad_momentum_scatter(T* table, T* acc, T* vel, const int64_t* ids, int64_t n_ids,
                              const T* grad, int64_t width, T lr, T momentum, T eps) {
  if (n_ids <= 0) return;
  // Hash of id -> its unique index u, at most half full (capacity a power of two >= 2 n_ids):
  // a training step's 2,112 ids take a 32 KiB key table and a few microseconds.
  int bits = 4;
  while ((int64_t{1} << bits) < 2 * n_ids) ++bits;
  const int64_t cap = int64_t{1} << bits;
  const uint64_t mask = static_cast<uint64_t>(cap - 1);
  std::vector<int64_t> keys(static_cast<size_t>(cap), -1);
  std::vector<int64_t> slot_u(static_cast<size_t>(cap));
  std::vector<int64_t> unique_ids;
  unique_ids.reserve(static_cast<size_t>(n_ids));
  // the summed rows (n_unique, width): the first occurrence copied, later ones added (so a row
  // seen once keeps its gradient bit for bit); uninitialised storage, every row is written
  std::unique_ptr<T[]> sums(new T[static_cast<size_t>(n_ids * width)]);
  for (int64_t i = 0; i < n_ids; ++i) {
    const int64_t id = ids[i];
    uint64_t s = mix_id(id) >> (64 - bits);
    while (keys[s] != -1 && keys[s] != id) s = (s + 1) & mask;
    const T* g = grad + i * width;
    if (keys[s] == -1) {
      keys[s] = id;
      const int64_t u = static_cast<int64_t>(unique_ids.size());
      slot_u[s] = u;
      unique_ids.push_back(id);
      T* dst = sums.get() + u * width;
      for (int64_t h = 0; h < width; ++h) dst[h] = g[h];
    } else {
      T* dst = sums.get() + slot_u[s] * width;
      for (int64_t h = 0; h < width; ++h) dst[h] += g[h];
    }
  }
  adagrad_momentum_rows<T>(table, acc, vel, unique_ids.data(),
                           static_cast<int64_t>(unique_ids.size()), sums.get(), width, lr,
                           momentum, eps);
}

template void adagrad_momentum_scatter<float>(float*, float*, float*, const int64_t*, int64_t,
                                              const float*, int64_t, float, float, float);
template void adagrad_momentum_scatter<double>(double*, double*, double*, const int64_t*,
                                               int64_t, const double*, int64_t, double, double,
                                               double);

}  // namespace fg4r
