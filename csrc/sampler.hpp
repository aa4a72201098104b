// Negative sampler (REFERENCE §4): item j with probability ∝ supports_j ** alpha.
//
// Walker/Vose alias table: one 64-bit random number per draw, O(1). The random numbers come
// from a counter-based generator: draw number c (counting from 0 over the sampler's life)
// uses x_c = mix64(key + (c + 1) * GAMMA), i.e. SplitMix64 evaluated at position c. Any draw is
// computable on its own, so a multi-threaded fill (each thread takes a contiguous range of
// counters) gives exactly the same ids whatever the number of threads.
//
// From x: col = floor(x * N / 2^64) (the high word of the 128-bit product) and the low word
// frac is the position inside the column, uniform on [0, 2^64); the draw is col when
// frac < thresh[col], else alias[col].
#pragma once

#include <cstdint>
#include <vector>

namespace fg4r {

class AliasSampler {
 public:
  // supports float64 (n,), finite and >= 0; alpha finite and >= 0 (0 ** 0 = 1, as numpy).
  // n_threads <= 0: all hardware threads. Throws std::invalid_argument.
  AliasSampler(const double* supports, int64_t n, double alpha, uint64_t seed, int n_threads);

  // Writes the next n draws to out (int32 or int64) and advances the counter by n.
  // Runs without the GIL; threads split [position, position + n) into contiguous ranges.
  template <class T>
  void draw(T* out, int64_t n);

  // The probability the table gives item j: (thresh_j + sum of the columns aliased to j) / N.
  std::vector<double> probabilities() const;

  int64_t n_items() const { return n_; }
  int n_threads() const { return n_threads_; }
  uint64_t seed() const { return seed_; }
  uint64_t position = 0;  // draws made so far (the counter of the next draw)

 private:
  struct Entry {
    uint64_t thresh;  // keep the column when frac < thresh (prob * 2^64; UINT64_MAX: always)
    int64_t alias;    // the other item of the column
  };
  template <class T>
  void draw_range(T* out, uint64_t first, int64_t n) const;

  std::vector<Entry> table_;  // (N,) 16 bytes per item
  int64_t n_;
  uint64_t seed_, key_;
  int n_threads_;
};

}  // namespace fg4r
