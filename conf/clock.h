// Time as the gateway sees it. Every part that needs "now" is handed a Clock
// (one RealClock in production, a ManualClock in tests) instead of reading
// the system clock itself, so freshness, link and token expiry, backoff and
// rates are functions of a time that a test can set.
//
// Two kinds of time, never mixed:
//  - wall time (ms since the Unix epoch): what links, signs, tokens and the
//    index's "validated at" are measured in; it can jump;
//  - monotonic time (ns/ms since an arbitrary start): intervals, timeouts,
//    rates and event-loop lag; it never goes back.
#pragma once

#include <sys/time.h>

#include <chrono>
#include <cstdint>

namespace slip {

class Clock {
 public:
  virtual ~Clock() = default;
  /// Wall clock: milliseconds since the Unix epoch.
  virtual int64_t wallMs() const = 0;
  /// Monotonic clock in nanoseconds.
  virtual int64_t monoNs() const = 0;
  /// Monotonic clock in milliseconds.
  int64_t monoMs() const { return monoNs() / 1'000'000; }
  /// Wall clock in whole seconds (signs, HTTP dates).
  int64_t wallSeconds() const { return wallMs() / 1000; }
};

/// The system's clocks.
class RealClock final : public Clock {
 public:
  int64_t wallMs() const override {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
  }
  int64_t monoNs() const override {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
};

/// A clock that moves only when told to (tests).
class ManualClock final : public Clock {
 public:
  explicit ManualClock(int64_t wallMs = 1'700'000'000'000, int64_t monoNs = 1'000'000'000)
      : wall_(wallMs), mono_(monoNs) {}
  int64_t wallMs() const override { return wall_; }
  int64_t monoNs() const override { return mono_; }
  /// Moves both clocks forward by `ms`.
  void advanceMs(int64_t ms) {
    wall_ += ms;
    mono_ += ms * 1'000'000;
  }
  /// Sets the wall clock alone (a jump, as NTP may make).
  void setWallMs(int64_t ms) { wall_ = ms; }

 private:
  int64_t wall_;
  int64_t mono_;
};

/// A duration in milliseconds as a timeval for libevent (negative → zero).
inline timeval msToTimeval(int64_t ms) {
  if (ms < 0) ms = 0;
  return timeval{static_cast<time_t>(ms / 1000), static_cast<suseconds_t>((ms % 1000) * 1000)};
}

}  // namespace slip
