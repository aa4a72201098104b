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
// (the sink's fit() says how many steps fit) or the epoch ends.
//
// One pass per step over the b lanes: at absolute step t lane j writes input items[base[j] + t]
// and target items[base[j] + t + 1] and is listed as finished when t == last[j], its session's
// last step (base and last are set once per session, so the pass stores nothing per lane but
// the outputs and the branch-free finished list). The finished lanes, already in lane order,
// are refilled right after the step. Between steps every lane has a target, so a call may stop
// after any step. Cost: O(1) per event and per session; no queue, no sort.
//
// Equal to batching.session_parallel_schedule: the reference emits m steps at once (m = the
// smallest number of steps any lane has left) and then refills; refilling after every step
// instead changes nothing, as only the lanes that ran out are touched, in lane order. A lane
// given a session of length <= 1 is finished again at once and, like the reference's next
// (stepless) round, takes the next session after the other finished lanes have had theirs.
// When sessions run out the finished lanes are dropped (the batch shrinks, lane order kept).
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
    const int64_t b = std::min(batch_size, idx.size());
    base_.resize(b);
    last_.resize(b);
    reset_list_.resize(b);
    finished_.resize(b);
    again_.resize(b);
    // Step 0: lanes 0..b-1 take sessions 0..b-1 in the same way as a refill of every lane.
    for (int64_t j = 0; j < b; ++j) finished_[j] = static_cast<int32_t>(j);
    refill_lanes(b);
  }

  bool done() const { return done_; }

  template <class Sink>
  int64_t run(Sink& sink) {
    int64_t written = 0;
    while (!done_) {
      const int64_t b = static_cast<int64_t>(base_.size());
      // Every step writes >= 1 event: n_pairs_max bounds the steps (want for an unbounded sink).
      const int64_t take = sink.fit(std::max<int64_t>(idx_.n_pairs_max, 1), b, has_pending_ ? b : 0);
      if (take <= 0) break;  // sink full
      // Steps at width b: until the sink is full, the epoch ends or the batch shrinks.
      int64_t s = 0;
      while (s < take && !done_) {
        StepOut o = sink.begin_step(b, has_pending_ ? pending_keep_.data() : nullptr, has_pending_ ? b : 0);
        has_pending_ = false;
        const int64_t n_fin = step(o, b);
        ++s;
        if (n_fin > 0 && refill_lanes(n_fin)) break;  // width changed: fit again
      }
      written += s;
    }
    return written;
  }

 private:
  // Writes step t_ (b lanes) into o and moves on to the next step; lists the lanes left
  // without a target (in lane order) in finished_[0..n) and returns n.
  int64_t step(const StepOut& o, int64_t b) {
    const int64_t t = t_;
    const Item* items = items_ + t;  // lane j reads items[base[j] + t] and the next one
    const int64_t* base = base_.data();
    const int64_t* last = last_.data();
    int32_t* out_in = o.inputs;
    int32_t* out_tg = o.targets;
    int32_t* fin = finished_.data();
    int64_t n = 0;
    for (int64_t j = 0; j < b; ++j) {
      const Item* p = items + base[j];
      out_in[j] = static_cast<int32_t>(p[0]);
      out_tg[j] = static_cast<int32_t>(p[1]);
      fin[n] = static_cast<int32_t>(j);  // kept only if the lane has no target next step
      n += (last[j] == t);
    }
    // Resets: the lanes refilled since the last written step (few), then none until refilled.
    std::memset(o.reset, 0, base_.size());
    const int32_t* rl = reset_list_.data();
    for (int64_t i = 0, nr = n_reset_; i < nr; ++i) o.reset[rl[i]] = 1;
    n_reset_ = 0;
    t_ = t + 1;
    return n;
  }

  // The n lanes in finished_ (lane order) take the next unused sessions from step t_ on, pass
  // after pass (lanes given a session of length <= 1 go again in the next pass); when sessions
  // run out the rest are dropped. Returns true if lanes were dropped (the width changed; done_
  // is set when fewer than min_lanes remain).
  bool refill_lanes(int64_t n) {
    const int64_t S = idx_.size();
    const int64_t* sb = idx_.begin;
    const int64_t* se = idx_.end;
    const int64_t t = t_;
    int64_t* base = base_.data();
    int64_t* last = last_.data();
    int64_t k = next_session_;
    // Every lane refilled now starts a session at step t; the first pass lists each once (a
    // later pass only refills lanes of the pass before). The list was emptied by the last step.
    std::copy(finished_.begin(), finished_.begin() + n, reset_list_.begin());  // (no memcpy: n = 0 with null buffers)
    n_reset_ = n;
    dropped_.clear();
    while (n > 0) {
      const int32_t* fin = finished_.data();
      int32_t* again = again_.data();
      int64_t n_again = 0;
      int64_t i = 0;
      for (const int64_t n_fill = std::min(n, S - k); i < n_fill; ++i, ++k) {
        const int32_t j = fin[i];
        const int64_t len = se[k] - sb[k];
        // Steps t .. t + len - 2 read inputs sb .. se - 2 (len <= 1: last < t, no target).
        base[j] = sb[k] - t;
        last[j] = t + len - 2;
        again[n_again] = j;  // nothing to train on: finished again, in the next pass
        n_again += (len <= 1);
      }
      dropped_.insert(dropped_.end(), fin + i, fin + n);  // sessions ran out
      finished_.swap(again_);
      n = n_again;
    }
    next_session_ = k;
    const bool shrank = !dropped_.empty();
    if (shrank) compact();
    const int64_t b = static_cast<int64_t>(base_.size());
    if (b == 0 || b < min_lanes_) done_ = true;
    return shrank;
  }

  // Removes the dropped lanes (only once sessions ran out: at most once per lane, so O(b^2)
  // for the whole epoch at worst). pending_keep_ maps lanes to lanes of the last written step;
  // several shrinks before the next written step compose.
  void compact() {
    const int64_t b = static_cast<int64_t>(base_.size());
    std::vector<int32_t> to(b, 0);  // new index of lane j, -1: dropped
    for (int32_t j : dropped_) to[j] = -1;
    if (!has_pending_) pending_keep_.resize(b);
    int32_t w = 0;
    for (int64_t j = 0; j < b; ++j) {
      if (to[j] < 0) continue;
      to[j] = w;
      base_[w] = base_[j];
      last_[w] = last_[j];
      pending_keep_[w] = has_pending_ ? pending_keep_[j] : static_cast<int32_t>(j);
      ++w;
    }
    base_.resize(w);
    last_.resize(w);
    pending_keep_.resize(w);
    has_pending_ = true;
    int64_t r = 0;  // the reset list in the new lane numbers, order kept
    for (int64_t i = 0; i < n_reset_; ++i)
      if (to[reset_list_[i]] >= 0) reset_list_[r++] = to[reset_list_[i]];
    n_reset_ = r;
  }

  const SessionIndex& idx_;
  const Item* items_;
  int64_t min_lanes_;
  int64_t next_session_ = 0;
  int64_t t_ = 0;                      // steps written so far: the next step is t_
  std::vector<int64_t> base_;          // (b,) lane j reads items[base[j] + t] at step t
  std::vector<int64_t> last_;          // (b,) lane j's last step with a target
  std::vector<int32_t> reset_list_;    // (initial b,) the n_reset_ lanes whose next written step starts a session
  int64_t n_reset_ = 0;
  std::vector<int32_t> pending_keep_;  // (b,) keep list for the next written step (if has_pending_)
  std::vector<int32_t> finished_, again_;  // (initial b,) scratch lane lists of a refill
  std::vector<int32_t> dropped_;           // lanes dropped by a refill
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
