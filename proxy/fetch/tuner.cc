// ConnectionTuner: per upstream host, AIMD over the fill's transfer count
// (see tuner.h for the rules). Windows are measured on the monotonic clock.
#include "proxy/fetch/tuner.h"

#include <algorithm>

namespace slip::proxy {

namespace {
constexpr int64_t kNsPerMs = 1'000'000;
constexpr int64_t kForgetCheckMs = 1'000;
}  // namespace

int ConnectionTuner::hostId(const std::string& name) {
  forget();
  auto it = ids_.find(name);
  if (it != ids_.end()) return it->second;
  int id = nextId_++;
  ids_[name] = id;
  Host& h = hosts_[id];
  h.name = name;
  h.lastUsedMs = clock_.monoMs();
  restartWindow(h, clock_.monoNs());
  return id;
}

ConnectionTuner::Host* ConnectionTuner::find(int host) {
  auto it = hosts_.find(host);
  return it == hosts_.end() ? nullptr : &it->second;
}

int ConnectionTuner::target(int host, int ceiling) {
  Host* h = find(host);
  ceiling = std::clamp(ceiling, 1, kMax);
  if (!h) return std::min(kStart, ceiling);
  h->ceiling = ceiling;
  advance(*h);
  return std::clamp(h->target, 1, ceiling);
}

int ConnectionTuner::running(int host) const {
  auto it = hosts_.find(host);
  return it == hosts_.end() ? 0 : it->second.running;
}

void ConnectionTuner::started(int host) {
  if (Host* h = find(host)) {
    advance(*h);
    h->running++;
    h->lastUsedMs = clock_.monoMs();
  }
}

void ConnectionTuner::ended(int host) {
  if (Host* h = find(host)) {
    advance(*h);
    h->running = std::max(0, h->running - 1);
    h->lastUsedMs = clock_.monoMs();
  }
}

void ConnectionTuner::received(int host, uint64_t bytes) {
  if (Host* h = find(host)) {
    advance(*h);
    h->bytes += bytes;
  }
}

void ConnectionTuner::pushback(int host) {
  Host* h = find(host);
  if (!h) return;
  advance(*h);
  int64_t nowMs = clock_.monoMs();
  if (nowMs - h->lastCutMs < kCutSpacingMs) return;  // one cut per burst of refusals
  h->target = std::max(1, std::min(h->target, h->ceiling) / 2);
  h->prevTarget = 0;
  h->slowStart = false;
  h->holdUntilMs = nowMs + kRecoverMs;
  h->lastCutMs = nowMs;
  restartWindow(*h, clock_.monoNs());
}

std::vector<ConnectionTuner::Figure> ConnectionTuner::figures() const {
  std::vector<Figure> out;
  for (const auto& [id, h] : hosts_) out.push_back({h.name, std::clamp(h.target, 1, h.ceiling), h.running});
  return out;
}

void ConnectionTuner::advance(Host& h) {
  int64_t now = clock_.monoNs();
  if (now > h.lastNs) {
    h.busyNs += static_cast<double>(std::min(h.running, std::min(h.target, h.ceiling))) *
                static_cast<double>(now - h.lastNs);
    h.lastNs = now;
  }
  if (now - h.windowStartNs >= kWindowMs * kNsPerMs) evaluate(h, now);
}

void ConnectionTuner::restartWindow(Host& h, int64_t nowNs) {
  h.windowStartNs = nowNs;
  h.lastNs = nowNs;
  h.busyNs = 0;
  h.bytes = 0;
}

void ConnectionTuner::evaluate(Host& h, int64_t nowNs) {
  const double elapsed = static_cast<double>(nowNs - h.windowStartNs);
  const int level = std::clamp(h.target, 1, h.ceiling);
  const double busy = h.busyNs / (elapsed * level);
  const double rate = static_cast<double>(h.bytes) * 1e9 / elapsed;
  restartWindow(h, nowNs);
  const int64_t nowMs = nowNs / kNsPerMs;
  if (busy < kBusy || nowMs < h.holdUntilMs) return;  // readers did not want more, or holding
  if (h.prevTarget > 0) {
    // The first full window after a step up: did it pay?
    double ideal = static_cast<double>(level) / h.prevTarget - 1;
    double gain = h.prevRate > 0 ? rate / h.prevRate - 1 : 1;
    if (gain < kPaid * ideal) {
      h.target = h.prevTarget;  // as fast with fewer: back, and hold
      h.prevTarget = 0;
      h.slowStart = false;
      h.holdUntilMs = nowMs + kHoldMs;
      return;
    }
  }
  if (level >= h.ceiling) {
    h.prevTarget = 0;
    h.target = level;
    return;
  }
  h.prevTarget = level;
  h.prevRate = rate;
  h.target = std::min(h.ceiling, h.slowStart ? 2 * level : level + 1);
}

void ConnectionTuner::forget() {
  int64_t nowMs = clock_.monoMs();
  if (nowMs - lastForget_ < kForgetCheckMs) return;
  lastForget_ = nowMs;
  for (auto it = hosts_.begin(); it != hosts_.end();) {
    const Host& h = it->second;
    if (h.running == 0 && nowMs - h.lastUsedMs >= kForgetMs) {
      ids_.erase(h.name);
      it = hosts_.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace slip::proxy
