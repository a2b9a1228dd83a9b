// libcurl's multi_socket API driven by the gateway's libevent loop, after
// curl's docs/examples/multi-event.c and hiperfifo.c: one event per socket
// (remembered with curl_multi_assign), one timer, curl_multi_info_read
// drained after every socket_action, and curl never called from inside its
// own callbacks (work that must call curl from there is deferred).
//
// Transfer wraps one easy handle: one upstream HTTP request with our header
// parsing, pause/resume for backpressure and a completion callback.
#pragma once

#include <curl/curl.h>
#include <event2/event.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "conf/loop.h"
#include "proxy/fetch/admission.h"
#include "proxy/fetch/trust.h"
#include "proxy/proxy.h"

namespace slip::proxy {

class Transfer;

class CurlMulti {
 public:
  CurlMulti(event_base* base, int maxConnections, const Clock& clock);
  ~CurlMulti();
  CurlMulti(const CurlMulti&) = delete;
  CurlMulti& operator=(const CurlMulti&) = delete;

  /// Runs `fn` now, or right after curl returns when called from inside one
  /// of curl's callbacks (curl refuses re-entrant multi calls).
  void defer(std::function<void()> fn);
  bool insideCurl() const { return depth_ > 0; }
  event_base* base() const { return base_; }
  /// Transfers added to curl and not yet removed (curl's own running count
  /// is only refreshed when it acts, so it lags behind removals).
  int running() const { return attached_; }
  /// The connection pools every download transfer is admitted through.
  Admission& admission() { return admission_; }
  const Admission& admission() const { return admission_; }
  /// The TLS trust sets (Transfer::Options::trust names one).
  TrustStores& trust() { return trust_; }
  const Clock& clock() const { return clock_; }

 private:
  friend class Transfer;
  void add(Transfer* t);
  void remove(Transfer* t);
  void action(curl_socket_t fd, int mask);
  void drainInfo();
  void runDeferred();
  static int onSocket(CURL* e, curl_socket_t s, int what, void* userp, void* sockp);
  static int onTimer(CURLM* m, long timeoutMs, void* userp);
  static void onEvent(evutil_socket_t fd, short kind, void* arg);

  event_base* base_;
  const Clock& clock_;
  TrustStores trust_;  // before multi_: handles may use its share until the multi is gone
  CURLM* multi_;
  std::unordered_map<curl_socket_t, EventPtr> sockets_;  // one event per socket curl watches
  Timer timer_;       // CURLMOPT_TIMERFUNCTION's timer
  Trigger deferEv_;   // runs deferred_ once curl returned
  int depth_ = 0;
  int running_ = 0;
  int attached_ = 0;
  std::vector<std::function<void()>> deferred_;
  Admission admission_;
};

/// What a finished transfer reports.
struct TransferResult {
  CURLcode code = CURLE_OK;
  std::string error;        // "<host>: <what went wrong>" when code != OK
  bool timedOut = false;    // stalled or no headers in time
  /// What failed below HTTP (policy's transport table: permanent or not,
  /// whether the link is to blame, the client's reason). None when code is
  /// OK, and when a handler callback aborted the transfer itself.
  policy::TransportFailure failure = policy::TransportFailure::None;
};

/// One upstream HTTP request. Not copyable; owned by whoever started it.
/// Destroying a running Transfer cancels it.
class Transfer {
 public:
  struct Options {
    std::string url;
    Headers headers;                 // added to the request (Referer, UA, ...)
    std::string range;               // "first-last" / "first-" / "-n"; "" = none
    std::string postBody;            // non-empty → POST with this body
    int64_t connectTimeoutMs = 10'000;
    int64_t headerTimeoutMs = 30'000;  // request sent → response headers
    /// The body is judged by policy::SpeedWindow: fewer than minSpeed bytes/s
    /// over the last stallTimeoutMs (time we held it paused excluded) → cut,
    /// TransportFailure::Stalled.
    int64_t stallTimeoutMs = 30'000;
    int64_t minSpeed = 1024;
    bool followRedirects = true;
    int pool = -1;                     // Admission::addPool id; -1 = no cap
    int trust = 0;                     // TrustStores id; 0 = the system bundle
  };
  /// Response headers larger than this (all lines of the final response
  /// and the ones before it) are not HTTP we accept: BadResponse.
  static constexpr size_t kMaxResponseHeaders = 64 * 1024;
  /// Return values of the data callback besides "consumed n".
  static constexpr size_t kPause = CURL_WRITEFUNC_PAUSE;
  struct Handler {
    virtual ~Handler() = default;
    /// Response headers complete (the final response, after redirects).
    /// Return false to abort the transfer (onDone follows, from the loop).
    virtual bool onHeaders(Transfer& t) = 0;
    /// Body bytes. Return n when consumed, kPause to get them again after
    /// resume(), anything else aborts.
    virtual size_t onData(Transfer& t, const char* data, size_t n) = 0;
    /// The transfer ended (complete, failed or aborted). Called from the loop,
    /// never from inside curl; the handler may destroy the Transfer here.
    virtual void onDone(Transfer& t, const TransferResult& r) = 0;
  };

  Transfer(CurlMulti& multi, Options opts, Handler* handler);
  ~Transfer();
  Transfer(const Transfer&) = delete;
  Transfer& operator=(const Transfer&) = delete;

  /// Adds the request to the multi handle (deferred if inside curl).
  void start();
  /// Resumes delivery after onData returned kPause.
  void resume();
  /// Stops without calling onDone.
  void cancel();
  bool paused() const { return paused_; }

  // Response, valid from onHeaders on.
  int status() const { return status_; }
  const std::string& header(const std::string& lowerName) const;
  std::optional<uint64_t> contentLength() const;
  /// The headers policy::classifyUpstream reads.
  policy::UpstreamAnswer answer() const;
  const Options& options() const { return opts_; }

 private:
  friend class CurlMulti;
  static size_t onHeaderLine(char* p, size_t size, size_t n, void* ud);
  static size_t onBody(char* p, size_t size, size_t n, void* ud);
  void finished(CURLcode code);
  void launch();
  /// Gives the pool slot back (if held) and leaves the pool's queue.
  void releaseSlot(bool cutOff);
  void onHeaderTimeout();
  void onSpeedCheck();
  policy::TransportFailure failureOf(CURLcode code) const;
  std::string hostOfUrl() const;
  static curl_socket_t openSocket(void* self, curlsocktype purpose, curl_sockaddr* addr);

  CurlMulti& multi_;
  Options opts_;
  Handler* handler_;
  CURL* easy_ = nullptr;
  curl_slist* slist_ = nullptr;
  Timer headerTimer_;
  Timer speedTimer_;          // judges the body's throughput once headers are in
  policy::SpeedWindow speed_;
  uint64_t bodyBytes_ = 0;    // handed to the handler
  bool heldSinceCheck_ = false;  // paused at some point since the last speed check
  size_t headerBytes_ = 0;
  Lifeline life_;     // deferred work skips a transfer destroyed meanwhile
  uint64_t ticket_ = 0;  // its id in the Admission
  char errbuf_[CURL_ERROR_SIZE] = {};
  bool added_ = false;
  bool paused_ = false;
  bool headersDone_ = false;
  bool aborted_ = false;    // a handler callback asked to stop: onDone follows
  bool cancelled_ = false;  // the owner stopped it: no onDone
  bool headerTimedOut_ = false;
  bool stalled_ = false;         // cut by the speed check
  bool forbiddenHit_ = false;    // curl wanted to connect to a forbidden address
  bool oversized_ = false;       // response headers over kMaxResponseHeaders
  bool waiting_ = false;    // queued in its pool
  bool holdsSlot_ = false;  // counted in its pool's running
  int status_ = 0;
  std::vector<std::pair<std::string, std::string>> respHeaders_;
};

/// Options for a call to a source's API (AList, the Open API): the
/// server's timeouts and speed floor, and the trust set of `caFile` (the
/// mount's or account's; "" = [server] ca_file).
Transfer::Options apiCallOptions(CurlMulti& multi, const conf::Server& s, const std::string& caFile);

}  // namespace slip::proxy
