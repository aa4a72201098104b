// Session-parallel mini-batches (REFERENCE §2): the session index and a resumable schedule
// generator. Pure C++ (no Python): module.cpp validates Python buffers and calls in here with
// the GIL released.
//
// The generator mirrors fastgru4rec/batching.py::session_parallel_schedule element for
// element (that function is the oracle). Output format, per step t with b_t active lanes:
//   width[t] = b_t; step_offsets[t+1] = step_offsets[t] + b_t
//   inputs / targets int32 (b_t,), reset uint8 (b_t,)    step-major, lane order
//   keep int32 (b_t,) only at steps narrower than the step before: lane j continues lane
//   keep[j] of step t-1; keep_offsets[t+1] - keep_offsets[t] = b_t there, 0 elsewhere.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

namespace fg4r {

// Where each session of the epoch lies in the flat item array, in schedule order:
// session k (k = 0..S-1) spans items[begin[k], end[k]). begin / end view either the caller's
// offsets (no copy: the epoch call, which returns before the caller can touch them) or own_
// (a session order was given, or the stream copies them so that its background thread never
// reads Python-owned offsets). Move-only: the views follow own_'s heap buffer.
struct SessionIndex {
  const int64_t* begin = nullptr;  // (S,)
  const int64_t* end = nullptr;    // (S,)
  int64_t S = 0;
  int64_t n_pairs_max = 0;  // sum of max(len - 1, 0): an upper bound of training pairs
  int64_t max_len = 0;      // longest session
  std::vector<int64_t> own_;

  SessionIndex() = default;
  SessionIndex(SessionIndex&&) = default;
  SessionIndex& operator=(SessionIndex&&) = default;
  SessionIndex(const SessionIndex&) = delete;
  SessionIndex& operator=(const SessionIndex&) = delete;
  int64_t size() const { return S; }
};

// offsets int64 (S+1,) CSR offsets into items (n_events,); order int64 (S,) or nullptr: the
// k-th session of the epoch is session order[k] (a permutation). copy: own the offsets.
// Throws std::invalid_argument.
SessionIndex make_session_index(const int64_t* offsets, int64_t n_offsets, int64_t n_events,
                                const int64_t* order, int64_t n_order, bool copy);

// Every item id must be a valid index that fits the int32 output: 0 <= id < min(n_items, 2^31)
// (n_items < 0: no item count given). Throws std::invalid_argument naming the first bad one.
template <class Item>
void check_items(const Item* items, int64_t n, int64_t n_items) {
  const int64_t limit = (n_items < 0) ? (int64_t(1) << 31) : std::min<int64_t>(n_items, int64_t(1) << 31);
  // Fast branch-free pass first; locate the culprit only when something is wrong. With no
  // item count, "0 <= v < 2^31" is "no bit above bit 30 set": an OR reduction (vectorises).
  bool bad;
  if (limit == (int64_t(1) << 31)) {
    uint64_t acc = 0;
    for (int64_t i = 0; i < n; ++i) acc |= static_cast<uint64_t>(static_cast<int64_t>(items[i]));
    bad = (acc >> 31) != 0;
  } else {
    uint64_t mx = 0;  // unsigned: a negative id becomes huge
    for (int64_t i = 0; i < n; ++i) mx = std::max(mx, static_cast<uint64_t>(static_cast<int64_t>(items[i])));
    bad = mx >= static_cast<uint64_t>(limit);
  }
  if (!bad) return;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t v = static_cast<int64_t>(items[i]);
    if (v < 0 || v >= limit)
      throw std::invalid_argument("item index out of range at event " + std::to_string(i) + ": " +
                                  std::to_string(v) + " not in [0, " + std::to_string(limit) + ")");
  }
}

// Pointers to where one step's b lanes go.
struct StepOut {
  int32_t* inputs;
  int32_t* targets;
  uint8_t* reset;
};

// Resumable generator of one epoch's schedule. run(sink) writes steps until the sink is full
// (the sink's fit() says how many steps fit) or the epoch ends. A round of m steps (m = the
// smallest number of steps any lane has left) may be split across calls.
//
// Bookkeeping is O(1) per session, not O(lanes) per round: lane j's cursor at absolute step t
// is base[j] + t, and the step at which it runs out of targets, fin[j], files it in a bucket
// queue (ring of P buckets, bucket fin % P, lanes chained through link_). The next refill point
// is the first non-empty bucket; only the lanes found there are touched. The output costs
// O(lanes) per step anyway; nothing else does.
//
// Equal to batching.session_parallel_schedule: finished lanes take new sessions in lane order;
// a lane given a session of length <= 1 is finished again at once and, like the reference's
// next (stepless) round, takes the next session after the other finished lanes have had theirs.
//
// Sink concept:
//   int64_t fit(int64_t want, int64_t b, int64_t n_keep)  steps (<= want) of b lanes that fit
//                                                          now, the first carrying n_keep keep entries
//   StepOut begin_step(int64_t b, const int32_t* keep, int64_t n_keep)   records one step
template <class Item>
class ScheduleGen {
 public:
  // idx and items must outlive the generator. batch_size >= 1, min_lanes >= 0 (checked by caller).
  ScheduleGen(const SessionIndex& idx, const Item* items, int64_t batch_size, int64_t min_lanes)
      : idx_(idx), items_(items), min_lanes_(min_lanes) {
    // Ring size: a power of two above the longest session, so that a bucket holds one step's
    // lanes only (capped; longer sessions share buckets and are told apart by fin).
    const int64_t span = std::min<int64_t>(idx.max_len, int64_t(1) << 16) + 1;
    while (P_ < span) P_ <<= 1;
    head_.assign(P_, -1);
    const int64_t b = std::min(batch_size, idx.size());
    base_.resize(b);
    fin_.resize(b);
    link_.resize(b);
    reset_.assign(b, 0);
    // Step 0: lanes 0..b-1 take sessions 0..b-1 in the same way as a refill of every lane.
    finished_.resize(b);
    for (int64_t j = 0; j < b; ++j) finished_[j] = static_cast<int32_t>(j);
    refill_lanes();
  }

  bool done() const { return done_; }

  template <class Sink>
  int64_t run(Sink& sink) {
    int64_t written = 0;
    while (!done_) {
      const int64_t b = static_cast<int64_t>(base_.size());
      if (b == 0 || b < min_lanes_) {
        done_ = true;
        break;
      }
      const int64_t m = next_fin() - t_;  // >= 1: every lane has a target at step t_
      const int64_t take = sink.fit(m, b, has_pending_ ? b : 0);
      if (take <= 0) break;  // sink full
      emit(sink, b, take);
      written += take;
      if (take < m) break;  // sink full mid-round: the round goes on in the next call
      pop_finished();
      refill_lanes();
    }
    return written;
  }

 private:
  void file(int64_t j) {  // puts lane j in the bucket of fin_[j]
    const int64_t q = fin_[j] & (P_ - 1);
    link_[j] = head_[q];
    head_[q] = static_cast<int32_t>(j);
  }

  // The first step > t_ at which some lane runs out of targets.
  int64_t next_fin() const {
    for (int64_t d = 1; d <= P_; ++d) {
      const int64_t step = t_ + d;
      for (int32_t j = head_[step & (P_ - 1)]; j >= 0; j = link_[j])
        if (fin_[j] == step) return step;
    }
    // Only lanes of sessions longer than the ring: the smallest fin.
    int64_t f = std::numeric_limits<int64_t>::max();
    for (int64_t v : fin_) f = std::min(f, v);
    return f;
  }

  // Moves the lanes with fin == t_ out of their bucket into finished_, in lane order.
  void pop_finished() {
    finished_.clear();
    int32_t* prev = &head_[t_ & (P_ - 1)];
    for (int32_t j = *prev; j >= 0; j = *prev) {
      if (fin_[j] == t_) {
        *prev = link_[j];
        finished_.push_back(j);
      } else {
        prev = &link_[j];
      }
    }
    // Lane order: a few lanes are sorted; many (wide batches) are ordered by a branch-free
    // pass over a flag per lane, O(b) instead of O(n log n).
    const int64_t n = static_cast<int64_t>(finished_.size());
    const int64_t b = static_cast<int64_t>(base_.size());
    if (n <= 1) return;
    if (n <= 4 || n * 16 < b) {  // (a sort mispredicts its branches: only for very few lanes)
      std::sort(finished_.begin(), finished_.end());
      return;
    }
    flag_.assign(b, 0);
    for (int32_t j : finished_) flag_[j] = 1;
    int64_t w = 0;
    for (int64_t j = 0; j < b; ++j) {
      finished_[w] = static_cast<int32_t>(j);  // n entries hold the n flagged lanes; w <= n - 1 until the last
      w += flag_[j];
      if (w == n) break;
    }
  }

  template <class Sink>
  void emit(Sink& sink, int64_t b, int64_t take) {
    const Item* items = items_;
    const int64_t* base = base_.data();
    for (int64_t s = 0; s < take; ++s) {
      const bool first = (s == 0);
      const bool with_keep = first && has_pending_;
      StepOut o = sink.begin_step(b, with_keep ? pending_keep_.data() : nullptr, with_keep ? b : 0);
      const int64_t t = t_ + s;
      for (int64_t j = 0; j < b; ++j) {
        const Item* p = items + base[j] + t;  // lane j's cursor at step t
        o.inputs[j] = static_cast<int32_t>(p[0]);
        o.targets[j] = static_cast<int32_t>(p[1]);
      }
      // Only a round's first step can reset (refills happen between rounds).
      if (first)
        std::memcpy(o.reset, reset_.data(), static_cast<size_t>(b));
      else
        std::memset(o.reset, 0, static_cast<size_t>(b));
    }
    for (int32_t j : reset_list_) reset_[j] = 0;
    reset_list_.clear();
    has_pending_ = false;
    t_ += take;
  }

  // The lanes in finished_ (lane order) take the next unused sessions; when sessions run out
  // the rest are dropped (the batch shrinks, lane order kept).
  void refill_lanes() {
    const int64_t S = idx_.size();
    dropped_.clear();
    while (!finished_.empty()) {
      again_.clear();
      for (int32_t j : finished_) {
        if (next_session_ >= S) {
          dropped_.push_back(j);
          continue;
        }
        const int64_t k = next_session_++;
        const int64_t len = idx_.end[k] - idx_.begin[k];
        base_[j] = idx_.begin[k] - t_;
        fin_[j] = t_ + len - 1;
        if (!reset_[j]) reset_list_.push_back(j);
        reset_[j] = 1;
        if (len <= 1)
          again_.push_back(j);  // nothing to train on: finished again, in the next pass
        else
          file(j);
      }
      finished_.swap(again_);
    }
    if (!dropped_.empty()) compact();
  }

  // Removes the dropped lanes (only once sessions ran out: at most once per lane, so O(b^2)
  // for the whole epoch at worst). pending_keep_ maps lanes to lanes of the last written step;
  // several shrinks before the next written step compose.
  void compact() {
    const int64_t b = static_cast<int64_t>(base_.size());
    std::vector<uint8_t> gone(b, 0);
    for (int32_t j : dropped_) gone[j] = 1;
    for (int64_t j = 0; j < b; ++j)
      if (!gone[j]) head_[fin_[j] & (P_ - 1)] = -1;  // empty every bucket in use; refiled below
    if (!has_pending_) pending_keep_.resize(b);
    int64_t w = 0;
    for (int64_t j = 0; j < b; ++j) {
      if (gone[j]) continue;
      base_[w] = base_[j];
      fin_[w] = fin_[j];
      reset_[w] = reset_[j];
      pending_keep_[w] = has_pending_ ? pending_keep_[j] : static_cast<int32_t>(j);
      ++w;
    }
    base_.resize(w);
    fin_.resize(w);
    link_.resize(w);
    reset_.resize(w);
    pending_keep_.resize(w);
    has_pending_ = true;
    reset_list_.clear();
    for (int64_t j = 0; j < w; ++j) {
      file(j);
      if (reset_[j]) reset_list_.push_back(static_cast<int32_t>(j));
    }
  }

  const SessionIndex& idx_;
  const Item* items_;
  int64_t min_lanes_;
  int64_t next_session_ = 0;
  int64_t t_ = 0;  // steps written so far
  int64_t P_ = 1;  // ring size (power of two)
  std::vector<int32_t> head_;          // (P,) first lane of each bucket, -1: empty
  std::vector<int64_t> base_;          // (b,) lane j reads items[base[j] + t] at step t
  std::vector<int64_t> fin_;           // (b,) first step at which lane j has no target
  std::vector<int32_t> link_;          // (b,) next lane in the same bucket
  std::vector<uint8_t> reset_;         // (b,) 1: the lane's next written step starts a session
  std::vector<int32_t> reset_list_;    // lanes with reset_ set (cleared sparsely)
  std::vector<int32_t> pending_keep_;  // (b,) keep list for the next written step (if has_pending_)
  std::vector<int32_t> finished_, again_, dropped_;  // scratch lane lists
  std::vector<uint8_t> flag_;                        // scratch (b,)
  bool has_pending_ = false;
  bool done_ = false;
};

// free()-owned array: the epoch's event arrays are malloc'd uninitialised (no zero-fill pass)
// and handed to numpy without a copy.
struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
template <class T>
T* malloc_array(int64_t n) {
  void* p = std::malloc(static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(T));
  if (!p) throw std::bad_alloc();
  return static_cast<T*>(p);
}

// Sink of a whole epoch: event arrays sized to the exact upper bound idx.n_pairs_max, per-step
// arrays growing as steps come.
struct EpochSink {
  // max_steps: a guess of the step count, to size the per-step arrays once (they still grow).
  EpochSink(int64_t max_events, int64_t max_steps)
      : cap(max_events),
        inputs(malloc_array<int32_t>(max_events)),
        targets(malloc_array<int32_t>(max_events)),
        reset(malloc_array<uint8_t>(max_events)),
        step_offsets(1, 0),
        keep_offsets(1, 0) {
    width.reserve(max_steps);
    step_offsets.reserve(max_steps + 1);
    keep_offsets.reserve(max_steps + 1);
  }

  int64_t fit(int64_t want, int64_t, int64_t) { return want; }  // sized to the epoch's bound
  StepOut begin_step(int64_t b, const int32_t* keep_src, int64_t n_keep) {
    if (n_events + b > cap) throw std::logic_error("schedule overran its event bound (bug)");
    StepOut o{inputs.get() + n_events, targets.get() + n_events, reset.get() + n_events};
    n_events += b;
    width.push_back(static_cast<int32_t>(b));
    step_offsets.push_back(n_events);
    if (n_keep) keep.insert(keep.end(), keep_src, keep_src + n_keep);
    keep_offsets.push_back(static_cast<int64_t>(keep.size()));
    return o;
  }

  int64_t cap;
  int64_t n_events = 0;
  std::unique_ptr<int32_t, FreeDeleter> inputs, targets;
  std::unique_ptr<uint8_t, FreeDeleter> reset;
  std::vector<int32_t> width;
  std::vector<int64_t> step_offsets, keep_offsets;
  std::vector<int32_t> keep;
};

// Sink of one stream chunk: fixed caller-provided buffers. Offsets are relative to the chunk.
struct ChunkBuffers {
  int32_t* inputs;
  int32_t* targets;
  uint8_t* reset;
  int64_t event_cap;  // entries of inputs / targets / reset
  int32_t* width;
  int64_t* step_offsets;
  int64_t* keep_offsets;
  int64_t step_cap;  // entries of width; step_offsets / keep_offsets hold step_cap + 1
  int32_t* keep;
  int64_t keep_cap;
};

struct ChunkSink {
  explicit ChunkSink(const ChunkBuffers& buf) : b_(buf) {
    b_.step_offsets[0] = 0;
    b_.keep_offsets[0] = 0;
  }
  int64_t fit(int64_t want, int64_t b, int64_t n_keep) {
    if (n_keep > b_.keep_cap - n_keep_) return 0;
    return std::min({want, b_.step_cap - n_steps, (b_.event_cap - n_events) / b});
  }
  StepOut begin_step(int64_t b, const int32_t* keep_src, int64_t n_keep) {
    StepOut o{b_.inputs + n_events, b_.targets + n_events, b_.reset + n_events};
    b_.width[n_steps] = static_cast<int32_t>(b);
    if (n_keep) std::memcpy(b_.keep + n_keep_, keep_src, static_cast<size_t>(n_keep) * sizeof(int32_t));
    n_events += b;
    n_keep_ += n_keep;
    ++n_steps;
    b_.step_offsets[n_steps] = n_events;
    b_.keep_offsets[n_steps] = n_keep_;
    return o;
  }
  ChunkBuffers b_;
  int64_t n_steps = 0, n_events = 0, n_keep_ = 0;
};

}  // namespace fg4r
