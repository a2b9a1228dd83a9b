// The adaptive connection count (issue 11 item 2): how many transfers the
// fill runs at once against one upstream host. `connections` is a ceiling,
// not a fixed number: a host starts with kStart transfers; every window the
// controller measures the host's total throughput while it ran at its
// target, and
//  - doubles the target while the total grows (at least half of what the
//    added connections would give if each brought as much as the others: a
//    cloud drive that caps each connection), up to the ceiling;
//  - when a step up did not pay (an unthrottled origin, a full line), goes
//    back to the level before it and holds there for kHoldMs, then probes
//    one connection more (and keeps adding one at a time while that pays);
//  - on 429/503 or a refused connection halves the target (at most once per
//    kCutSpacingMs) and recovers one connection at a time, no sooner than
//    kRecoverMs after the cut (additive increase, multiplicative decrease);
//  - forgets a host kForgetMs after its last transfer.
// A window in which the host did not run at its target most of the time
// (readers that did not want more) teaches nothing.
//
// It reads only the Clock it is given (a ManualClock in its table test) and
// does no I/O: the fill feeds it transfer starts and ends, bytes and
// push-backs, and reads target() for the planner's per-host slots.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "conf/clock.h"

namespace slip::proxy {

class ConnectionTuner {
 public:
  static constexpr int kStart = 2;               // transfers a host starts with
  static constexpr int kMax = 256;               // no target above this whatever the ceiling
  static constexpr int64_t kWindowMs = 100;      // one measurement
  static constexpr double kBusy = 0.8;           // share of the window at the target to count
  static constexpr double kPaid = 0.5;           // share of the ideal gain a step must bring
  static constexpr int64_t kHoldMs = 30'000;     // after a step that did not pay
  static constexpr int64_t kCutSpacingMs = 1'000;
  static constexpr int64_t kRecoverMs = 2'000;   // after a cut, before adding again
  static constexpr int64_t kForgetMs = 5 * 60'000;

  explicit ConnectionTuner(const Clock& clock) : clock_(clock) {}

  /// The id of host `name` ("scheme://host:port"), made on first use.
  int hostId(const std::string& name);
  /// Transfers `host` should run at once now: at least 1, at most `ceiling`
  /// (the largest `connections` of the objects using it).
  int target(int host, int ceiling);
  /// The fill's transfers to `host` running now.
  int running(int host) const;

  void started(int host);
  void ended(int host);
  void received(int host, uint64_t bytes);
  /// The host answered 429/503 or refused a connection.
  void pushback(int host);

  struct Figure {
    std::string host;
    int target = 0;
    int running = 0;
  };
  /// Every host remembered now, for /-/metrics.
  std::vector<Figure> figures() const;

 private:
  struct Host {
    std::string name;
    int target = kStart;
    int ceiling = kMax;
    int running = 0;
    // the level before the last step up, and its throughput (bytes/s); 0 = none
    int prevTarget = 0;
    double prevRate = 0;
    bool slowStart = true;  // doubling until the first plateau or push-back
    int64_t holdUntilMs = 0;
    int64_t lastCutMs = -kCutSpacingMs;
    int64_t lastUsedMs = 0;
    // the window
    int64_t windowStartNs = 0;
    int64_t lastNs = 0;
    double busyNs = 0;  // ∫ min(running, target) dt
    uint64_t bytes = 0;
  };
  Host* find(int host);
  void advance(Host& h);
  void evaluate(Host& h, int64_t nowNs);
  void restartWindow(Host& h, int64_t nowNs);
  void forget();

  const Clock& clock_;
  std::map<int, Host> hosts_;
  std::map<std::string, int> ids_;
  int nextId_ = 0;
  int64_t lastForget_ = 0;
};

}  // namespace slip::proxy
