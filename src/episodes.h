// The next episode, warmed ahead (issue 13 item 4). When a playing client
// has read the share of an episode that its decision's `next_episode` says
// (a response that played across the mark, or one that began past it and
// delivered kPastMarkBytes), the folder's listing (Engine::list, cached)
// says which file comes next (policy::nextEpisode) and one background
// prefetch of its head and media index (PrefetchSpec::mediaHead) starts —
// one per next file: none while one runs or for kKeepMs after it ended.
// Loop thread only.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "proxy/proxy.h"
#include "src/exchange.h"

namespace slip {

struct Generation;

class EpisodeWarmer {
 public:
  static constexpr int64_t kKeepMs = 10 * 60 * 1000;  // a next file is not warmed again this long
  static constexpr uint64_t kPastMarkBytes = 16ull << 20;  // a response that began past the mark
  static constexpr size_t kMaxRunning = 8;                 // warmings at once

  /// `ids`: the server's request ids (a warming is logged with one).
  EpisodeWarmer(proxy::Engine& engine, const Clock& clock, std::weak_ptr<bool> life, std::atomic<uint64_t>& ids)
      : engine_(engine), clock_(clock), life_(std::move(life)), ids_(ids) {}

  /// Looks at a response (its bytes so far): starts the warming once it has
  /// read its share. Cheap when it has nothing to do.
  void check(Exchange& ex);
  /// Called every 500 ms by the server: ended warmings are counted and
  /// logged, old ones forgotten.
  void sample();

  struct Counters {
    uint64_t started = 0, warmed = 0, failed = 0, skipped = 0;
  };
  const Counters& counters() const { return counters_; }

 private:
  struct Target {
    std::shared_ptr<const Generation> gen;
    int mount = -1;
    std::string folder, name;  // below the mount; the episode's name
  };
  void listed(const Target& t, const proxy::ListResult& res);
  void start(const Target& t, const std::string& nextName, uint64_t size);

  struct Entry {
    std::unique_ptr<proxy::Prefetch> job;  // null: refused, remembered so as not to ask again
    std::string path, from;
    int64_t endedMs = 0;  // monotonic ms; 0 = running
  };
  proxy::Engine& engine_;
  const Clock& clock_;
  std::weak_ptr<bool> life_;                  // the server's: expired once it is gone
  std::map<std::string, Entry> next_;         // by mount name + "\n" + path below it
  std::map<std::string, int64_t> triggered_;  // episodes that triggered, by the same key: when
  Counters counters_;
  std::atomic<uint64_t>& ids_;
};

}  // namespace slip
