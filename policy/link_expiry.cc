// Link expiry read from the link (issue 11 item 4).
//
// One pass over the query collects the first value of each name we know;
// then the forms are tried from the most specific (a signed date plus a
// lifetime) to the weakest (a bare `t=`). Every number is read from a bounded
// count of digits and checked against a plausible span before any
// arithmetic, so no input can overflow.
#include <array>

#include "policy/civil.h"
#include "policy/policy.h"

namespace slip::policy {
namespace {

// Plausible absolute expiries: 2001-09-09T01:46:40Z (the first 10-digit Unix
// second) up to 2100-01-01. Anything outside is not a timestamp of a link
// made today, whatever the parameter is called.
constexpr int64_t kMinSeconds = 1'000'000'000;
constexpr int64_t kEndSeconds = 4'102'444'800;
constexpr int64_t kMaxRelativeSeconds = 1'000'000'000;

enum Name { AmzDate, AmzExpires, GoogDate, GoogExpires, OssDate, OssExpires, QSignTime, Expires, E, T,
            kNames };
constexpr std::array<std::string_view, kNames> kNameText = {
    "x-amz-date", "x-amz-expires", "x-goog-date", "x-goog-expires", "x-oss-date",
    "x-oss-expires", "q-sign-time", "expires", "e", "t"};
// Longest name, percent-encoded throughout: longer raw names cannot match.
constexpr size_t kMaxRawName = 3 * 14;

int hexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Percent-decodes; an invalid escape stays as it is (as queryParam does).
std::string decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); i++) {
    int hi = -1, lo = -1;
    if (s[i] == '%' && i + 2 < s.size()) {
      hi = hexValue(s[i + 1]);
      lo = hexValue(s[i + 2]);
    }
    if (hi < 0 || lo < 0) {
      out += s[i];
    } else {
      out += static_cast<char>(hi * 16 + lo);
      i += 2;
    }
  }
  return out;
}

char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

int nameIndex(std::string_view raw) {
  if (raw.size() > kMaxRawName) return -1;
  std::string name = decode(raw);
  for (char& c : name) c = lower(c);
  for (int i = 0; i < kNames; i++)
    if (name == kNameText[static_cast<size_t>(i)]) return i;
  return -1;
}

using Values = std::array<std::optional<std::string>, kNames>;

Values collect(std::string_view url) {
  Values v;
  size_t q = url.find('?');
  if (q == std::string_view::npos) return v;
  std::string_view query = url.substr(q + 1);
  query = query.substr(0, query.find('#'));
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    size_t eq = pair.find('=');
    int i = nameIndex(pair.substr(0, eq));
    if (i >= 0 && !v[static_cast<size_t>(i)])
      v[static_cast<size_t>(i)] = eq == std::string_view::npos ? "" : decode(pair.substr(eq + 1));
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return v;
}

// 1..maxDigits digits, nothing else.
std::optional<int64_t> digits(std::string_view s, size_t maxDigits) {
  if (s.empty() || s.size() > maxDigits) return std::nullopt;
  int64_t n = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    n = n * 10 + (c - '0');
  }
  return n;
}

// Unix seconds (or, with allowMs, milliseconds) of a plausible expiry → ms.
// No leading zero: "01700000000" is not a timestamp anybody writes.
std::optional<int64_t> absolute(const std::optional<std::string>& s, bool allowMs) {
  if (!s || s->empty() || s->front() == '0') return std::nullopt;
  auto n = digits(*s, 13);
  if (!n) return std::nullopt;
  if (*n >= kMinSeconds && *n < kEndSeconds) return *n * 1000;
  if (allowMs && *n >= kMinSeconds * 1000 && *n < kEndSeconds * 1000) return *n;
  return std::nullopt;
}

std::optional<int64_t> relative(const std::optional<std::string>& s) {
  if (!s) return std::nullopt;
  auto n = digits(*s, 10);
  if (!n || *n > kMaxRelativeSeconds) return std::nullopt;
  return n;
}

// ISO 8601 basic "20231114T221320Z" → Unix seconds, plausible only.
std::optional<int64_t> basicIso(const std::optional<std::string>& s) {
  if (!s || s->size() != 16 || (*s)[8] != 'T' || (*s)[15] != 'Z') return std::nullopt;
  std::string_view v = *s;
  auto y = digits(v.substr(0, 4), 4), mo = digits(v.substr(4, 2), 2), d = digits(v.substr(6, 2), 2);
  auto h = digits(v.substr(9, 2), 2), mi = digits(v.substr(11, 2), 2), se = digits(v.substr(13, 2), 2);
  if (!y || !mo || !d || !h || !mi || !se) return std::nullopt;
  if (*mo < 1 || *mo > 12 || *d < 1 || *d > civil::daysInMonth(*y, static_cast<int>(*mo)) ||
      *h > 23 || *mi > 59 || *se > 60)
    return std::nullopt;
  int64_t t = civil::daysFromCivil(*y, static_cast<int>(*mo), static_cast<int>(*d)) * 86400 +
              *h * 3600 + *mi * 60 + *se;
  if (t < kMinSeconds || t >= kEndSeconds) return std::nullopt;
  return t;
}

std::optional<int64_t> datePlus(const std::optional<std::string>& date,
                                const std::optional<std::string>& life) {
  auto t = basicIso(date);
  auto n = relative(life);
  if (!t || !n) return std::nullopt;
  return (*t + *n) * 1000;  // both bounded: far from overflow
}

// "1700000000;1700003600" → the end, which must not precede the start.
std::optional<int64_t> signTime(const std::optional<std::string>& s) {
  if (!s) return std::nullopt;
  size_t semi = s->find(';');
  if (semi == std::string::npos) return std::nullopt;
  auto start = absolute(s->substr(0, semi), false);
  auto end = absolute(s->substr(semi + 1), false);
  if (!start || !end || *end < *start) return std::nullopt;
  return end;
}

}  // namespace

const char* linkExpiryFormName(LinkExpiryForm f) {
  switch (f) {
    case LinkExpiryForm::AmzSigV4:
      return "x-amz-date+x-amz-expires";
    case LinkExpiryForm::GoogV4:
      return "x-goog-date+x-goog-expires";
    case LinkExpiryForm::OssV4:
      return "x-oss-date+x-oss-expires";
    case LinkExpiryForm::OssExpires:
      return "x-oss-expires";
    case LinkExpiryForm::CosSignTime:
      return "q-sign-time";
    case LinkExpiryForm::Expires:
      return "expires";
    case LinkExpiryForm::Plain:
      return "e/t";
  }
  return "?";
}

std::optional<LinkExpiry> linkExpiry(std::string_view url) {
  const Values v = collect(url);
  using F = LinkExpiryForm;
  const std::pair<F, std::optional<int64_t>> tries[] = {
      {F::AmzSigV4, datePlus(v[AmzDate], v[AmzExpires])},
      {F::GoogV4, datePlus(v[GoogDate], v[GoogExpires])},
      {F::OssV4, datePlus(v[OssDate], v[OssExpires])},
      {F::OssExpires, absolute(v[OssExpires], false)},
      {F::CosSignTime, signTime(v[QSignTime])},
      {F::Expires, absolute(v[Expires], true)},
      {F::Plain, absolute(v[E], true)},
      {F::Plain, absolute(v[T], true)},
  };
  for (const auto& [form, ms] : tries)
    if (ms) return LinkExpiry{*ms, form};
  return std::nullopt;
}

std::optional<int64_t> writtenLinkExpiryMs(std::string_view url, int64_t resolvedAtMs) {
  std::optional<LinkExpiry> e = linkExpiry(url);
  if (!e) return std::nullopt;
  if (e->form == LinkExpiryForm::Plain && e->unixMs <= resolvedAtMs) return std::nullopt;
  return e->unixMs;
}

}  // namespace slip::policy
