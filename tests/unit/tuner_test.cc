// The adaptive connection count (proxy/fetch/tuner.h), on a ManualClock:
// ramp up while the total grows, hold when it does not, cut on 429, caps,
// windows without demand, forgetting.
#include <catch2/catch.hpp>

#include <algorithm>
#include <functional>
#include <sstream>

#include "proxy/fetch/tuner.h"

using slip::ManualClock;
using slip::proxy::ConnectionTuner;

namespace {

constexpr double MiB = 1 << 20;
constexpr int64_t kWin = ConnectionTuner::kWindowMs;

/// A host whose throughput is `rate(transfers)` bytes/s, driven a window at a
/// time: the fill runs as many transfers as the target says (or `demand`,
/// when fewer are wanted).
struct Host {
  ManualClock clock;
  ConnectionTuner t{clock};
  int id = t.hostId("http://cdn.example:80");
  int running = 0;

  void setRunning(int n) {
    while (running < n) {
      t.started(id);
      running++;
    }
    while (running > n) {
      t.ended(id);
      running--;
    }
  }
  /// Runs `windows` windows; returns the target seen at the start of each.
  std::vector<int> run(const std::function<double(int)>& rate, int ceiling, int windows, int demand = 1 << 20) {
    std::vector<int> seen;
    for (int w = 0; w < windows; w++) {
      int n = t.target(id, ceiling);
      seen.push_back(n);
      setRunning(std::min(n, demand));
      for (int step = 0; step < 4; step++) {
        t.received(id, static_cast<uint64_t>(rate(running) * kWin / 4 / 1000));
        clock.advanceMs(kWin / 4);
      }
    }
    return seen;
  }
};

std::string show(const std::vector<int>& v) {
  std::ostringstream s;
  for (int x : v) s << x << " ";
  return s.str();
}

auto capped = [](int n) { return n * 16 * MiB; };       // 16 MiB/s per connection (a cloud drive)
auto uncapped = [](int) { return 900 * MiB; };          // one connection fills the line
auto capAt5 = [](int n) { return std::min(n, 5) * 16 * MiB; };

}  // namespace

TEST_CASE("tuner: a capped origin ramps up while the total grows, to the ceiling", "[tuner]") {
  Host h;
  std::vector<int> seen = h.run(capped, 16, 6);
  INFO(show(seen));
  CHECK(seen == std::vector<int>{2, 4, 8, 16, 16, 16});
}

TEST_CASE("tuner: an origin that does not give more holds at the level before the step", "[tuner]") {
  Host h;
  std::vector<int> seen = h.run(uncapped, 16, 5);
  INFO(show(seen));
  CHECK(seen == std::vector<int>{2, 4, 2, 2, 2});
  // Held for kHoldMs; then one more is tried, and given back when it does not pay.
  const int hold = static_cast<int>(ConnectionTuner::kHoldMs / kWin);
  seen = h.run(uncapped, 16, hold + 10);
  INFO(show(seen));
  auto three = std::find(seen.begin(), seen.end(), 3);
  REQUIRE(three != seen.end());
  CHECK(three - seen.begin() >= hold - 5);  // not before the hold ran out
  CHECK(std::count(seen.begin(), seen.end(), 3) == 1);
  CHECK(*std::max_element(seen.begin(), seen.end()) == 3);
  CHECK(std::count(three + 1, seen.end(), 2) == seen.end() - three - 1);
  // A line that fills at 5 connections: 4 → 8 brought a quarter of the
  // ideal gain, so back to 4.
  Host five;
  seen = five.run(capAt5, 64, 6);
  INFO(show(seen));
  CHECK(seen == std::vector<int>{2, 4, 8, 4, 4, 4});
}

TEST_CASE("tuner: 429/503 cut the target in half, once per burst, and it recovers one at a time", "[tuner]") {
  Host h;
  h.run(capped, 16, 4);
  REQUIRE(h.t.target(h.id, 16) == 16);
  h.t.pushback(h.id);
  CHECK(h.t.target(h.id, 16) == 8);
  h.t.pushback(h.id);  // the same burst
  CHECK(h.t.target(h.id, 16) == 8);
  h.clock.advanceMs(ConnectionTuner::kCutSpacingMs);
  h.t.pushback(h.id);
  CHECK(h.t.target(h.id, 16) == 4);
  for (int i = 0; i < 5; i++) {
    h.clock.advanceMs(ConnectionTuner::kCutSpacingMs);
    h.t.pushback(h.id);
  }
  CHECK(h.t.target(h.id, 16) == 1);  // never below one
  // Nothing is added before kRecoverMs; then one at a time while it pays.
  std::vector<int> seen = h.run(capped, 16, static_cast<int>(ConnectionTuner::kRecoverMs / kWin) - 1);
  INFO(show(seen));
  CHECK(seen.back() == 1);
  seen = h.run(capped, 16, 4);
  INFO(show(seen));
  CHECK(seen == std::vector<int>{1, 2, 3, 4});
}

TEST_CASE("tuner: caps are respected", "[tuner]") {
  Host h;
  std::vector<int> seen = h.run(capped, 3, 5);
  INFO(show(seen));
  CHECK(seen == std::vector<int>{2, 3, 3, 3, 3});
  CHECK(h.t.target(h.id, 1) == 1);  // a mount allowing one connection
  CHECK(h.t.target(h.id, 0) == 1);
  Host big;
  seen = big.run(capped, 100000, 12);
  for (int n : seen) CHECK(n <= ConnectionTuner::kMax);
}

TEST_CASE("tuner: windows where the readers wanted fewer transfers teach nothing", "[tuner]") {
  Host h;
  std::vector<int> seen = h.run(capped, 16, 8, 1);  // one transfer wanted at a time
  INFO(show(seen));
  CHECK(seen == std::vector<int>(8, 2));
}

TEST_CASE("tuner: a host is forgotten minutes after its last transfer", "[tuner]") {
  Host h;
  h.run(capped, 16, 4);
  h.setRunning(0);
  REQUIRE(h.t.target(h.id, 16) == 16);
  h.clock.advanceMs(ConnectionTuner::kForgetMs / 2);
  CHECK(h.t.hostId("http://cdn.example:80") == h.id);  // still remembered
  CHECK(h.t.target(h.id, 16) == 16);
  h.clock.advanceMs(ConnectionTuner::kForgetMs);
  int again = h.t.hostId("http://cdn.example:80");
  CHECK(again != h.id);
  CHECK(h.t.target(again, 16) == ConnectionTuner::kStart);
  auto figs = h.t.figures();
  REQUIRE(figs.size() == 1);
  CHECK(figs[0].host == "http://cdn.example:80");
  CHECK(figs[0].target == ConnectionTuner::kStart);
}
