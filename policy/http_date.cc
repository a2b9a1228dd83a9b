// HTTP dates (RFC 9110 §5.6.7) and Retry-After (§10.2.3).
//
// Strict on shape (fixed field widths, exact separators, case-sensitive names
// as the grammar says) so that a date we cannot fully understand is no date at
// all; every number is read from a fixed count of digits, so nothing here can
// overflow, and the calendar arithmetic is Howard Hinnant's days_from_civil.
#include "policy/civil.h"
#include "policy/policy.h"

namespace slip::policy {
namespace {

using civil::civilFromDays;
using civil::daysFromCivil;
using civil::daysInMonth;

constexpr const char* kMonths[12] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
constexpr const char* kDays[7] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
constexpr const char* kLongDays[7] = {"Sunday",   "Monday", "Tuesday", "Wednesday",
                                      "Thursday", "Friday", "Saturday"};

// A read position over the value; every reader fails without moving on error
// only in the sense that the whole parse is abandoned.
struct Cursor {
  std::string_view s;
  size_t i = 0;

  bool lit(std::string_view t) {
    if (s.substr(i, t.size()) != t) return false;
    i += t.size();
    return true;
  }
  // Exactly n digits (n <= 4).
  bool digits(size_t n, int* out) {
    if (i + n > s.size()) return false;
    int v = 0;
    for (size_t k = 0; k < n; k++) {
      char c = s[i + k];
      if (c < '0' || c > '9') return false;
      v = v * 10 + (c - '0');
    }
    *out = v;
    i += n;
    return true;
  }
  // One of `names`; its index.
  template <size_t N>
  bool oneOf(const char* const (&names)[N], int* out) {
    for (size_t k = 0; k < N; k++)
      if (lit(names[k])) {
        *out = static_cast<int>(k);
        return true;
      }
    return false;
  }
  bool done() const { return i == s.size(); }
};

struct Fields {
  int year = 0, month = 0, day = 0, hour = 0, minute = 0, second = 0;
};

bool timeOfDay(Cursor& c, Fields* f) {
  return c.digits(2, &f->hour) && c.lit(":") && c.digits(2, &f->minute) && c.lit(":") &&
         c.digits(2, &f->second);
}

// "Sun, 06 Nov 1994 08:49:37 GMT"
bool imfFixdate(Cursor c, Fields* f) {
  int wd = 0;
  return c.oneOf(kDays, &wd) && c.lit(", ") && c.digits(2, &f->day) && c.lit(" ") &&
         c.oneOf(kMonths, &f->month) && c.lit(" ") && c.digits(4, &f->year) && c.lit(" ") &&
         timeOfDay(c, f) && c.lit(" GMT") && c.done();
}

// "Sunday, 06-Nov-94 08:49:37 GMT"
bool rfc850(Cursor c, Fields* f) {
  int wd = 0, yy = 0;
  if (!(c.oneOf(kLongDays, &wd) && c.lit(", ") && c.digits(2, &f->day) && c.lit("-") &&
        c.oneOf(kMonths, &f->month) && c.lit("-") && c.digits(2, &yy) && c.lit(" ") &&
        timeOfDay(c, f) && c.lit(" GMT") && c.done()))
    return false;
  f->year = yy >= 70 ? 1900 + yy : 2000 + yy;
  return true;
}

// "Sun Nov  6 08:49:37 1994"
bool asctimeDate(Cursor c, Fields* f) {
  int wd = 0;
  if (!(c.oneOf(kDays, &wd) && c.lit(" ") && c.oneOf(kMonths, &f->month) && c.lit(" ")))
    return false;
  if (!(c.lit(" ") ? c.digits(1, &f->day) : c.digits(2, &f->day))) return false;
  return c.lit(" ") && timeOfDay(c, f) && c.lit(" ") && c.digits(4, &f->year) && c.done();
}

std::string_view trimOws(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

std::string twoDigits(int v) { return {static_cast<char>('0' + v / 10), static_cast<char>('0' + v % 10)}; }

}  // namespace

std::optional<int64_t> parseHttpDate(std::string_view value) {
  value = trimOws(value);
  Fields f;
  Cursor c{value};
  if (!imfFixdate(c, &f) && !rfc850(c, &f) && !asctimeDate(c, &f)) return std::nullopt;
  f.month += 1;  // oneOf gave 0..11
  if (f.year < 1900 || f.day < 1 || f.day > daysInMonth(f.year, f.month) || f.hour > 23 ||
      f.minute > 59 || f.second > 60)
    return std::nullopt;
  // A leap second (:60) reads as the first second of the next minute.
  return daysFromCivil(f.year, f.month, f.day) * 86400 + f.hour * 3600 + f.minute * 60 + f.second;
}

std::string formatHttpDate(int64_t t) {
  constexpr int64_t kMax = 253402300799;  // 9999-12-31 23:59:59
  if (t < 0) t = 0;
  if (t > kMax) t = kMax;
  const int64_t days = t / 86400;
  const int64_t secs = t % 86400;
  const civil::Date cv = civilFromDays(days);
  std::string out = kDays[(days + 4) % 7];
  out += ", " + twoDigits(cv.day) + " " + kMonths[cv.month - 1] + " " + std::to_string(cv.year) +
         " " + twoDigits(static_cast<int>(secs / 3600)) + ":" +
         twoDigits(static_cast<int>(secs / 60 % 60)) + ":" + twoDigits(static_cast<int>(secs % 60)) +
         " GMT";
  return out;
}

std::optional<int64_t> parseRetryAfter(std::string_view value, int64_t now) {
  value = trimOws(value);
  if (value.empty()) return std::nullopt;
  if (value.front() >= '0' && value.front() <= '9') {
    // delta-seconds = 1*DIGIT: any length is valid, so saturate rather than
    // refuse ("99999999999999999" means "a very long time", not garbage).
    int64_t n = 0;
    for (char ch : value) {
      if (ch < '0' || ch > '9') return std::nullopt;
      if (n < kRetryAfterMaxSeconds) n = n * 10 + (ch - '0');
    }
    return n < kRetryAfterMaxSeconds ? n : kRetryAfterMaxSeconds;
  }
  std::optional<int64_t> at = parseHttpDate(value);
  if (!at) return std::nullopt;
  // Both are bounded (dates by year 9999), but `now` is the caller's: check.
  int64_t wait = 0;
  if (__builtin_sub_overflow(*at, now, &wait)) return now < 0 ? kRetryAfterMaxSeconds : 0;
  if (wait < 0) return 0;
  return wait < kRetryAfterMaxSeconds ? wait : kRetryAfterMaxSeconds;
}

}  // namespace slip::policy
