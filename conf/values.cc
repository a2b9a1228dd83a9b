// Value parsers shared by the loader, the command line and the tests.
#include <arpa/inet.h>
#include <crypt.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstring>
#include <memory>

#include "conf/conf.h"

namespace slip::conf {
namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

void say(std::string* why, std::string msg) {
  if (why) *why = std::move(msg);
}

// "1.5G" split into its parts: the number as whole + num/den (den = 10^k
// for k fraction digits) and the unit. False if there are no digits before
// or after the point, or too many of them.
struct Number {
  uint64_t whole = 0;
  uint64_t num = 0;
  uint64_t den = 1;
  std::string_view unit;
  bool fraction() const { return num != 0; }
};

constexpr size_t kMaxFractionDigits = 9;

bool splitNumber(std::string_view s, Number* n, std::string* why, const char* what) {
  size_t i = 0;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') i++;
  if (i == 0) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + i, n->whole);
  if (ec != std::errc() || p != s.data() + i) {
    say(why, std::string(what) + " too large: '" + std::string(s) + "'");
    return false;
  }
  if (i < s.size() && s[i] == '.') {
    size_t b = ++i;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') i++;
    if (i == b) return false;
    if (i - b > kMaxFractionDigits) {
      say(why, "too many decimal places in '" + std::string(s) + "' (at most " +
                   std::to_string(kMaxFractionDigits) + ")");
      return false;
    }
    for (size_t k = b; k < i; k++) {
      n->num = n->num * 10 + static_cast<uint64_t>(s[k] - '0');
      n->den *= 10;
    }
  }
  n->unit = trim(s.substr(i));
  return true;
}

// whole * mult + num * mult / den, rounded half up; nullopt past INT64_MAX.
std::optional<int64_t> scale(const Number& n, uint64_t mult) {
  using U = unsigned __int128;
  U v = static_cast<U>(n.whole) * mult + (static_cast<U>(n.num) * mult * 2 + n.den) / (2 * n.den);
  if (v > static_cast<U>(INT64_MAX)) return std::nullopt;
  return static_cast<int64_t>(v);
}

bool ieq(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); i++) {
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i])))
      return false;
  }
  return true;
}

}  // namespace

std::optional<int64_t> parseSize(std::string_view s, std::string* why) {
  s = trim(s);
  Number n;
  if (s.empty()) {
    say(why, "empty size");
    return std::nullopt;
  }
  if (s.front() == '-') {
    say(why, "size must not be negative: '" + std::string(s) + "'");
    return std::nullopt;
  }
  std::string err;
  if (!splitNumber(s, &n, &err, "size")) {
    say(why, !err.empty() ? err
                          : "not a size: '" + std::string(s) + "' (examples: 4096, 64K, 1.5G, 50G)");
    return std::nullopt;
  }
  const std::string_view unit = n.unit;
  int shift = 0;
  if (unit.empty() || ieq(unit, "b")) shift = 0;
  else if (ieq(unit, "k") || ieq(unit, "kb") || ieq(unit, "kib")) shift = 10;
  else if (ieq(unit, "m") || ieq(unit, "mb") || ieq(unit, "mib")) shift = 20;
  else if (ieq(unit, "g") || ieq(unit, "gb") || ieq(unit, "gib")) shift = 30;
  else if (ieq(unit, "t") || ieq(unit, "tb") || ieq(unit, "tib")) shift = 40;
  else {
    say(why, "unknown size unit '" + std::string(unit) + "' (use K, M, G or T)");
    return std::nullopt;
  }
  if (shift == 0 && n.fraction()) {
    say(why, "a number of bytes must be whole: '" + std::string(s) + "' (or give a unit: 1.5K)");
    return std::nullopt;
  }
  auto v = scale(n, uint64_t{1} << shift);
  if (!v) say(why, "size too large: '" + std::string(s) + "'");
  return v;
}

std::optional<int64_t> parseDuration(std::string_view s, std::string* why) {
  s = trim(s);
  Number n;
  if (s.empty()) {
    say(why, "empty duration");
    return std::nullopt;
  }
  if (s.front() == '-') {
    say(why, "duration must not be negative: '" + std::string(s) + "'");
    return std::nullopt;
  }
  std::string err;
  if (!splitNumber(s, &n, &err, "duration")) {
    say(why, !err.empty()
                 ? err
                 : "not a duration: '" + std::string(s) + "' (examples: 500ms, 90s, 1.5m, 4h)");
    return std::nullopt;
  }
  const std::string_view unit = n.unit;
  uint64_t mult = 0;
  if (unit == "ms") mult = 1;
  else if (unit.empty() || unit == "s") mult = 1000;
  else if (unit == "m" || unit == "min") mult = 60'000;
  else if (unit == "h") mult = 3'600'000;
  else if (unit == "d") mult = 86'400'000;
  else {
    say(why, "unknown duration unit '" + std::string(unit) + "' (use ms, s, m, h or d)");
    return std::nullopt;
  }
  if (mult == 1 && n.fraction()) {
    say(why, "milliseconds must be whole: '" + std::string(s) + "'");
    return std::nullopt;
  }
  auto v = scale(n, mult);
  if (!v) say(why, "duration too large: '" + std::string(s) + "'");
  return v;
}

std::optional<bool> parseBool(std::string_view s, std::string* why) {
  s = trim(s);
  for (auto t : {"on", "yes", "true", "1"})
    if (ieq(s, t)) return true;
  for (auto f : {"off", "no", "false", "0"})
    if (ieq(s, f)) return false;
  say(why, "not a boolean: '" + std::string(s) + "' (use on or off)");
  return std::nullopt;
}

std::optional<Cidr> parseCidr(std::string_view s, std::string* why) {
  s = trim(s);
  Cidr c;
  c.text = std::string(s);
  std::string_view addr = s;
  std::optional<unsigned> bits;
  if (auto slash = s.find('/'); slash != std::string_view::npos) {
    addr = s.substr(0, slash);
    std::string_view b = s.substr(slash + 1);
    unsigned v = 0;
    auto [p, ec] = std::from_chars(b.data(), b.data() + b.size(), v);
    if (b.empty() || ec != std::errc() || p != b.data() + b.size()) {
      say(why, "bad prefix length in '" + std::string(s) + "'");
      return std::nullopt;
    }
    bits = v;
  }
  std::string a(addr);
  in_addr v4{};
  in6_addr v6{};
  if (inet_pton(AF_INET, a.c_str(), &v4) == 1) {
    if (bits && *bits > 32) {
      say(why, "IPv4 prefix length over 32 in '" + std::string(s) + "'");
      return std::nullopt;
    }
    c.addr[10] = 0xff;
    c.addr[11] = 0xff;
    std::memcpy(c.addr + 12, &v4, 4);
    c.prefix = static_cast<uint8_t>(96 + (bits ? *bits : 32));
  } else if (inet_pton(AF_INET6, a.c_str(), &v6) == 1) {
    if (bits && *bits > 128) {
      say(why, "IPv6 prefix length over 128 in '" + std::string(s) + "'");
      return std::nullopt;
    }
    std::memcpy(c.addr, &v6, 16);
    c.prefix = static_cast<uint8_t>(bits ? *bits : 128);
  } else {
    say(why, "not an IP address or network: '" + std::string(s) + "'");
    return std::nullopt;
  }
  // Clear host bits so matching can compare whole bytes.
  for (int i = 0; i < 16; i++) {
    int keep = std::clamp(static_cast<int>(c.prefix) - i * 8, 0, 8);
    c.addr[i] &= static_cast<uint8_t>(0xff00 >> keep);
  }
  return c;
}

std::optional<ListenAddr> parseListen(std::string_view s, std::string* why) {
  s = trim(s);
  ListenAddr l;
  if (size_t sp = s.find_first_of(" \t"); sp != std::string_view::npos) {
    std::string_view flag = trim(s.substr(sp));
    if (flag != "tls") {
      say(why, "unknown listen flag '" + std::string(flag) + "' (the only flag is tls: " +
                   "listen = 0.0.0.0:8443 tls)");
      return std::nullopt;
    }
    l.tls = true;
    s = s.substr(0, sp);
  }
  std::string_view host, port;
  if (!s.empty() && s.front() == '[') {
    auto close = s.find(']');
    if (close == std::string_view::npos || close + 1 >= s.size() || s[close + 1] != ':') {
      say(why, "bad listen address '" + std::string(s) + "' (use [::1]:8690)");
      return std::nullopt;
    }
    host = s.substr(1, close - 1);
    port = s.substr(close + 2);
    in6_addr v6{};
    if (inet_pton(AF_INET6, std::string(host).c_str(), &v6) != 1) {
      say(why, "not an IPv6 address: '" + std::string(host) + "'");
      return std::nullopt;
    }
  } else {
    auto colon = s.rfind(':');
    if (colon == std::string_view::npos) {
      say(why, "listen address needs a port: '" + std::string(s) + "' (use 127.0.0.1:8690)");
      return std::nullopt;
    }
    host = s.substr(0, colon);
    port = s.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) {
      say(why, "IPv6 listen addresses need brackets: '[" + std::string(host) + "]:port'");
      return std::nullopt;
    }
    if (host.empty()) host = "0.0.0.0";
    in_addr v4{};
    if (inet_pton(AF_INET, std::string(host).c_str(), &v4) != 1) {
      say(why, "not a numeric IPv4 address: '" + std::string(host) + "'");
      return std::nullopt;
    }
  }
  unsigned p = 0;
  auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
  if (port.empty() || ec != std::errc() || ptr != port.data() + port.size() || p > 65535) {
    say(why, "bad port '" + std::string(port) + "' (0-65535)");
    return std::nullopt;
  }
  l.host = std::string(host);
  l.port = static_cast<uint16_t>(p);
  return l;
}

bool checkPasswordHash(std::string_view hash, std::string* why) {
  std::string h(hash);
  const char* make = " (make one with `slipstream passwd` or `mkpasswd`)";
  if (h.empty() || h.find_first_of(" \t") != std::string::npos) {
    say(why, std::string("not a password hash") + make);
    return false;
  }
  int method = crypt_checksalt(h.c_str());
  // Any two salt characters read as a DES setting: only a 13-character
  // string can be a DES hash.
  if (h[0] != '$' && h[0] != '_' && h.size() != 13) method = CRYPT_SALT_INVALID;
  if (method == CRYPT_SALT_METHOD_LEGACY || method == CRYPT_SALT_TOO_CHEAP) {
    say(why, std::string("a weak hash method (DES, MD5 or SHA-256-crypt, or too few rounds): use yescrypt") + make);
    return false;
  }
  if (method != CRYPT_SALT_OK) {
    say(why, std::string("not a crypt(3) hash such as $y$j9T$...") + make +
                 "; a plain-text password is never accepted");
    return false;
  }
  // Hashing anything with a complete hash as the setting gives a hash of the
  // same shape; only the salt, or a hash cut short, gives another.
  auto data = std::make_unique<crypt_data>();
  const char* out = crypt_rn("", h.c_str(), data.get(), sizeof *data);
  std::string o = out ? out : "*";
  if (o[0] == '*' || o.size() != h.size() || o.substr(0, o.rfind('$')) != h.substr(0, h.rfind('$'))) {
    say(why, std::string("incomplete hash (only the salt, or cut short)") + make);
    return false;
  }
  return true;
}

namespace {

bool isTokenChar(char ch) {
  return std::isalnum(static_cast<unsigned char>(ch)) ||
         std::string_view("!#$%&'*+-.^_`|~").find(ch) != std::string_view::npos;
}

// Headers the fetcher sets itself: framing, connection management, ranges
// and encodings. One from a source or a `header` line would change what the
// bytes on the wire mean (or smuggle a second request), so none is accepted.
constexpr std::string_view kOwnedHeaders[] = {
    "content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection",
    "upgrade",        "te",                "trailer",    "expect",     "range",
    "if-range",       "accept-encoding"};

}  // namespace

std::string printable(std::string_view s) {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (char ch : s) {
    auto u = static_cast<unsigned char>(ch);
    if (u < 0x20 || u >= 0x7f) {
      out += "\\x";
      out += kHex[u >> 4];
      out += kHex[u & 15];
    } else {
      out += ch;
    }
  }
  return out;
}

std::optional<std::string> headerProblem(std::string_view name, std::string_view value) {
  if (name.empty()) return std::string("empty header name");
  if (!std::all_of(name.begin(), name.end(), isTokenChar))
    return "bad header name '" + printable(name) +
           "' (letters, digits and !#$%&'*+-.^_`|~ only, no spaces)";
  std::string lower(name);
  for (char& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  for (std::string_view owned : kOwnedHeaders)
    if (lower == owned)
      return "header '" + std::string(name) + "' is set by slipstream itself and cannot be given";
  // The value is never quoted back: headers often carry cookies or tokens.
  for (char ch : value) {
    auto u = static_cast<unsigned char>(ch);
    if (ch == '\r' || ch == '\n' || ch == '\0')
      return "header '" + std::string(name) + "': value contains CR, LF or NUL";
    if ((u < 0x20 && ch != '\t') || u == 0x7f)
      return "header '" + std::string(name) + "': value contains a control character";
  }
  return std::nullopt;
}

size_t editDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); j++) prev[j] = j;
  for (size_t i = 1; i <= a.size(); i++) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); j++) {
      size_t sub = prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, sub});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

const char* sourceTypeName(SourceType t) {
  switch (t) {
    case SourceType::Http: return "http";
    case SourceType::Local: return "local";
    case SourceType::Alist: return "alist";
    case SourceType::AliyundriveOpen: return "aliyundrive_open";
  }
  return "?";
}

const char* deliveryName(Delivery d) {
  switch (d) {
    case Delivery::Auto: return "auto";
    case Delivery::Redirect: return "redirect";
    case Delivery::Proxy: return "proxy";
    case Delivery::ProxyUrl: return "proxy_url";
    case Delivery::Deny: return "deny";
  }
  return "?";
}

std::string Error::str() const {
  std::string s = file + ":" + std::to_string(line) + ":";
  if (!section.empty()) s += " [" + section + "]";
  if (!key.empty()) s += " " + key + ":";
  s += " " + message;
  return s;
}

}  // namespace slip::conf
