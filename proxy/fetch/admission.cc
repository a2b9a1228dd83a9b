#include "proxy/fetch/admission.h"

#include <algorithm>

namespace slip::proxy {

Admission::Admission(event_base* base, const Clock& clock)
    : clock_(clock), graceTimer_(base, [this] { graceDue(); }), promote_(base, [this] { promote(); }) {}

int Admission::addPool(int limit) {
  pools_.push_back(Pool{limit, 0, {}});
  return static_cast<int>(pools_.size()) - 1;
}

void Admission::setLimit(int pool, int limit) {
  if (pools_[pool].limit == limit) return;
  pools_[pool].limit = limit;
  promote_.fire();
}

int Admission::free(int pool) const {
  const Pool& p = pools_[pool];
  return p.limit - p.running - static_cast<int>(p.waiting.size());
}

bool Admission::acquire(int pool, uint64_t id, std::function<void()> grant) {
  Pool& p = pools_[pool];
  if (p.running < p.limit && p.waiting.empty()) {
    p.running++;
    return true;
  }
  p.waiting.emplace_back(id, std::move(grant));
  return false;
}

void Admission::withdraw(int pool, uint64_t id) {
  auto& w = pools_[pool].waiting;
  auto it = std::find_if(w.begin(), w.end(), [id](const auto& e) { return e.first == id; });
  if (it != w.end()) w.erase(it);
}

void Admission::release(int pool, bool cutOff) {
  if (!cutOff) {
    slotFree(pool);
    return;
  }
  int64_t due = clock_.monoMs() + kCutOffGraceMs;
  graces_.emplace(due, pool);
  if (graces_.begin()->first == due) graceTimer_.armMs(kCutOffGraceMs);
}

void Admission::graceDue() {
  int64_t now = clock_.monoMs();
  while (!graces_.empty() && graces_.begin()->first <= now) {
    int pool = graces_.begin()->second;
    graces_.erase(graces_.begin());
    slotFree(pool);
  }
  if (!graces_.empty()) graceTimer_.armMs(graces_.begin()->first - now);
}

void Admission::slotFree(int pool) {
  pools_[pool].running--;
  promote_.fire();
}

// Starts waiting requests where slots are free, from the loop (never inside
// another transfer's cancel or destructor).
void Admission::promote() {
  bool spare = false;
  for (Pool& p : pools_) {
    while (p.running < p.limit && !p.waiting.empty()) {
      auto grant = std::move(p.waiting.front().second);
      p.waiting.pop_front();
      p.running++;
      grant();  // may finish (and release other slots) at once: re-read the pool
    }
    spare = spare || p.running < p.limit;
  }
  if (spare) spare_.notify();
}

}  // namespace slip::proxy
