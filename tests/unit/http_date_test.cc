// HTTP dates and Retry-After: the three date forms, every field out of range,
// overflow of delta-seconds and of the subtraction from `now`.
#include <catch2/catch.hpp>

#include "policy/policy.h"

using namespace slip::policy;

namespace {
constexpr std::optional<int64_t> kNone = std::nullopt;
// 1994-11-06 08:49:37 UTC, RFC 9110's example (checked with `date -u -d`).
constexpr int64_t kRfcExample = 784111777;
}  // namespace

TEST_CASE("parseHttpDate forms and refusals", "[httpdate]") {
  struct Row {
    const char* in;
    std::optional<int64_t> want;
  };
  const Row rows[] = {
      // the three forms of RFC 9110 §5.6.7
      {"Sun, 06 Nov 1994 08:49:37 GMT", kRfcExample},
      {"Sunday, 06-Nov-94 08:49:37 GMT", kRfcExample},
      {"Sun Nov  6 08:49:37 1994", kRfcExample},
      {"Sun Nov 16 08:49:37 1994", kRfcExample + 10 * 86400},
      // OWS around the value
      {"  Sun, 06 Nov 1994 08:49:37 GMT\t", kRfcExample},
      // the weekday is a name, not checked against the date (as nginx/curl)
      {"Mon, 06 Nov 1994 08:49:37 GMT", kRfcExample},
      // edges of the calendar
      {"Thu, 01 Jan 1970 00:00:00 GMT", 0},
      {"Wed, 31 Dec 1969 23:59:59 GMT", -1},
      {"Mon, 01 Jan 1900 00:00:00 GMT", -2208988800},
      {"Tue, 29 Feb 2000 12:00:00 GMT", 951825600},
      {"Thu, 29 Feb 2024 00:00:00 GMT", 1709164800},
      {"Fri, 31 Dec 9999 23:59:59 GMT", 253402300799},
      {"Tue, 19 Jan 2038 03:14:08 GMT", 2147483648},
      {"Sat, 31 Dec 2016 23:59:60 GMT", 1483228800},  // leap second → next minute
      // two-digit years: 70..99 → 19yy, 00..69 → 20yy
      {"Thursday, 01-Jan-70 00:00:00 GMT", 0},
      {"Saturday, 01-Jan-00 00:00:00 GMT", 946684800},
      {"Friday, 31-Dec-69 23:59:59 GMT", 3155759999},
      // refused: shape
      {"", kNone},
      {"GMT", kNone},
      {"Sun, 6 Nov 1994 08:49:37 GMT", kNone},
      {"Sun, 06 Nov 94 08:49:37 GMT", kNone},
      {"Sun, 06 nov 1994 08:49:37 GMT", kNone},
      {"sun, 06 Nov 1994 08:49:37 GMT", kNone},
      {"Sun, 06 Nov 1994 08:49:37 UTC", kNone},
      {"Sun, 06 Nov 1994 08:49:37 GMT+1", kNone},
      {"Sun, 06 Nov 1994 08:49:37", kNone},
      {"Sun, 06 Nov 1994 8:49:37 GMT", kNone},
      {"Sun,06 Nov 1994 08:49:37 GMT", kNone},
      {"Sun, 06 Nov 1994 08:49:37 GMT GMT", kNone},
      {"Sun, 06 Nov +994 08:49:37 GMT", kNone},
      {"Sun, 06 Nov 1994 08:-9:37 GMT", kNone},
      {"Sunday, 06 Nov 1994 08:49:37 GMT", kNone},
      {"Sun, 06-Nov-94 08:49:37 GMT", kNone},
      {"Sun Nov 6 08:49:37 1994", kNone},
      {"Sun Nov  6 08:49:37 94", kNone},
      {"1994-11-06T08:49:37Z", kNone},
      {"784111777", kNone},
      // refused: fields out of range
      {"Sun, 00 Nov 1994 08:49:37 GMT", kNone},
      {"Sun, 31 Nov 1994 08:49:37 GMT", kNone},
      {"Sun, 29 Feb 1900 08:49:37 GMT", kNone},
      {"Sun, 30 Feb 2000 08:49:37 GMT", kNone},
      {"Sun, 06 Nov 1994 24:00:00 GMT", kNone},
      {"Sun, 06 Nov 1994 23:60:00 GMT", kNone},
      {"Sun, 06 Nov 1994 23:59:61 GMT", kNone},
      {"Sun, 06 Nov 1899 08:49:37 GMT", kNone},
      {"Sun, 06 Nov 0000 08:49:37 GMT", kNone},
      {"Sun Nov  0 08:49:37 1994", kNone},
  };
  for (const auto& r : rows) {
    INFO('"' << r.in << '"');
    CHECK(parseHttpDate(r.in) == r.want);
  }
  // A NUL inside the value is not a terminator.
  CHECK(parseHttpDate(std::string_view("Sun, 06 Nov 1994 08:49:37 GMT\0", 30)) == kNone);
}

TEST_CASE("formatHttpDate round-trips and clamps", "[httpdate]") {
  CHECK(formatHttpDate(kRfcExample) == "Sun, 06 Nov 1994 08:49:37 GMT");
  CHECK(formatHttpDate(0) == "Thu, 01 Jan 1970 00:00:00 GMT");
  CHECK(formatHttpDate(951825600) == "Tue, 29 Feb 2000 12:00:00 GMT");
  CHECK(formatHttpDate(1700000000) == "Tue, 14 Nov 2023 22:13:20 GMT");
  CHECK(formatHttpDate(-5) == "Thu, 01 Jan 1970 00:00:00 GMT");
  CHECK(formatHttpDate(INT64_MAX) == "Fri, 31 Dec 9999 23:59:59 GMT");
  for (int64_t t : {int64_t{0}, int64_t{1}, int64_t{86399}, int64_t{86400}, kRfcExample,
                    int64_t{1700000000}, int64_t{4102444800}, int64_t{253402300799}}) {
    INFO(t);
    CHECK(parseHttpDate(formatHttpDate(t)) == t);
  }
}

TEST_CASE("parseRetryAfter delta-seconds, dates and overflow", "[httpdate][retryafter]") {
  constexpr int64_t kNow = 1700000000;  // Tue, 14 Nov 2023 22:13:20 GMT
  constexpr int64_t kMaxS = kRetryAfterMaxSeconds;
  struct Row {
    const char* in;
    int64_t now;
    std::optional<int64_t> want;
  };
  const Row rows[] = {
      {"0", kNow, 0},
      {"1", kNow, 1},
      {"120", kNow, 120},
      {" 30 ", kNow, 30},
      {"0030", kNow, 30},
      {"86400", kNow, 86400},
      {"999999999", kNow, 999999999},
      {"1000000000", kNow, kMaxS},
      {"99999999999999999", kNow, kMaxS},  // issue 9 item 4: overflowed int64 before
      {"9223372036854775807", kNow, kMaxS},
      {"9223372036854775808", kNow, kMaxS},
      {"999999999999999999999999999999999999999", kNow, kMaxS},
      // dates
      {"Tue, 14 Nov 2023 22:14:20 GMT", kNow, 60},
      {"Tue, 14 Nov 2023 22:13:20 GMT", kNow, 0},
      {"Tue, 14 Nov 2023 22:13:19 GMT", kNow, 0},  // past: no wait
      {"Thu, 01 Jan 1970 00:00:00 GMT", kNow, 0},
      {"Fri, 31 Dec 9999 23:59:59 GMT", kNow, kMaxS},
      {"Tuesday, 14-Nov-23 22:14:20 GMT", kNow, 60},
      {"Tue Nov 14 22:14:20 2023", kNow, 60},
      // absurd clocks cannot overflow the subtraction
      {"Fri, 31 Dec 9999 23:59:59 GMT", INT64_MIN, kMaxS},
      {"Mon, 01 Jan 1900 00:00:00 GMT", INT64_MAX, 0},
      {"Mon, 01 Jan 1900 00:00:00 GMT", INT64_MIN, kMaxS},
      // no advice
      {"", kNow, kNone},
      {"  ", kNow, kNone},
      {"-1", kNow, kNone},
      {"+5", kNow, kNone},
      {"1.5", kNow, kNone},
      {"5s", kNow, kNone},
      {"5 6", kNow, kNone},
      {"0x10", kNow, kNone},
      {"soon", kNow, kNone},
      {"Tue, 14 Nov 2023 22:14:20", kNow, kNone},
  };
  for (const auto& r : rows) {
    INFO('"' << r.in << "\" now=" << r.now);
    CHECK(parseRetryAfter(r.in, r.now) == r.want);
  }
}
