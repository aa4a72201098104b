#include "sampler.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <thread>

namespace fg4r {

namespace {

constexpr uint64_t GAMMA = 0x9E3779B97F4A7C15ULL;  // SplitMix64's increment (odd: full period)

inline uint64_t mix64(uint64_t z) {  // SplitMix64 finaliser (Stafford's variant 13)
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Below this many draws a thread costs more than it saves.
constexpr int64_t MIN_DRAWS_PER_THREAD = 1 << 16;

}  // namespace

AliasSampler::AliasSampler(const double* supports, int64_t n, double alpha, uint64_t seed, int n_threads)
    : n_(n), seed_(seed), key_(mix64(seed)) {
  if (!std::isfinite(alpha) || alpha < 0)
    throw std::invalid_argument("sample_alpha must be a finite non-negative number (got " + std::to_string(alpha) + ")");
  if (n <= 0) throw std::invalid_argument("item supports must be a non-empty 1-d array");
  n_threads_ = n_threads > 0 ? n_threads : std::max(1u, std::thread::hardware_concurrency());

  // Weights w_j = supports_j ** alpha, then scaled so that they average 1: p_j = w_j * N / sum(w).
  std::vector<double> p(n);
  double total = 0;
  for (int64_t j = 0; j < n; ++j) {
    const double s = supports[j];
    if (!(std::isfinite(s) && s >= 0))
      throw std::invalid_argument("item supports must be finite non-negative counts (item " + std::to_string(j) +
                                  " has " + std::to_string(s) + ")");
    p[j] = std::pow(s, alpha);
    total += p[j];
  }
  if (!(total > 0) || !std::isfinite(total))
    throw std::invalid_argument(total > 0 ? "supports ** alpha overflows: lower sample_alpha"
                                          : "item supports sum to zero: nothing to sample from");
  int64_t heaviest = 0;
  for (int64_t j = 0; j < n; ++j) {
    if (p[j] > p[heaviest]) heaviest = j;
    p[j] = p[j] / total * static_cast<double>(n);
  }
  const std::vector<double> scaled = p;  // p is consumed below

  // Vose: pair each under-full column (p < 1) with an over-full item that tops it up.
  std::vector<double> prob(n, 1.0);
  std::vector<int64_t> alias(n);
  for (int64_t j = 0; j < n; ++j) alias[j] = j;
  std::vector<int64_t> small, large;
  for (int64_t j = 0; j < n; ++j) (p[j] < 1.0 ? small : large).push_back(j);
  while (!small.empty() && !large.empty()) {
    const int64_t s = small.back();
    small.pop_back();
    const int64_t l = large.back();
    prob[s] = p[s];
    alias[s] = l;
    p[l] = (p[l] + p[s]) - 1.0;
    if (p[l] < 1.0) {
      large.pop_back();
      small.push_back(l);
    }
  }
  // Leftovers (rounding only) keep their whole column: prob 1, alias self (set above).
  // A zero-weight item must never be drawn, even through rounding: send its column elsewhere.
  for (int64_t s : small)
    if (scaled[s] == 0) {
      prob[s] = 0;
      alias[s] = heaviest;
    }

  table_.resize(n);
  for (int64_t j = 0; j < n; ++j) {
    if (prob[j] >= 1.0) {
      table_[j] = Entry{std::numeric_limits<uint64_t>::max(), j};  // frac == max -> alias j: still j
    } else {
      table_[j] = Entry{static_cast<uint64_t>(std::ldexp(prob[j], 64)), alias[j]};  // prob < 1: fits
    }
  }
}

template <class T>
void AliasSampler::draw_range(T* out, uint64_t first, int64_t n) const {
  const Entry* tab = table_.data();
  const unsigned __int128 N = static_cast<unsigned __int128>(n_);
  uint64_t state = key_ + first * GAMMA;  // wraps mod 2^64 by design
  for (int64_t i = 0; i < n; ++i) {
    state += GAMMA;
    const unsigned __int128 prod = static_cast<unsigned __int128>(mix64(state)) * N;
    const uint64_t col = static_cast<uint64_t>(prod >> 64);
    const uint64_t frac = static_cast<uint64_t>(prod);
    const Entry e = tab[col];
    out[i] = static_cast<T>(frac < e.thresh ? static_cast<int64_t>(col) : e.alias);
  }
}

template <class T>
void AliasSampler::draw(T* out, int64_t n) {
  if (n <= 0) return;
  const uint64_t first = position;
  const int64_t t = std::max<int64_t>(1, std::min<int64_t>(n_threads_, n / MIN_DRAWS_PER_THREAD));
  if (t == 1) {
    draw_range(out, first, n);
  } else {
    // Contiguous ranges: thread k draws counters [first + lo_k, first + hi_k).
    std::vector<std::thread> threads;
    threads.reserve(t - 1);
    try {
      for (int64_t k = 1; k < t; ++k) {
        const int64_t lo = n * k / t, hi = n * (k + 1) / t;
        threads.emplace_back([this, out, first, lo, hi] { draw_range(out + lo, first + static_cast<uint64_t>(lo), hi - lo); });
      }
    } catch (...) {  // could not start a thread: join those that run, then report
      for (auto& th : threads) th.join();
      throw;
    }
    draw_range(out, first, n / t);  // range 0 on the calling thread
    for (auto& th : threads) th.join();
  }
  position += static_cast<uint64_t>(n);
}

template void AliasSampler::draw<int32_t>(int32_t*, int64_t);
template void AliasSampler::draw<int64_t>(int64_t*, int64_t);

std::vector<double> AliasSampler::probabilities() const {
  std::vector<double> q(n_, 0.0);
  const double two64 = std::ldexp(1.0, 64);
  for (int64_t j = 0; j < n_; ++j) {
    const Entry& e = table_[j];
    const double keep = (e.thresh == std::numeric_limits<uint64_t>::max()) ? 1.0 : static_cast<double>(e.thresh) / two64;
    q[j] += keep;
    q[e.alias] += 1.0 - keep;
  }
  for (auto& v : q) v /= static_cast<double>(n_);
  return q;
}

}  // namespace fg4r
