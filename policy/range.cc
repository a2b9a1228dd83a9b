// Range math (RFC 9110 §14): the wire form as the client wrote it, the
// half-open form clamped to a length, and the header values built from them.
//
// Parsing is tolerant where RFC 9110 asks recipients to be (case of the unit,
// OWS around list elements, empty list elements) and strict everywhere else:
// a header we cannot fully understand is ignored, never half-honoured.
#include <cassert>
#include <charconv>

#include "policy/policy.h"

namespace slip::policy {
namespace {

bool isOws(char c) { return c == ' ' || c == '\t'; }

std::string_view trimOws(std::string_view s) {
  while (!s.empty() && isOws(s.front())) s.remove_prefix(1);
  while (!s.empty() && isOws(s.back())) s.remove_suffix(1);
  return s;
}

bool ieq(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); i++) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

// 1*DIGIT that fits in uint64; no sign, no spaces.
bool parseDigits(std::string_view s, uint64_t* out) {
  if (s.empty()) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && p == s.data() + s.size();
}

// One range-spec: "a-b", "a-" or "-n". False if it is not one.
bool parseSpec(std::string_view spec, WireRange* w) {
  size_t dash = spec.find('-');
  if (dash == std::string_view::npos) return false;
  std::string_view a = trimOws(spec.substr(0, dash));
  std::string_view b = trimOws(spec.substr(dash + 1));
  if (a.empty()) {
    w->kind = WireRange::Kind::Suffix;
    return parseDigits(b, &w->suffix);
  }
  w->kind = WireRange::Kind::Single;
  if (!parseDigits(a, &w->first)) return false;
  if (b.empty()) return true;
  uint64_t last = 0;
  if (!parseDigits(b, &last) || last < w->first) return false;
  w->last = last;
  return true;
}

}  // namespace

WireRange parseRange(std::string_view header) {
  WireRange bad;
  bad.invalid = true;
  header = trimOws(header);
  // An empty value is how callers say "no Range header".
  if (header.empty()) return {};
  size_t eq = header.find('=');
  if (eq == std::string_view::npos || !ieq(trimOws(header.substr(0, eq)), "bytes")) return bad;

  WireRange out;
  int count = 0;
  std::string_view rest = header.substr(eq + 1);
  while (true) {
    size_t comma = rest.find(',');
    std::string_view elem = trimOws(rest.substr(0, comma));
    // RFC 9110 §5.6.1: empty list elements are ignored, not errors.
    if (!elem.empty()) {
      WireRange one;
      if (!parseSpec(elem, &one)) return bad;
      if (++count == 1) out = one;
    }
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }
  if (count == 0) return bad;
  if (count > 1) {
    WireRange multi;
    multi.kind = WireRange::Kind::Multiple;
    return multi;
  }
  return out;
}

RangeAnswer resolveRange(const WireRange& w, uint64_t length) {
  RangeAnswer a;
  a.range = {0, length};
  RangeAnswer unsatisfiable;
  unsatisfiable.kind = RangeAnswer::Kind::Unsatisfiable;
  switch (w.kind) {
    case WireRange::Kind::None:
    case WireRange::Kind::Multiple:
      return a;
    case WireRange::Kind::Single:
      // Also `bytes=0-` on an empty body: no byte can satisfy it (RFC 9110
      // §14.1.1: a first-pos at or past the length is unsatisfiable).
      if (w.first >= length) return unsatisfiable;
      a.kind = RangeAnswer::Kind::Partial;
      a.range.begin = w.first;
      if (w.last && *w.last < length - 1) a.range.end = *w.last + 1;
      return a;
    case WireRange::Kind::Suffix:
      if (w.suffix == 0 || length == 0) return unsatisfiable;
      a.kind = RangeAnswer::Kind::Partial;
      if (w.suffix < length) a.range.begin = length - w.suffix;
      return a;
  }
  return a;
}

std::string contentRange(const ByteRange& r, uint64_t length) {
  assert(r.end > r.begin && r.end <= length);
  return "bytes " + std::to_string(r.begin) + "-" + std::to_string(r.end - 1) + "/" +
         std::to_string(length);
}

std::string contentRangeUnsatisfied(uint64_t length) { return "bytes */" + std::to_string(length); }

std::string upstreamRange(const ByteRange& r) {
  assert(r.end > r.begin);
  return std::to_string(r.begin) + "-" + std::to_string(r.end - 1);
}

std::string upstreamRange(const WireRange& w) {
  switch (w.kind) {
    case WireRange::Kind::Single:
      return std::to_string(w.first) + "-" + (w.last ? std::to_string(*w.last) : "");
    case WireRange::Kind::Suffix:
      return "-" + std::to_string(w.suffix);
    case WireRange::Kind::None:
    case WireRange::Kind::Multiple:
      // Nothing to forward: both are answered with the whole representation.
      return "";
  }
  return "";
}

std::string wireRangeHeader(const WireRange& w) {
  std::string r = upstreamRange(w);
  return r.empty() ? r : "bytes=" + r;
}

std::optional<ContentRange> parseContentRange(std::string_view v) {
  v = trimOws(v);
  size_t sp = v.find(' ');
  if (sp == std::string_view::npos || !ieq(v.substr(0, sp), "bytes")) return std::nullopt;
  std::string_view rest = v.substr(sp + 1);
  size_t slash = rest.find('/');
  if (slash == std::string_view::npos) return std::nullopt;
  std::string_view range = rest.substr(0, slash);
  std::string_view len = rest.substr(slash + 1);

  ContentRange cr;
  if (len != "*") {
    uint64_t n = 0;
    if (!parseDigits(len, &n)) return std::nullopt;
    cr.length = n;
  }
  if (range == "*") {
    // "bytes */*" says nothing at all.
    if (!cr.length) return std::nullopt;
    return cr;
  }
  size_t dash = range.find('-');
  uint64_t a = 0, b = 0;
  if (dash == std::string_view::npos || !parseDigits(range.substr(0, dash), &a) ||
      !parseDigits(range.substr(dash + 1), &b) || a > b || b == UINT64_MAX)
    return std::nullopt;  // b == 2^64-1 has no half-open end: no real object is that big
  if (cr.length && b >= *cr.length) return std::nullopt;
  cr.range = ByteRange{a, b + 1};
  return cr;
}

bool ifRangeAllows(std::string_view ifRange, std::string_view etag, std::string_view lastModified) {
  ifRange = trimOws(ifRange);
  if (ifRange.empty()) return true;
  // RFC 9110 §13.1.5: weak validators never allow a range.
  if (ifRange.starts_with("W/")) return false;
  if (ifRange.front() == '"')
    return ifRange.size() >= 2 && ifRange.back() == '"' && ifRange == etag;
  return !lastModified.empty() && ifRange == lastModified;
}

}  // namespace slip::policy
