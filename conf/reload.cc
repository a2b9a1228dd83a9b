// What a configuration reload cannot change: the directives marked
// `restart` in the table. Their values live in objects made once at start
// (the store opened on [cache] dir with its block size and limits, the
// routes of a role, the accounts' state files under state_dir).
#include "conf/conf.h"

namespace slip::conf {

std::vector<std::string> keepRestartValues(const Config& running, Config* next) {
  std::vector<std::string> changed;
  auto keep = [&changed](const char* key, auto& now, const auto& before) {
    if (now == before) return;
    now = before;
    changed.push_back(key);
  };
  // One line per `restart` row of the directive table (conf_test checks
  // that every such row is here).
  keep("[server] role", next->server.role, running.server.role);
  keep("[server] state_dir", next->server.stateDir, running.server.stateDir);
  keep("[server] workers", next->server.workers, running.server.workers);
  keep("[cache] dir", next->cache.dir, running.cache.dir);
  keep("[cache] max_size", next->cache.maxSize, running.cache.maxSize);
  keep("[cache] min_free", next->cache.minFree, running.cache.minFree);
  keep("[cache] block_size", next->cache.blockSize, running.cache.blockSize);
  keep("[cache] test_disk_rate", next->cache.testDiskRate, running.cache.testDiskRate);
  return changed;
}

}  // namespace slip::conf
