#include "conf/worker.h"

#include <event2/event.h>

namespace slip {

Worker::Worker(event_base* base) : wake_(event_new(base, -1, 0, &Worker::onDone, this)) {}

Worker::~Worker() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stopping_ = true;
    queue_.clear();
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Worker::post(std::function<void()> job, std::function<void()> done) {
  {
    std::lock_guard<std::mutex> l(mu_);
    queue_.push_back({std::move(job), std::move(done)});
    if (!thread_.joinable()) thread_ = std::thread(&Worker::run, this);
  }
  cv_.notify_one();
}

size_t Worker::pending() const {
  std::lock_guard<std::mutex> l(mu_);
  return queue_.size() + running_ + finished_.size();
}

void Worker::run() {
  std::unique_lock<std::mutex> l(mu_);
  for (;;) {
    cv_.wait(l, [this] { return stopping_ || !queue_.empty(); });
    if (stopping_) return;
    Item it = std::move(queue_.front());
    queue_.pop_front();
    running_++;
    l.unlock();
    it.job();
    l.lock();
    running_--;
    finished_.push_back(std::move(it));
    // Thread-safe with evthread_use_pthreads(): wakes the loop.
    event_active(wake_.get(), EV_READ, 0);
  }
}

void Worker::onDone(int, short, void* self) {
  auto* w = static_cast<Worker*>(self);
  std::deque<Item> ready;
  {
    std::lock_guard<std::mutex> l(w->mu_);
    ready.swap(w->finished_);
  }
  // A `done` must not destroy the Worker (its owners outlive their callbacks).
  for (auto& it : ready) it.done();
}

}  // namespace slip
