#include "schedule.hpp"

namespace fg4r {

SessionIndex make_session_index(const int64_t* offsets, int64_t n_offsets, int64_t n_events,
                                const int64_t* order, int64_t n_order, bool copy) {
  if (n_offsets < 1)
    throw std::invalid_argument("session offsets must hold n_sessions + 1 >= 1 entries (got 0)");
  const int64_t S = n_offsets - 1;
  if (offsets[0] != 0 || offsets[S] != n_events)
    throw std::invalid_argument("session offsets must start at 0 and end at n_events=" + std::to_string(n_events) +
                                " (got " + std::to_string(offsets[0]) + " .. " + std::to_string(offsets[S]) + ")");
  // One branch-free pass: monotonicity, the pair bound and the longest session.
  bool bad = false;
  int64_t pairs = 0, max_len = 0;
  for (int64_t k = 0; k < S; ++k) {
    const int64_t len = offsets[k + 1] - offsets[k];
    bad |= len < 0;
    pairs += len > 0 ? len - 1 : 0;
    max_len = std::max(max_len, len);
  }
  if (bad)
    for (int64_t k = 0; k < S; ++k)
      if (offsets[k + 1] < offsets[k])
        throw std::invalid_argument("session offsets must be non-decreasing (first bad index " +
                                    std::to_string(k + 1) + ": " + std::to_string(offsets[k + 1]) + " < " +
                                    std::to_string(offsets[k]) + ")");
  SessionIndex idx;
  idx.S = S;
  idx.n_pairs_max = pairs;
  idx.max_len = max_len;
  if (order) {
    if (n_order != S)
      throw std::invalid_argument("session order must hold n_sessions=" + std::to_string(S) + " entries (got " +
                                  std::to_string(n_order) + ")");
    std::vector<uint8_t> seen(S, 0);
    idx.own_.resize(2 * S);
    for (int64_t k = 0; k < S; ++k) {
      const int64_t s = order[k];
      if (s < 0 || s >= S)
        throw std::invalid_argument("session order entry " + std::to_string(k) + " = " + std::to_string(s) +
                                    " is not a session index in [0, " + std::to_string(S) + ")");
      if (seen[s]) throw std::invalid_argument("session order is not a permutation: session " + std::to_string(s) + " appears twice");
      seen[s] = 1;
      idx.own_[k] = offsets[s];
      idx.own_[S + k] = offsets[s + 1];
    }
    idx.begin = idx.own_.data();
    idx.end = idx.own_.data() + S;
  } else if (copy) {
    idx.own_.assign(offsets, offsets + S + 1);
    idx.begin = idx.own_.data();
    idx.end = idx.own_.data() + 1;
  } else {
    idx.begin = offsets;
    idx.end = offsets + 1;
  }
  return idx;
}

}  // namespace fg4r
