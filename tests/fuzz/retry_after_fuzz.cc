// Retry-After from an upstream (issue 9 item 4: an absurd value overflowed
// int64). Input: 8 bytes of `now`, then the header value.
#include "policy/policy.h"
#include "tests/fuzz/fuzz.h"

using namespace slip::policy;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Input in{data, size};
  int64_t now = static_cast<int64_t>(in.u64());
  if (now & 1) now = 1700000000 + (now >> 40);  // mostly a plausible clock
  std::string_view v = in.rest();
  auto s = parseRetryAfter(v, now);
  if (!s) return 0;
  FUZZ_ASSERT(*s >= 0 && *s <= kRetryAfterMaxSeconds);
  // Callers turn it into milliseconds and add it to a monotonic clock.
  int64_t ms = 0;
  FUZZ_ASSERT(!__builtin_mul_overflow(*s, int64_t{1000}, &ms));
  // A date is a date whatever the clock says; delta-seconds do not depend on it.
  auto date = parseHttpDate(v);
  if (!date) FUZZ_ASSERT(parseRetryAfter(v, 0) == s);
  return 0;
}
