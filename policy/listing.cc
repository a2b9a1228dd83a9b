// Names and dates that folder listings carry (SPEC §4): which names the
// gateway passes on, and the RFC 3339 / IMF-fixdate forms of their times.
#include <ctime>

#include "policy/policy.h"

namespace slip::policy {
namespace {

// Length of the UTF-8 sequence at s[i], 0 if it is not a valid scalar value
// that XML 1.0 allows (no surrogates, no U+FFFE/U+FFFF, shortest form only).
size_t utf8Char(std::string_view s, size_t i) {
  auto b = [&s](size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char c = b(i);
  if (c < 0x80) return 1;
  size_t n = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 0;
  if (n == 0 || c > 0xF4 || i + n > s.size()) return 0;
  uint32_t cp = c & (0xFF >> (n + 1));
  for (size_t k = 1; k < n; k++) {
    if ((b(i + k) & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (b(i + k) & 0x3F);
  }
  static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF) || cp == 0xFFFE ||
      cp == 0xFFFF)
    return 0;
  return n;
}

bool digits(std::string_view s, size_t at, size_t n, int* out) {
  if (at + n > s.size()) return false;
  int v = 0;
  for (size_t i = at; i < at + n; i++) {
    if (s[i] < '0' || s[i] > '9') return false;
    v = v * 10 + (s[i] - '0');
  }
  *out = v;
  return true;
}

}  // namespace

bool listableName(std::string_view name) {
  if (name.empty() || name == "." || name == ".." || name.size() > kMaxNameBytes) return false;
  for (size_t i = 0; i < name.size();) {
    unsigned char c = static_cast<unsigned char>(name[i]);
    if (c < 0x20 || c == 0x7f || c == '/' || c == '\\') return false;
    size_t n = utf8Char(name, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::optional<int64_t> parseRfc3339Ms(std::string_view s) {
  int y, mo, d, h, mi, sec;
  if (!digits(s, 0, 4, &y) || s.size() < 19 || s[4] != '-' || !digits(s, 5, 2, &mo) ||
      s[7] != '-' || !digits(s, 8, 2, &d) || (s[10] != 'T' && s[10] != 't' && s[10] != ' ') ||
      !digits(s, 11, 2, &h) || s[13] != ':' || !digits(s, 14, 2, &mi) || s[16] != ':' ||
      !digits(s, 17, 2, &sec))
    return std::nullopt;
  if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60) return std::nullopt;
  size_t i = 19;
  int ms = 0;
  if (i < s.size() && s[i] == '.') {
    size_t n = 0;
    for (i++; i < s.size() && s[i] >= '0' && s[i] <= '9'; i++, n++)
      if (n < 3) ms = ms * 10 + (s[i] - '0');
    if (n == 0) return std::nullopt;
    for (; n < 3; n++) ms *= 10;
  }
  int64_t offsetMin = 0;
  if (i < s.size() && (s[i] == 'Z' || s[i] == 'z')) {
    i++;
  } else if (i < s.size() && (s[i] == '+' || s[i] == '-')) {
    int oh, om;
    if (!digits(s, i + 1, 2, &oh) || i + 3 >= s.size() || s[i + 3] != ':' ||
        !digits(s, i + 4, 2, &om) || oh > 23 || om > 59)
      return std::nullopt;
    offsetMin = (s[i] == '+' ? 1 : -1) * (oh * 60 + om);
    i += 6;
  } else {
    return std::nullopt;
  }
  if (i != s.size()) return std::nullopt;
  tm t{};
  t.tm_year = y - 1900;
  t.tm_mon = mo - 1;
  t.tm_mday = d;
  t.tm_hour = h;
  t.tm_min = mi;
  t.tm_sec = sec;
  int64_t secs = static_cast<int64_t>(timegm(&t));
  return (secs - offsetMin * 60) * 1000 + ms;
}

}  // namespace slip::policy
