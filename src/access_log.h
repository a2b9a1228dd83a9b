// The access log: one `key=value` line per request (SPEC §9), buffered and
// flushed every 200 ms rather than once per request.
#pragma once

#include <event2/event.h>

#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>

namespace slip {

class Clock;

/// What one line says.
struct AccessEntry {
  uint64_t id = 0;
  std::string client, method, path;  // path: as requested, without the query
  std::string user;                  // the WebDAV user who authenticated, "" = none
  int status = 0;
  std::string delivery = "-", cache = "-", reason = "-";
  uint64_t bytes = 0;                // body bytes to the client
  uint64_t upstreamBytes = 0;
  double ms = 0;                     // request's first byte → response handed to the socket
  double ttfbMs = -1;                // request's first byte → response head queued; <0 = none
  std::string range, userAgent;      // the client's headers, "" if absent
};

class AccessLog {
 public:
  AccessLog(event_base* base, const Clock& clock) : base_(base), clock_(clock) {}
  ~AccessLog();
  AccessLog(const AccessLog&) = delete;
  AccessLog& operator=(const AccessLog&) = delete;

  /// `spec`: a path, "-" for stdout, "off". False with a message when the
  /// file cannot be opened.
  bool open(const std::string& spec, std::string* err);
  /// SIGHUP: opens `spec` afresh (a rotated file, or another path) and
  /// closes the old one; on an error the old one stays (false, *err).
  bool reopen(const std::string& spec, std::string* err);
  /// Thread-safe: the front-end worker threads write their lines too.
  void write(const AccessEntry& e);

 private:
  static void flush(evutil_socket_t, short, void* arg);
  event_base* base_;
  const Clock& clock_;
  FILE* f_ = nullptr;
  bool own_ = false;
  event* flush_ = nullptr;
  std::mutex mu_;  // f_ (reopen on the loop, writes from every thread)
};

}  // namespace slip
