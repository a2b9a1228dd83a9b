// Admission: the one place that counts upstream connections and decides who
// may open one. Every download transfer names a pool (one per [account],
// shared by its mounts; one per other mount); a pool runs at most `limit`
// transfers, more wait first come first served and start as slots free. A
// transfer we cut off keeps its slot a little longer (the upstream counts
// the connection until it notices the close).
//
// The fill does not queue here blindly: its planner reads free() and the
// pool limits, decides which object's pieces get the free slots (fair
// shares, priorities) and only starts what will be admitted at once. Other
// transfers (probes, `cache = off` streams, size probes) simply queue.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <vector>

#include "conf/clock.h"
#include "conf/loop.h"

namespace slip::proxy {

class Admission {
 public:
  Admission(event_base* base, const Clock& clock);
  Admission(const Admission&) = delete;
  Admission& operator=(const Admission&) = delete;

  /// A pool of `limit` slots; returns its id.
  int addPool(int limit);
  int limit(int pool) const { return pools_[pool].limit; }
  /// A new limit (a configuration reload). Transfers over a lowered limit
  /// finish; queued ones start as slots free under the new one.
  void setLimit(int pool, int limit);
  /// Slots taken, including ones cooling down after a cut-off transfer.
  int running(int pool) const { return pools_[pool].running; }
  int waiting(int pool) const { return static_cast<int>(pools_[pool].waiting.size()); }
  /// Slots neither taken nor promised to a waiting request (may be <= 0).
  int free(int pool) const;

  /// Asks for a slot of `pool` for the requester `id`. true: taken now.
  /// false: queued; `grant` runs from the loop once a slot is given to it
  /// (the slot is then taken), unless withdraw(id) came first.
  bool acquire(int pool, uint64_t id, std::function<void()> grant);
  /// Drops a queued request (no-op when it is not queued).
  void withdraw(int pool, uint64_t id);
  /// Gives a taken slot back: at once, or after a grace time when the
  /// transfer was cut off.
  void release(int pool, bool cutOff);
  /// A new requester id (unique for the Admission's life).
  uint64_t newId() { return ++ids_; }

  /// Called from the loop when slots freed that no queued request took (the
  /// fill schedules more work then). Any number of listeners.
  [[nodiscard]] Subscription onSpare(std::function<void()> fn) { return spare_.subscribe(std::move(fn)); }

  /// How long a cut-off transfer's slot stays taken.
  static constexpr int64_t kCutOffGraceMs = 300;

 private:
  struct Pool {
    int limit = 0;
    int running = 0;
    std::deque<std::pair<uint64_t, std::function<void()>>> waiting;
  };
  void slotFree(int pool);
  void promote();
  void graceDue();

  const Clock& clock_;
  std::vector<Pool> pools_;
  std::multimap<int64_t, int> graces_;  // monotonic due time → pool
  Timer graceTimer_;
  Trigger promote_;
  Signal spare_;
  uint64_t ids_ = 0;
};

}  // namespace slip::proxy
