// Time-dependent decisions (policy.h, "time"): freshness, link and token
// margins, backoff. `now` is always passed in.
#include <algorithm>
#include <climits>

#include "policy/policy.h"

namespace slip::policy {

bool isFresh(int64_t validatedMs, int64_t revalidateMs, int64_t nowMs) {
  return nowMs - validatedMs < revalidateMs;
}

int64_t linkUsableUntil(int64_t obtainedMs, int64_t expiresMs) {
  if (expiresMs == 0) return INT64_MAX;
  int64_t life = expiresMs - obtainedMs;
  return expiresMs - std::clamp<int64_t>(life / 5, 0, 60'000);
}

bool linkUsable(int64_t obtainedMs, int64_t expiresMs, int64_t nowMs) {
  return nowMs < linkUsableUntil(obtainedMs, expiresMs);
}

int64_t accessMarginMs(int64_t lifeMs) { return lifeMs <= 0 ? 0 : std::min<int64_t>(300'000, lifeMs / 5); }

bool tokenUsable(int64_t obtainedMs, int64_t expiresMs, int64_t nowMs) {
  return nowMs < expiresMs - accessMarginMs(expiresMs - obtainedMs);
}

int64_t backoffDelayMs(const Backoff& b, int retry) {
  if (retry < 1) retry = 1;
  int64_t d = b.baseMs;
  for (int i = 1; i < retry && d < b.maxMs; i++) d *= 2;
  return std::min(d, b.maxMs);
}

}  // namespace slip::policy
