#include "stream.hpp"

#include <chrono>
#include <stdexcept>
#include <string>

namespace fg4r {

ScheduleStream::ScheduleStream(std::unique_ptr<ChunkSource> source, std::vector<ChunkBuffers> slots)
    : source_(std::move(source)), slots_(std::move(slots)), state_(slots_.size(), FREE), info_(slots_.size()) {
  if (slots_.empty()) throw std::invalid_argument("a schedule stream needs at least one buffer slot");
  producer_ = std::thread([this] { produce(); });  // last: every member is ready
}

ScheduleStream::~ScheduleStream() { close(); }

void ScheduleStream::close() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (producer_.joinable()) producer_.join();
}

void ScheduleStream::produce() {
  int64_t i = 0;
  const int64_t n = static_cast<int64_t>(slots_.size());
  for (;;) {
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stop_ || state_[i] == FREE; });
      if (stop_) return;
      state_[i] = FILLING;
    }
    // Fill without the lock: the consumer never touches a FILLING slot.
    ChunkSink sink(slots_[i]);
    bool failed = false;
    try {
      source_->fill(sink);
    } catch (...) {
      failed = true;  // not expected (inputs were validated); never let it escape the thread
    }
    const bool end = failed || source_->done();
    if (!failed && sink.n_steps == 0 && !end) failed = true;  // no progress: would spin forever
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (sink.n_steps > 0 && !failed) {
        info_[i] = ChunkInfo{i, sink.n_steps, sink.n_events, sink.n_keep_};
        state_[i] = READY;
      } else {
        state_[i] = FREE;
      }
      finished_ = end || failed;
      failed_ = failed;
    }
    cv_.notify_all();
    if (end || failed) return;
    i = (i + 1) % n;
  }
}

bool ScheduleStream::acquire(ChunkInfo* out) {
  std::unique_lock<std::mutex> lk(mu_);
  if (stop_) throw std::invalid_argument("the schedule stream is closed");
  const int64_t i = next_read_;
  if (state_[i] == HELD)
    throw std::invalid_argument("every buffer slot is held: release the previous chunk before acquiring the next");
  auto ready = [&] { return stop_ || state_[i] == READY || (finished_ && state_[i] != FILLING); };
  const bool first = (stats_.chunks == 0);
  if (!ready()) {
    const auto t0 = std::chrono::steady_clock::now();
    cv_.wait(lk, ready);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ++stats_.waits;
    if (first) {
      stats_.first_wait_seconds += dt;
    } else {
      ++stats_.waits_after_first;
      stats_.wait_seconds += dt;
    }
  }
  if (failed_) throw std::runtime_error("the schedule stream's producer failed (internal error)");
  if (stop_) throw std::invalid_argument("the schedule stream is closed");
  if (state_[i] != READY) return false;  // epoch over
  state_[i] = HELD;
  *out = info_[i];
  next_read_ = (i + 1) % static_cast<int64_t>(slots_.size());
  ++stats_.chunks;
  return true;
}

void ScheduleStream::release(int64_t slot) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (slot < 0 || slot >= static_cast<int64_t>(slots_.size()))
      throw std::invalid_argument("slot " + std::to_string(slot) + " out of range [0, " +
                                  std::to_string(slots_.size()) + ")");
    if (state_[slot] != HELD) throw std::invalid_argument("slot " + std::to_string(slot) + " is not held");
    state_[slot] = FREE;
  }
  cv_.notify_all();
}

StreamStats ScheduleStream::stats() {
  std::lock_guard<std::mutex> lk(mu_);
  return stats_;
}

}  // namespace fg4r
