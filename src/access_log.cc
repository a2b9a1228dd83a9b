#include "src/access_log.h"

#include <cerrno>
#include <cstring>
#include <ctime>

#include "conf/clock.h"
#include "conf/conf.h"

namespace slip {
namespace {

std::string isoTime(int64_t wallMs) {
  time_t secs = static_cast<time_t>(wallMs / 1000);
  tm t{};
  gmtime_r(&secs, &t);
  char buf[48];
  size_t n = strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &t);
  snprintf(buf + n, sizeof buf - n, ".%03dZ", static_cast<int>(wallMs % 1000));
  return buf;
}

/// A header value for the log: "-" when absent, else quoted as needed.
std::string field(const std::string& v) { return v.empty() ? "-" : conf::logValue(v.substr(0, 512)); }

}  // namespace

AccessLog::~AccessLog() {
  if (flush_) event_free(flush_);
  if (f_) {
    fflush(f_);
    if (own_) fclose(f_);
  }
}

void AccessLog::flush(evutil_socket_t, short, void* arg) {
  auto* l = static_cast<AccessLog*>(arg);
  std::lock_guard<std::mutex> g(l->mu_);
  if (l->f_) fflush(l->f_);
}

bool AccessLog::reopen(const std::string& spec, std::string* err) {
  FILE* next = nullptr;
  if (spec != "off" && spec != "-") {
    next = fopen(spec.c_str(), "ae");
    if (!next) {
      *err = "access_log " + spec + ": " + strerror(errno);
      return false;
    }
  }
  if (flush_) event_free(flush_);
  flush_ = nullptr;
  std::lock_guard<std::mutex> g(mu_);
  if (f_) {
    fflush(f_);
    if (own_) fclose(f_);
  }
  f_ = nullptr;
  own_ = false;
  if (spec == "off") return true;
  if (!next) {  // "-": stdout
    f_ = stdout;
  } else {
    f_ = next;
    own_ = true;
  }
  flush_ = event_new(base_, -1, EV_PERSIST, &AccessLog::flush, this);
  timeval tv{0, 200'000};
  event_add(flush_, &tv);
  return true;
}

bool AccessLog::open(const std::string& spec, std::string* err) {
  if (spec == "off") return true;
  if (spec == "-") {
    f_ = stdout;
  } else {
    f_ = fopen(spec.c_str(), "ae");
    if (!f_) {
      *err = "access_log " + spec + ": " + strerror(errno);
      return false;
    }
    own_ = true;
  }
  flush_ = event_new(base_, -1, EV_PERSIST, &AccessLog::flush, this);
  timeval tv{0, 200'000};
  event_add(flush_, &tv);
  return true;
}

void AccessLog::write(const AccessEntry& e) {
  std::lock_guard<std::mutex> g(mu_);
  if (!f_) return;
  char ttfb[32] = "-";
  if (e.ttfbMs >= 0) snprintf(ttfb, sizeof ttfb, "%.1f", e.ttfbMs);
  fprintf(f_,
          "%s id=%llu client=%s user=%s method=%s path=%s status=%d delivery=%s cache=%s bytes=%llu "
          "upstream_bytes=%llu ms=%.1f ttfb_ms=%s range=%s ua=%s reason=%s\n",
          isoTime(clock_.wallMs()).c_str(), static_cast<unsigned long long>(e.id), e.client.c_str(),
          field(e.user).c_str(),
          e.method.empty() ? "-" : conf::logValue(e.method).c_str(), conf::logValue(e.path).c_str(),
          e.status, e.delivery.c_str(), e.cache.c_str(), static_cast<unsigned long long>(e.bytes),
          static_cast<unsigned long long>(e.upstreamBytes), e.ms, ttfb, field(e.range).c_str(),
          field(e.userAgent).c_str(), e.reason.c_str());
}

}  // namespace slip
