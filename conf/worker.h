// A background thread for the few blocking calls that must not run on the
// event loop (reading a local directory of a NAS disk, hashing a password),
// with each result handed back on the loop.
//
// Jobs run one at a time in submission order. `done` runs on the loop thread
// (the event_base's dispatch), never on the worker. Destroying the Worker
// waits for the job that is running and drops the rest: their `done` never
// runs, so whatever they reference must outlive the Worker, not the job.
//
// The event_base must have been created after evthread_use_pthreads().
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include "conf/loop.h"

namespace slip {

class Worker {
 public:
  explicit Worker(event_base* base);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  /// Runs `job` on the worker thread, then `done` on the loop. The thread
  /// starts with the first job. `done` must not destroy the Worker.
  void post(std::function<void()> job, std::function<void()> done);

  /// Jobs posted and not yet handed back (for tests and metrics).
  size_t pending() const;

 private:
  struct Item {
    std::function<void()> job;
    std::function<void()> done;
  };
  void run();
  static void onDone(int, short, void* self);

  EventPtr wake_;  // activated by the worker thread (event_active is thread-safe)
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> queue_;     // waiting to run
  std::deque<Item> finished_;  // ran; `done` still to be called on the loop
  size_t running_ = 0;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace slip
