// Value parsers shared by the loader, the command line and the tests.
#include <arpa/inet.h>
#include <crypt.h>

#include <algorithm>
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

// Splits "123abc" into the number and the unit; false if no digits or overflow.
bool numberAndUnit(std::string_view s, uint64_t* n, std::string_view* unit) {
  size_t i = 0;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') i++;
  if (i == 0) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + i, *n);
  if (ec != std::errc() || p != s.data() + i) return false;
  *unit = trim(s.substr(i));
  return true;
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
  uint64_t n = 0;
  std::string_view unit;
  if (s.empty()) {
    say(why, "empty size");
    return std::nullopt;
  }
  if (s.front() == '-') {
    say(why, "size must not be negative: '" + std::string(s) + "'");
    return std::nullopt;
  }
  if (!numberAndUnit(s, &n, &unit)) {
    say(why, "not a size: '" + std::string(s) + "' (examples: 4096, 64K, 4M, 50G)");
    return std::nullopt;
  }
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
  if (n > (static_cast<uint64_t>(INT64_MAX) >> shift)) {
    say(why, "size too large: '" + std::string(s) + "'");
    return std::nullopt;
  }
  return static_cast<int64_t>(n << shift);
}

std::optional<int64_t> parseDuration(std::string_view s, std::string* why) {
  s = trim(s);
  uint64_t n = 0;
  std::string_view unit;
  if (s.empty()) {
    say(why, "empty duration");
    return std::nullopt;
  }
  if (s.front() == '-') {
    say(why, "duration must not be negative: '" + std::string(s) + "'");
    return std::nullopt;
  }
  if (!numberAndUnit(s, &n, &unit)) {
    say(why, "not a duration: '" + std::string(s) + "' (examples: 500ms, 90s, 15m, 4h)");
    return std::nullopt;
  }
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
  if (n > static_cast<uint64_t>(INT64_MAX) / mult) {
    say(why, "duration too large: '" + std::string(s) + "'");
    return std::nullopt;
  }
  return static_cast<int64_t>(n * mult);
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
