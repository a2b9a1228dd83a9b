// The admin API's prefetch jobs (POST /-/api/v1/prefetch): the proxy's
// background fills, with an id, a speed and an end time. Bounded: at most
// kMaxJobs are remembered; an ended job is forgotten kKeepMs after it ended
// (or earlier, oldest first, when a new one needs its place); when kMaxJobs
// are all still running, a new one is refused. Loop thread only.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "proxy/proxy.h"
#include "src/admin_api.h"
#include "src/exchange.h"

namespace slip {

class PrefetchRegistry {
 public:
  static constexpr size_t kMaxJobs = 32;
  static constexpr int64_t kKeepMs = 10 * 60 * 1000;

  explicit PrefetchRegistry(const Clock& clock) : clock_(clock) {}

  /// The job still running for this virtual path, if any (a second POST joins it).
  std::optional<admin::PrefetchJob> running(const std::string& path);
  /// Makes room for one more job (forgets the oldest ended one if needed);
  /// false when kMaxJobs are running.
  bool makeRoom();
  /// Remembers a started job; its id is new.
  admin::PrefetchJob add(const std::string& path, std::unique_ptr<proxy::Prefetch> job);
  /// Every job remembered, oldest first.
  std::vector<admin::PrefetchJob> list();
  std::optional<admin::PrefetchJob> get(const std::string& id);
  admin::Outcome<admin::PrefetchJob> cancel(const std::string& id);
  /// Called every 500 ms by the server: speeds, end times, forgetting.
  void sample(int64_t monoNs);
  /// Cancels every job (the gateway stops).
  void cancelAll();

 private:
  struct Entry {
    std::string id, path;
    std::unique_ptr<proxy::Prefetch> job;
    int64_t createdMs = 0, endedMs = 0;  // wall clock; ended 0 = still going
    SpeedMeter speed;
  };
  admin::PrefetchJob info(Entry& e);
  void noteEnd(Entry& e);

  const Clock& clock_;
  std::map<uint64_t, Entry> jobs_;  // by creation order
  uint64_t next_ = 1;
};

}  // namespace slip
