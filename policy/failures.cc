// Upstream failures (policy.h, "upstream failures" and "links"): the
// transport table, the one retry decision every path makes, the throughput
// judge that replaces curl's 1 byte/s low-speed limit, and the check of a
// link a source returned.
#include <algorithm>
#include <cctype>

#include "policy/policy.h"
#include "policy/snake_name.h"

namespace slip::policy {

// ------------------------------------------------------------------ transport table

const char* transportFailureName(TransportFailure f) {
  switch (f) {
#define SLIP_TRANSPORT_FAILURE_NAME(name, permanent, link, reason, text) \
  case TransportFailure::name: {                                        \
    static constexpr SnakeName code(#name);                             \
    return code.chars;                                                  \
  }
    SLIP_TRANSPORT_FAILURES(SLIP_TRANSPORT_FAILURE_NAME)
#undef SLIP_TRANSPORT_FAILURE_NAME
  }
  return "unknown";
}

bool transportPermanent(TransportFailure f) {
  switch (f) {
#define SLIP_TRANSPORT_FAILURE_PERMANENT(name, permanent, link, reason, text) \
  case TransportFailure::name:                                               \
    return permanent;
    SLIP_TRANSPORT_FAILURES(SLIP_TRANSPORT_FAILURE_PERMANENT)
#undef SLIP_TRANSPORT_FAILURE_PERMANENT
  }
  return false;
}

bool transportBlamesLink(TransportFailure f) {
  switch (f) {
#define SLIP_TRANSPORT_FAILURE_LINK(name, permanent, link, reason, text) \
  case TransportFailure::name:                                          \
    return link;
    SLIP_TRANSPORT_FAILURES(SLIP_TRANSPORT_FAILURE_LINK)
#undef SLIP_TRANSPORT_FAILURE_LINK
  }
  return false;
}

Reason transportReason(TransportFailure f) {
  switch (f) {
#define SLIP_TRANSPORT_FAILURE_REASON(name, permanent, link, reason, text) \
  case TransportFailure::name:                                            \
    return Reason::reason;
    SLIP_TRANSPORT_FAILURES(SLIP_TRANSPORT_FAILURE_REASON)
#undef SLIP_TRANSPORT_FAILURE_REASON
  }
  return Reason::UpstreamReset;
}

// ------------------------------------------------------------------ retry decision

FetchFailure fetchFailure(const UpstreamJudgement& j) {
  FetchFailure f;
  f.permanent = j.permanent;
  switch (j.verdict) {
    case UpstreamVerdict::Busy:
      f.reason = Reason::UpstreamBusy;
      f.retryAfterMs = j.retryAfterMs;
      break;
    case UpstreamVerdict::ServerError:
      f.reason = Reason::UpstreamStatus;
      f.retryAfterMs = j.retryAfterMs;
      break;
    case UpstreamVerdict::BadAnswer: f.reason = Reason::UpstreamBadResponse; break;
    default: f.reason = Reason::UpstreamStatus; break;
  }
  return f;
}

FetchFailure fetchFailure(TransportFailure t) {
  FetchFailure f;
  f.reason = transportReason(t);
  f.permanent = transportPermanent(t);
  return f;
}

RetryDecision retryDecision(const FetchFailure& f, int attempts, int64_t sinceFirstMs) {
  RetryDecision d;
  d.reason = f.reason;
  const bool busy = f.reason == Reason::UpstreamBusy;
  if (busy && f.retryAfterMs >= 0)
    d.retryAfterS = std::min<int64_t>((f.retryAfterMs + 999) / 1000, kRetryAfterEchoMaxSeconds);
  if (f.permanent || attempts >= kFetchAttempts) return d;
  if (f.retryAfterMs > kRetryWaitBoundMs) {
    d.reason = Reason::UpstreamBusy;  // a 5xx that asks for a long wait is busy too
    d.retryAfterS = std::min<int64_t>((f.retryAfterMs + 999) / 1000, kRetryAfterEchoMaxSeconds);
    return d;
  }
  int64_t delay = f.retryAfterMs >= 0 ? f.retryAfterMs : backoffDelayMs(kFetchBackoff, attempts);
  if (std::max<int64_t>(sinceFirstMs, 0) + delay > kRetryWaitBoundMs) return d;
  d.retry = true;
  d.delayMs = delay;
  d.reason = Reason::None;
  d.retryAfterS = -1;
  return d;
}

// ------------------------------------------------------------------ throughput

bool SpeedWindow::tooSlow(int64_t nowMs, uint64_t total, bool paused) {
  if (paused || (!samples_.empty() && total < samples_.back().total)) samples_.clear();  // start over
  samples_.push_back({nowMs, total});
  // Keep as the base the newest sample that is at least a window old.
  while (samples_.size() > 2 && nowMs - samples_[1].ms >= windowMs_) samples_.erase(samples_.begin());
  const Sample& base = samples_.front();
  if (nowMs - base.ms < windowMs_) return false;  // less than a window seen yet
  lastBytes_ = total - base.total;
  // minBps × span / 1000 without overflow: both are bounded by the config.
  const int64_t span = nowMs - base.ms;
  return static_cast<long double>(lastBytes_) * 1000 < static_cast<long double>(minBps_) * span;
}

// ------------------------------------------------------------------ links

bool forbiddenAddress(const std::array<uint8_t, 16>& b) {
  static const uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (std::equal(kMapped, kMapped + 12, b.begin())) return b[12] == 169 && b[13] == 254;  // 169.254/16
  if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80) return true;                                // fe80::/10
  static const uint8_t kEc2[16] = {0xfd, 0x00, 0x0e, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x54};
  return std::equal(kEc2, kEc2 + 16, b.begin());  // fd00:ec2::254
}

namespace {

std::string lowerAscii(std::string_view s) {
  std::string r(s);
  for (char& c : r) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return r;
}

bool loopbackName(const std::string& host) {
  if (host == "localhost" || host == "0.0.0.0" || host == "::" || host == "::1") return true;
  auto a = parseAddress(host);
  return a && (*a)[10] == 0xff && (*a)[11] == 0xff && (*a)[12] == 127;
}

/// `host` (lower case, IPv6 without brackets) and `port` name one of `self`.
bool isSelf(const std::string& host, int port, const std::vector<std::string>& self) {
  for (const std::string& s : self) {
    size_t colon = s.rfind(':');
    if (colon == std::string::npos || s.substr(colon + 1) != std::to_string(port)) continue;
    std::string sh = lowerAscii(s.substr(0, colon));
    if (sh.size() >= 2 && sh.front() == '[' && sh.back() == ']') sh = sh.substr(1, sh.size() - 2);
    if (sh == host) return true;
    auto a = parseAddress(sh), b = parseAddress(host);
    if (a && b && *a == *b) return true;
    if ((sh == "0.0.0.0" || sh == "::") && loopbackName(host)) return true;
  }
  return false;
}

}  // namespace

std::optional<std::string> linkProblem(std::string_view url, const std::vector<std::string>& self,
                                       bool allowCredentials) {
  for (unsigned char c : url)
    if (c <= 0x20 || c == 0x7f) return std::string("the link has spaces or control bytes (CR, LF, ...) in it");
  std::string lower = lowerAscii(url.substr(0, 8));
  size_t schemeEnd;
  int port;
  if (lower.starts_with("http://")) {
    schemeEnd = 7;
    port = 80;
  } else if (lower.starts_with("https://")) {
    schemeEnd = 8;
    port = 443;
  } else {
    return std::string("the link is not an absolute http or https URL");
  }
  std::string_view rest = url.substr(schemeEnd);
  std::string_view authority = rest.substr(0, rest.find_first_of("/?#"));
  if (size_t at = authority.rfind('@'); at != std::string_view::npos) {
    if (!allowCredentials) return std::string("the link carries credentials (user:password@)");
    authority.remove_prefix(at + 1);
  }
  std::string_view host = authority, portText;
  if (!authority.empty() && authority.front() == '[') {
    size_t close = authority.find(']');
    if (close == std::string_view::npos) return std::string("the link's IPv6 host has no closing ']'");
    host = authority.substr(1, close - 1);
    std::string_view after = authority.substr(close + 1);
    if (!after.empty() && after.front() != ':') return std::string("the link's host is malformed");
    if (!after.empty()) portText = after.substr(1);
  } else if (size_t colon = authority.rfind(':'); colon != std::string_view::npos) {
    host = authority.substr(0, colon);
    portText = authority.substr(colon + 1);
  }
  if (host.empty()) return std::string("the link has no host");
  if (!portText.empty()) {
    if (portText.size() > 5 || !std::all_of(portText.begin(), portText.end(), [](char c) { return c >= '0' && c <= '9'; }))
      return std::string("the link's port is not a number");
    port = 0;
    for (char c : portText) port = port * 10 + (c - '0');
    if (port < 1 || port > 65535) return std::string("the link's port is out of range");
  }
  std::string h = lowerAscii(host);
  if (auto a = parseAddress(h); a && forbiddenAddress(*a))
    return "the link points at a forbidden address (" + h + ": link-local or cloud metadata)";
  if (isSelf(h, port, self)) return "the link points at this gateway itself (" + h + ":" + std::to_string(port) + ")";
  return std::nullopt;
}

}  // namespace slip::policy
