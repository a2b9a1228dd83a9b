// What SIGHUP cannot change: every directive marked `restart` in the table
// is named when a reloaded file changes it, and its running value is kept;
// nothing else is touched.
#include <catch2/catch.hpp>
#include <set>
#include <string>

#include "conf/conf.h"
#include "conf_helpers.h"

using namespace conf_test;

namespace {

const char* kBase =
    "[server]\nrole = main\nstate_dir = /tmp/a\nsign_secret = s1\nworkers = 1\n"
    "[cache]\ndir = /tmp/c1\nmax_size = 2G\nmin_free = 1G\nblock_size = 1M\n"
    "[mount m]\nsource = http\nbase_url = http://127.0.0.1:1/\n";

}  // namespace

TEST_CASE("reload: restart keys are named and keep their running values", "[conf][reload]") {
  Config running = mustLoad(kBase);
  struct Row {
    const char* key;
    const char* from;
    const char* to;
  };
  const Row rows[] = {
      {"[server] role", "role = main", "role = edge"},
      {"[server] state_dir", "state_dir = /tmp/a", "state_dir = /tmp/b"},
      {"[server] workers", "workers = 1", "workers = auto"},
      {"[cache] dir", "dir = /tmp/c1", "dir = /tmp/c2"},
      {"[cache] max_size", "max_size = 2G", "max_size = 3G"},
      {"[cache] min_free", "min_free = 1G", "min_free = 2G"},
      {"[cache] block_size", "block_size = 1M", "block_size = 4M"},
      {"[cache] test_disk_rate", "block_size = 1M", "block_size = 1M\ntest_disk_rate = 1M"},
  };
  setenv("SLIPSTREAM_TEST_HOOKS", "1", 1);  // test_disk_rate is a test hook
  std::set<std::string> tested;
  for (const Row& r : rows) {
    std::string text = kBase;
    text.replace(text.find(r.from), std::string(r.from).size(), r.to);
    Config next = mustLoad(text);
    std::vector<std::string> named = keepRestartValues(running, &next);
    INFO(r.key);
    CHECK(named == std::vector<std::string>{r.key});
    CHECK(keepRestartValues(running, &next).empty());  // set back: nothing differs any more
    CHECK(next.server.role == running.server.role);
    CHECK(next.cache.blockSize == running.cache.blockSize);
    tested.insert(r.key);
  }
  // Every `restart` row of the table is one of them, and no other key is.
  std::set<std::string> flagged;
  for (const Directive& d : directives())
    if (d.restart) flagged.insert(std::string("[") + (d.section == SectionKind::Server ? "server" : "cache") + "] " + d.name);
  CHECK(flagged == tested);
  for (const Directive& d : directives())
    if (d.restart) CHECK((d.section == SectionKind::Server || d.section == SectionKind::Cache));

  // Reloadable keys pass through untouched.
  std::string text = kBase;
  text.replace(text.find("sign_secret = s1"), 16, "sign_secret = s2");
  Config next = mustLoad(text);
  CHECK(keepRestartValues(running, &next).empty());
  CHECK(next.server.signSecret == "s2");
}
