// Chunked schedule stream: a background thread writes K steps at a time into a ring of
// caller-provided slots (e.g. pinned host memory) ahead of the training loop.
//
// Slot life: FREE -> (producer) FILLING -> READY -> (consumer acquire) HELD -> (release) FREE.
// The producer fills slots in ring order and the consumer acquires them in the same order, so
// the READY slots always form a run starting at the consumer's next slot. Memory is bounded by
// the slots (the caller's buffers): nothing else grows with the epoch except the session index.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "schedule.hpp"

namespace fg4r {

// Type-erased schedule generator (items are int32 or int64).
struct ChunkSource {
  virtual ~ChunkSource() = default;
  virtual int64_t fill(ChunkSink& sink) = 0;  // steps written; 0 only once the epoch is over
  virtual bool done() const = 0;
};

template <class Item>
struct GenSource : ChunkSource {
  // The index is owned here; items must outlive the source (the binding holds the array).
  GenSource(SessionIndex idx, const Item* items, int64_t batch_size, int64_t min_lanes)
      : idx_(std::move(idx)), gen_(idx_, items, batch_size, min_lanes) {}
  int64_t fill(ChunkSink& sink) override { return gen_.run(sink); }
  bool done() const override { return gen_.done(); }
  SessionIndex idx_;  // declared before gen_: gen_ keeps a reference to it
  ScheduleGen<Item> gen_;
};

struct ChunkInfo {
  int64_t slot, n_steps, n_events, n_keep;
};

struct StreamStats {
  int64_t chunks = 0;             // chunks handed to the consumer
  int64_t waits = 0;              // acquires that found their slot not ready (first included)
  int64_t waits_after_first = 0;  // the same, the first acquire excluded
  double wait_seconds = 0;        // time blocked in acquire, the first acquire excluded
  double first_wait_seconds = 0;  // time blocked in the first acquire
};

class ScheduleStream {
 public:
  ScheduleStream(std::unique_ptr<ChunkSource> source, std::vector<ChunkBuffers> slots);
  ~ScheduleStream();
  ScheduleStream(const ScheduleStream&) = delete;
  ScheduleStream& operator=(const ScheduleStream&) = delete;

  // Blocks until the next chunk is ready; false once the epoch is over. Call without the GIL.
  bool acquire(ChunkInfo* out);
  void release(int64_t slot);  // hands a HELD slot back to the producer
  void close();                // stops and joins the producer; idempotent
  StreamStats stats();
  int64_t n_slots() const { return static_cast<int64_t>(slots_.size()); }

 private:
  enum State : uint8_t { FREE, FILLING, READY, HELD };
  void produce();

  std::unique_ptr<ChunkSource> source_;
  std::vector<ChunkBuffers> slots_;
  std::vector<State> state_;
  std::vector<ChunkInfo> info_;
  std::mutex mu_;
  std::condition_variable cv_;
  int64_t next_read_ = 0;
  bool finished_ = false;  // the producer wrote its last chunk
  bool stop_ = false;      // close() was called
  bool failed_ = false;    // the producer hit an internal error
  StreamStats stats_;
  std::thread producer_;
};

}  // namespace fg4r
