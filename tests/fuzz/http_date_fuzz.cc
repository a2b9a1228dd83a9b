// HTTP dates and If-Range. Input: If-Range value, '\n', ETag, '\n',
// Last-Modified; the whole input is also parsed as a date.
#include "policy/policy.h"
#include "tests/fuzz/fuzz.h"

using namespace slip::policy;

namespace {

constexpr int64_t kMin = -2208988800;    // 1900-01-01 00:00:00
constexpr int64_t kMax = 253402300800;   // 9999-12-31 23:59:60

std::string_view trimOws(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

void checkDate(std::string_view v) {
  auto t = parseHttpDate(v);
  if (!t) return;
  FUZZ_ASSERT(*t >= kMin && *t <= kMax);
  if (*t >= 0 && *t < kMax) {
    // What we would write for that instant reads back as the same instant.
    std::string imf = formatHttpDate(*t);
    FUZZ_ASSERT(imf.size() == 29);
    FUZZ_ASSERT(parseHttpDate(imf) == t);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view whole(reinterpret_cast<const char*>(data), size);
  checkDate(whole);

  fuzz::Input in{data, size};
  std::string_view ifRange = in.line(), etag = in.line(), lastModified = in.rest();
  checkDate(ifRange);
  bool allowed = ifRangeAllows(ifRange, etag, lastModified);
  std::string_view v = trimOws(ifRange);
  if (v.empty()) {
    FUZZ_ASSERT(allowed);
  } else if (allowed) {
    // Allowed only by an exact strong ETag or an exact Last-Modified.
    FUZZ_ASSERT(!v.starts_with("W/"));
    FUZZ_ASSERT(v.front() == '"' ? (v == etag && v.size() >= 2 && v.back() == '"')
                                 : v == lastModified);
  }
  // Formatting any instant gives a date that parses.
  fuzz::Input num{data, size};
  int64_t t = static_cast<int64_t>(num.u64());
  auto back = parseHttpDate(formatHttpDate(t));
  FUZZ_ASSERT(back && *back >= 0 && *back <= kMax);
  if (t >= 0 && t < kMax) FUZZ_ASSERT(*back == t);
  return 0;
}
