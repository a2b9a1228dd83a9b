// Front end. Invariants:
//  - An Exchange (one request) is "current" on its Conn from dispatch until
//    it finished or failed; only then may evhttp reuse the connection.
//  - A client can vanish at any time: evhttp then calls the connection's
//    close callback, which detaches the Exchange (freeing the request evhttp
//    left to us) and tells the Job before anything is freed.
//  - Exchanges are destroyed from a deferred event, never inside a callback
//    of their own Job.
#include "src/server.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <ctime>
#include <map>
#include <set>
#include <vector>

namespace slip {
namespace {

using policy::Reason;

// Bytes libevent itself buffers for a request head before it gives up with a
// plain 400 and closes; our own limits (414/431) are checked below this.
constexpr int64_t kHardHeadBytes = 1 << 20;
// Request bodies libevent reads before answering 413; ours get 405/400.
constexpr int64_t kMaxBodyBytes = 64 * 1024;

int64_t monoNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int64_t wallSeconds() { return static_cast<int64_t>(time(nullptr)); }

std::string isoNow() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  tm t{};
  gmtime_r(&ts.tv_sec, &t);
  char buf[48];
  size_t n = strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &t);
  snprintf(buf + n, sizeof buf - n, ".%03ldZ", ts.tv_nsec / 1'000'000);
  return buf;
}

const char* methodName(evhttp_cmd_type c) {
  switch (c) {
    case EVHTTP_REQ_GET: return "GET";
    case EVHTTP_REQ_HEAD: return "HEAD";
    case EVHTTP_REQ_POST: return "POST";
    case EVHTTP_REQ_PUT: return "PUT";
    case EVHTTP_REQ_DELETE: return "DELETE";
    case EVHTTP_REQ_OPTIONS: return "OPTIONS";
    case EVHTTP_REQ_TRACE: return "TRACE";
    case EVHTTP_REQ_CONNECT: return "CONNECT";
    case EVHTTP_REQ_PATCH: return "PATCH";
  }
  return "?";
}

}  // namespace

struct Conn;
struct Exchange;

struct Server::Impl {
  event_base* base;
  const conf::Config& cfg;
  const policy::RuleSet& rules;
  proxy::Engine& engine;
  evhttp* http = nullptr;
  std::vector<evhttp_bound_socket*> bound;
  std::map<evhttp_connection*, Conn*> conns;
  std::set<Exchange*> active;
  std::vector<Exchange*> dead;
  event* reaper = nullptr;
  event* flushTimer = nullptr;
  event* graceTimer = nullptr;
  event* drainPoll = nullptr;  // re-checks while finished responses flush
  FILE* accessLog = nullptr;
  bool ownAccessLog = false;
  bool draining = false;
  std::function<void()> drained;
  uint64_t nextId = 1;
  // counters for /-/metrics
  uint64_t requests = 0, bytesOut = 0;
  // Event-loop lag: how late a 50 ms timer fires (SPEC §5: the loop must not
  // block on disk or DNS for long; this measures it).
  event* lagTimer = nullptr;
  int64_t lagDueNs = 0;
  int64_t lagMaxUs = 0;
  uint64_t lagOver10ms = 0, lagOver100ms = 0;
  std::map<int, uint64_t> byStatus;

  Impl(event_base* b, const conf::Config& c, const policy::RuleSet& r, proxy::Engine& e)
      : base(b), cfg(c), rules(r), engine(e) {}

  void onRequest(evhttp_request* req);
  bool adminAllowed(evhttp_request* req, const std::string& client) const;
  std::string metrics() const;
  void deliver(Exchange* ex, policy::RequestFacts facts, proxy::Request preq);
  void retire(Exchange* ex);
  void reap();
  void checkDrained();
  void logAccess(const Exchange& ex);
};

struct Conn {
  Server::Impl* srv;
  evhttp_connection* evcon;
  std::string addr;
  Exchange* current = nullptr;
};

enum class ExState { Routing, Running, Finished, Gone };

const char* exStateName(ExState s) {
  switch (s) {
    case ExState::Routing: return "routing";
    case ExState::Running: return "running";
    case ExState::Finished: return "finished";
    case ExState::Gone: return "gone";
  }
  return "?";
}

/// One request: the Sink the proxy Engine writes the response through.
struct Exchange final : proxy::Sink {
  Server::Impl* srv;
  Conn* conn;
  evhttp_request* req;
  uint64_t id;
  ExState state = ExState::Routing;
  int64_t startNs = monoNs();
  bool head = false;
  bool sentHeaders = false;
  int status = 0;
  std::string client, method, path, delivery = "-", cache = "-", reason = "-";
  uint64_t bytesOut = 0, upstreamBytes = 0;
  std::unique_ptr<proxy::Job> job;
  std::vector<std::unique_ptr<proxy::Job>> retired;  // replaced jobs, freed with the exchange

  Exchange(Server::Impl* s, Conn* c, evhttp_request* r, uint64_t i)
      : srv(s), conn(c), req(r), id(i), client(c->addr) {}

  evhttp_connection* evcon() const { return req ? evhttp_request_get_connection(req) : nullptr; }
  bufferevent* bev() const {
    evhttp_connection* c = evcon();
    return c ? evhttp_connection_get_bufferevent(c) : nullptr;
  }

  static void onDrained(evhttp_connection*, void* arg) {
    auto* ex = static_cast<Exchange*>(arg);
    if (ex->state == ExState::Running && ex->job) ex->job->onWritable();
  }

  // ---- proxy::Sink

  void sendHeaders(int st, const proxy::Headers& headers) override {
    if (state != ExState::Routing && state != ExState::Running) return;
    evkeyvalq* out = evhttp_request_get_output_headers(req);
    for (const auto& h : headers) {
      if (h.name == "X-Cache") cache = h.value;
      if (evhttp_add_header(out, h.name.c_str(), h.value.c_str()) != 0) {
        conf::Log::write(conf::LogLevel::Warn, "bad_response_header",
                         "id=" + std::to_string(id) + " name=" + conf::logValue(h.name));
      }
    }
    // No length (a chunked upstream): HTTP/1.1 gets chunked encoding, but an
    // HTTP/1.0 keep-alive client can only learn the end from a close. (evhttp
    // would otherwise announce Content-Length: 0 to it.)
    bool hasLength = std::any_of(headers.begin(), headers.end(),
                                 [](const proxy::Header& h) { return h.name == "Content-Length"; });
    evkeyvalq* in = evhttp_request_get_input_headers(req);
    const char* conn = evhttp_find_header(in, "Connection");
    if (!hasLength && !head && conn && evutil_ascii_strcasecmp(conn, "keep-alive") == 0) {
      evhttp_remove_header(in, "Connection");
      evhttp_add_header(out, "Connection", "close");
    }
    status = st;
    sentHeaders = true;
    evhttp_send_reply_start(req, st, policy::statusText(st));
    ignoreHalfClose();
    // A download may run for hours without the client sending a byte: no
    // read timeout while streaming, only the send timeout.
    if (bufferevent* b = bev()) {
      timeval w{srv->cfg.server.sendTimeoutMs / 1000,
                static_cast<suseconds_t>((srv->cfg.server.sendTimeoutMs % 1000) * 1000)};
      bufferevent_set_timeouts(b, nullptr, &w);
      // Refill before the socket runs dry: report "drained" below a quarter
      // of the high-water mark, not only when empty.
      bufferevent_setwatermark(b, EV_WRITE, proxy::kDrainedMark, 0);
    }
  }

  void sendBody(evbuffer* data) override {
    size_t n = evbuffer_get_length(data);
    if (head || state == ExState::Finished || state == ExState::Gone) {
      evbuffer_drain(data, n);
      return;
    }
    bytesOut += n;
    evhttp_send_reply_chunk_with_cb(req, data, &Exchange::onDrained, this);
    ignoreHalfClose();
  }

  /// evhttp reads while it writes, only to notice a close, and takes a
  /// client's half-close (shutdown of its sending side after the request,
  /// legal in HTTP) for a vanished client. A client that really goes away
  /// is still noticed: the next write fails.
  void ignoreHalfClose() {
    if (bufferevent* b = bev()) bufferevent_disable(b, EV_READ);
  }

  size_t queued() const override {
    bufferevent* b = bev();
    return b ? evbuffer_get_length(bufferevent_get_output(b)) : 0;
  }

  void finish() override {
    if (state != ExState::Routing && state != ExState::Running) return;
    restoreIdleTimeouts();
    evhttp_send_reply_end(req);
    done();
  }

  void fail(Reason r, const std::string& detail) override {
    if (state != ExState::Routing && state != ExState::Running) return;
    reason = policy::reasonCode(r);
    if (!detail.empty()) {
      conf::Log::write(r == Reason::Internal || r == Reason::CacheFailed ? conf::LogLevel::Error
                                                                          : conf::LogLevel::Warn,
                       "request_failed",
                       "id=" + std::to_string(id) + " reason=" + reason +
                           " detail=" + conf::logValue(detail) + " path=" + conf::logValue(path));
    }
    if (!sentHeaders) {
      sendError(r, detail);
      return;
    }
    // Headers are out: the only honest signal left is closing the connection.
    evhttp_connection* c = evcon();
    conn->current = nullptr;
    state = ExState::Finished;
    srv->retire(this);
    if (c) evhttp_connection_free(c);  // frees req too (still attached)
    req = nullptr;
  }

  bool headersSent() const override { return sentHeaders; }
  void noteUpstreamBytes(uint64_t n) override { upstreamBytes += n; }

  // ---- helpers

  void sendError(Reason r, const std::string& detail) {
    int st = policy::reasonStatus(r);
    reason = policy::reasonCode(r);
    evbuffer* body = evbuffer_new();
    evbuffer_add_printf(body, "%d %s: %s", st, policy::statusText(st), policy::reasonText(r));
    if (!detail.empty()) evbuffer_add_printf(body, " (%s)", detail.c_str());
    evbuffer_add(body, "\n", 1);
    evkeyvalq* out = evhttp_request_get_output_headers(req);
    evhttp_add_header(out, "Content-Type", "text/plain; charset=utf-8");
    evhttp_add_header(out, "Cache-Control", "no-store");
    if (r == Reason::MethodNotAllowed) evhttp_add_header(out, "Allow", "GET, HEAD");
    // After these the rest of the connection cannot be trusted (a body, a
    // tunnel, a head we refused to read): say so and close.
    if (r == Reason::Overloaded || r == Reason::ShuttingDown || r == Reason::RequestLineTooLong ||
        r == Reason::HeadersTooLarge || r == Reason::AbsoluteTarget || r == Reason::RequestBody ||
        r == Reason::MethodNotAllowed)
      evhttp_add_header(out, "Connection", "close");
    evhttp_add_header(out, "Content-Length", std::to_string(evbuffer_get_length(body)).c_str());
    status = st;
    bytesOut += head ? 0 : evbuffer_get_length(body);
    restoreIdleTimeouts();
    evhttp_send_reply(req, st, policy::statusText(st), body);
    evbuffer_free(body);
    done();
  }

  void sendSimple(int st, const proxy::Headers& headers, const std::string& body) {
    evkeyvalq* out = evhttp_request_get_output_headers(req);
    for (const auto& h : headers) evhttp_add_header(out, h.name.c_str(), h.value.c_str());
    evbuffer* b = evbuffer_new();
    evbuffer_add(b, body.data(), body.size());
    status = st;
    sentHeaders = true;
    bytesOut += head ? 0 : body.size();
    evhttp_send_reply(req, st, policy::statusText(st), b);
    evbuffer_free(b);
    done();
  }

  /// Back to keep-alive mode: idle timeouts, and the write callback only once
  /// the buffer is empty (evhttp takes it as "response fully written").
  void restoreIdleTimeouts() {
    if (bufferevent* b = bev()) {
      bufferevent_setwatermark(b, EV_WRITE, 0, 0);
      int64_t ms = srv->cfg.server.idleTimeoutMs;
      timeval t{ms / 1000, static_cast<suseconds_t>((ms % 1000) * 1000)};
      bufferevent_set_timeouts(b, &t, &t);
    }
  }

  void done() {
    state = ExState::Finished;
    if (conn && conn->current == this) conn->current = nullptr;
    srv->retire(this);
  }

  /// The client closed or timed out while this request ran.
  void clientGone() {
    conf::Log::write(conf::LogLevel::Debug, "client_gone",
                     "id=" + std::to_string(id) + " state=" + exStateName(state));
    state = ExState::Gone;
    if (req && evhttp_request_get_connection(req) == nullptr) evhttp_request_free(req);
    req = nullptr;
    conn = nullptr;
    if (reason == "-") reason = "client_gone";
    if (job) job->onClientGone();
    srv->retire(this);
  }
};

// ------------------------------------------------------------------ Impl

void Server::Impl::retire(Exchange* ex) {
  if (!active.erase(ex)) return;
  requests++;
  bytesOut += ex->bytesOut;
  byStatus[ex->status]++;
  logAccess(*ex);
  dead.push_back(ex);
  event_active(reaper, 0, 0);
}

void Server::Impl::reap() {
  std::vector<Exchange*> d;
  d.swap(dead);
  for (Exchange* ex : d) delete ex;
  checkDrained();
}

void Server::Impl::checkDrained() {
  // Finished responses may still have bytes queued for their clients.
  bool flushing = false;
  for (auto& [evcon, c] : conns) {
    bufferevent* b = evhttp_connection_get_bufferevent(evcon);
    if (b && evbuffer_get_length(bufferevent_get_output(b)) > 0) flushing = true;
  }
  if (draining && flushing && active.empty() && drained) {
    timeval tv{0, 20'000};
    event_add(drainPoll, &tv);
    return;
  }
  if (draining && active.empty() && drained) {
    auto fn = std::move(drained);
    drained = nullptr;
    fn();
  }
}

void Server::Impl::logAccess(const Exchange& ex) {
  if (!accessLog) return;
  double ms = static_cast<double>(monoNs() - ex.startNs) / 1e6;
  fprintf(accessLog,
          "%s id=%llu client=%s method=%s path=%s status=%d delivery=%s cache=%s bytes=%llu "
          "upstream_bytes=%llu ms=%.1f reason=%s\n",
          isoNow().c_str(), static_cast<unsigned long long>(ex.id), ex.client.c_str(),
          ex.method.c_str(), conf::logValue(ex.path).c_str(), ex.status, ex.delivery.c_str(),
          ex.cache.c_str(), static_cast<unsigned long long>(ex.bytesOut),
          static_cast<unsigned long long>(ex.upstreamBytes), ms, ex.reason.c_str());
}

bool Server::Impl::adminAllowed(evhttp_request* req, const std::string& client) const {
  if (policy::anyCidrContains(cfg.server.adminAllow, client)) return true;
  if (cfg.server.adminToken.empty()) return false;
  const char* auth = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
  std::string want = "Bearer " + cfg.server.adminToken;
  return auth && strlen(auth) == want.size() && CRYPTO_memcmp(auth, want.data(), want.size()) == 0;
}

std::string Server::Impl::metrics() const {
  proxy::Stats st = engine.snapshot();
  std::string o;
  auto metric = [&o](const char* name, const char* type, const char* help, uint64_t v) {
    o += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n" + name +
         " " + std::to_string(v) + "\n";
  };
  o += "# HELP slipstream_requests_total Requests answered, by status.\n"
       "# TYPE slipstream_requests_total counter\n";
  for (const auto& [code, n] : byStatus)
    o += "slipstream_requests_total{status=\"" + std::to_string(code) + "\"} " + std::to_string(n) + "\n";
  metric("slipstream_active_requests", "gauge", "Requests running now.", active.size());
  metric("slipstream_loop_lag_max_microseconds", "gauge", "Longest the event loop was late for a timer.",
         static_cast<uint64_t>(lagMaxUs));
  metric("slipstream_loop_lag_over_10ms_total", "counter", "Timer ticks the loop served over 10 ms late.",
         lagOver10ms);
  metric("slipstream_loop_lag_over_100ms_total", "counter", "Timer ticks the loop served over 100 ms late.",
         lagOver100ms);
  metric("slipstream_client_connections", "gauge", "Client connections open.", conns.size());
  metric("slipstream_sent_bytes_total", "counter", "Body bytes sent to clients.", bytesOut);
  metric("slipstream_upstream_requests_total", "counter", "Upstream HTTP requests started.", st.upstreamRequests);
  metric("slipstream_upstream_bytes_total", "counter", "Body bytes received from upstreams.", st.upstreamBytes);
  metric("slipstream_upstream_errors_total", "counter", "Upstream requests that failed.", st.upstreamErrors);
  metric("slipstream_upstream_retries_total", "counter", "Upstream retries after a failure.", st.retries);
  metric("slipstream_upstream_transfers", "gauge", "Upstream transfers running now.",
         static_cast<uint64_t>(std::max(0, st.activeTransfers)));
  metric("slipstream_link_resolutions_total", "counter", "Links resolved by sources.", st.linkResolutions);
  metric("slipstream_cache_hit_bytes_total", "counter", "Bytes served from stored blocks.", st.cacheHitBytes);
  if (st.cacheEnabled) {
    metric("slipstream_cache_objects", "gauge", "Object versions in the cache.", st.cacheObjects);
    metric("slipstream_cache_blocks", "gauge", "Blocks listed in the cache.", st.cacheBlocks);
    metric("slipstream_cache_bytes", "gauge", "Bytes of listed blocks.", st.cacheBytes);
    metric("slipstream_cache_reserved_bytes", "gauge", "Bytes reserved by fetches in flight.", st.cacheReserved);
    metric("slipstream_cache_max_bytes", "gauge", "Configured max_size.", st.cacheMaxBytes);
    metric("slipstream_cache_evicted_blocks_total", "counter", "Blocks evicted.", st.cacheEvictedBlocks);
    metric("slipstream_cache_corrupt_blocks_total", "counter", "Blocks dropped for a bad checksum.",
           st.cacheDroppedCorrupt);
    metric("slipstream_disk_queue_bytes", "gauge", "Bytes waiting for the disk thread.", st.diskQueueBytes);
  }
  // One family per figure, one sample per [account].
  auto perAccount = [&o, &st](const char* name, const char* type, const char* help,
                              uint64_t (*get)(const proxy::AccountStats&)) {
    if (st.accounts.empty()) return;
    o += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
    for (const auto& a : st.accounts)
      o += std::string(name) + "{account=\"" + a.name + "\"} " + std::to_string(get(a)) + "\n";
  };
  using A = const proxy::AccountStats&;
  perAccount("slipstream_account_authorized", "gauge",
             "1 while the account's refresh token works, 0 once the service refused it.",
             [](A a) -> uint64_t { return a.authorized; });
  perAccount("slipstream_account_token_exchanges_total", "counter", "Access tokens obtained.",
             [](A a) { return a.tokenExchanges; });
  perAccount("slipstream_account_token_failures_total", "counter", "Token exchanges that failed.",
             [](A a) { return a.tokenFailures; });
  perAccount("slipstream_account_api_calls_total", "counter", "Open API calls sent.",
             [](A a) { return a.apiCalls; });
  perAccount("slipstream_account_rate_limited_total", "counter", "Open API calls answered 429.",
             [](A a) { return a.rateLimited; });
  perAccount("slipstream_account_downloads", "gauge", "Download connections open (max_connections caps them).",
             [](A a) -> uint64_t { return static_cast<uint64_t>(a.downloads); });
  perAccount("slipstream_account_downloads_waiting", "gauge", "Download transfers queued for a connection.",
             [](A a) -> uint64_t { return static_cast<uint64_t>(a.downloadsWaiting); });
  return o;
}

namespace {

void onConnClose(evhttp_connection* evcon, void* arg) {
  auto* c = static_cast<Conn*>(arg);
  Server::Impl* s = c->srv;
  if (c->current) {
    Exchange* ex = c->current;
    c->current = nullptr;
    ex->clientGone();
  }
  s->conns.erase(evcon);
  delete c;
}

/// Total bytes of the request head as received, for the 431 check.
size_t headerBytes(evhttp_request* req) {
  size_t n = 0;
  evkeyvalq* in = evhttp_request_get_input_headers(req);
  for (evkeyval* kv = in->tqh_first; kv; kv = kv->next.tqe_next)
    n += strlen(kv->key) + strlen(kv->value) + 4;
  return n;
}

std::string clientAddress(evhttp_connection* evcon) {
  const sockaddr* sa = evhttp_connection_get_addr(evcon);
  char buf[INET6_ADDRSTRLEN] = "-";
  if (sa && sa->sa_family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(sa)->sin_addr, buf, sizeof buf);
  } else if (sa && sa->sa_family == AF_INET6) {
    auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr))
      inet_ntop(AF_INET, in6->sin6_addr.s6_addr + 12, buf, sizeof buf);
    else
      inet_ntop(AF_INET6, &in6->sin6_addr, buf, sizeof buf);
  }
  return buf;
}

}  // namespace

void Server::Impl::onRequest(evhttp_request* req) {
  evhttp_connection* evcon = evhttp_request_get_connection(req);
  Conn* conn;
  auto it = conns.find(evcon);
  bool fresh = it == conns.end();
  if (fresh) {
    conn = new Conn{this, evcon, clientAddress(evcon)};
    conns[evcon] = conn;
    evhttp_connection_set_closecb(evcon, &onConnClose, conn);
    bufferevent* b = evhttp_connection_get_bufferevent(evcon);
    int one = 1;
    setsockopt(bufferevent_getfd(b), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  } else {
    conn = it->second;
  }

  auto* ex = new Exchange(this, conn, req, nextId++);
  active.insert(ex);
  conn->current = ex;
  evhttp_cmd_type cmd = evhttp_request_get_command(req);
  ex->method = methodName(cmd);
  ex->head = cmd == EVHTTP_REQ_HEAD;
  const char* rawUri = evhttp_request_get_uri(req);
  std::string_view target(rawUri ? rawUri : "");
  std::string_view rawPath, query;
  policy::splitTarget(target, &rawPath, &query);
  ex->path = std::string(rawPath.substr(0, 512));

  // --- limits and protocol checks, cheapest first
  if (draining) return ex->sendError(Reason::ShuttingDown, "");
  if (fresh && static_cast<int64_t>(conns.size()) > cfg.server.maxConnections)
    return ex->sendError(Reason::Overloaded, "");
  if (static_cast<int64_t>(target.size() + strlen(ex->method.c_str()) + 10) >
      cfg.server.maxRequestLine)
    return ex->sendError(Reason::RequestLineTooLong, "");
  if (static_cast<int64_t>(headerBytes(req)) > cfg.server.maxHeaderSize)
    return ex->sendError(Reason::HeadersTooLarge, "");
  if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD)
    return ex->sendError(Reason::MethodNotAllowed, "");
  if (evbuffer_get_length(evhttp_request_get_input_buffer(req)) > 0)
    return ex->sendError(Reason::RequestBody, "");
  if (target.empty() || target.front() != '/') {
    // absolute-form ("http://other/") or authority-form: we are not a proxy.
    return ex->sendError(
        target.find("://") != std::string_view::npos ? Reason::AbsoluteTarget : Reason::BadRequest,
        "");
  }

  policy::PathResult pr = policy::normalizePath(rawPath);
  if (pr.reason != Reason::None) return ex->sendError(pr.reason, "");
  const std::string& p = pr.path;

  if (p == "/-/metrics") {
    if (!adminAllowed(req, conn->addr)) return ex->sendError(Reason::Denied, "admin route");
    return ex->sendSimple(200, {{"Content-Type", "text/plain; version=0.0.4"},
                                {"Cache-Control", "no-store"}},
                          metrics());
  }
  if (p == "/-/health") {
    std::string body = "{\"status\":\"ok\",\"active\":" + std::to_string(active.size()) + "}\n";
    return ex->sendSimple(200, {{"Content-Type", "application/json"}, {"Cache-Control", "no-store"}},
                          body);
  }

  // --- routes
  policy::Route route;
  std::string virt;
  if (cfg.server.role == conf::Role::Edge) {
    route = policy::Route::Edge;
    virt = p;
  } else if (p.starts_with("/d/")) {
    route = policy::Route::Download;
    virt = p.substr(2);
  } else if (p.starts_with("/p/")) {
    route = policy::Route::Proxy;
    virt = p.substr(2);
  } else {
    return ex->sendError(Reason::UnknownRoute, "");
  }
  policy::MountMatch mm = policy::matchMount(cfg.mounts, virt);
  if (mm.index < 0) return ex->sendError(Reason::UnknownMount, "");

  // --- signature (SPEC §6): /d/ and edge routes, unless the client is exempt
  if (!cfg.server.signSecret.empty() && route != policy::Route::Proxy &&
      !policy::anyCidrContains(cfg.server.signExempt, conn->addr)) {
    std::string sign = policy::queryParam(query, "sign").value_or("");
    switch (policy::verifySign(cfg.server.signSecret, virt, sign, wallSeconds())) {
      case policy::SignCheck::Ok: break;
      case policy::SignCheck::Missing: return ex->sendError(Reason::SignMissing, "");
      case policy::SignCheck::Invalid: return ex->sendError(Reason::SignInvalid, "");
      case policy::SignCheck::Expired: return ex->sendError(Reason::SignExpired, "");
    }
  }

  // --- policy
  evkeyvalq* in = evhttp_request_get_input_headers(req);
  const char* ua = evhttp_find_header(in, "User-Agent");
  const char* range = evhttp_find_header(in, "Range");
  const char* ifRange = evhttp_find_header(in, "If-Range");
  policy::RequestFacts facts;
  facts.route = route;
  facts.method = ex->method;
  facts.path = virt;
  facts.mountIndex = mm.index;
  facts.client = conn->addr;
  facts.userAgent = ua ? ua : "";
  proxy::Request preq;
  preq.id = ex->id;
  preq.head = ex->head;
  preq.mountIndex = mm.index;
  preq.path = virt;
  preq.rest = mm.rest;
  preq.range = range ? range : "";
  preq.ifRange = ifRange ? ifRange : "";
  preq.client = conn->addr;
  preq.userAgent = facts.userAgent;
  ex->state = ExState::Running;
  deliver(ex, facts, preq);
}

void Server::Impl::deliver(Exchange* ex, policy::RequestFacts facts, proxy::Request preq) {
  policy::Decision d = rules.decide(cfg, facts, engine.traits());
  if (d.needsSize) {
    // A rule's size condition: learn the size (index or a 1-byte probe), then decide again.
    auto* exch = ex;
    ex->retired.push_back(std::move(ex->job));
    auto probe = engine.probeSize(preq, [this, exch, facts, preq](std::optional<uint64_t> size) mutable {
      if (exch->state != ExState::Running) return;
      facts.size = size;
      facts.sizeUnknowable = !size;
      exch->retired.push_back(std::move(exch->job));
      deliver(exch, facts, preq);
    });
    // The size may have been known at once (index, stat): then the delivery
    // already started and owns ex->job; the probe only waits to be freed.
    if (ex->job) ex->retired.push_back(std::move(probe));
    else ex->job = std::move(probe);
    return;
  }
  ex->delivery = conf::deliveryName(d.delivery);
  if (d.delivery == conf::Delivery::Deny) return ex->sendError(Reason::Denied, "rule " + d.rule);
  if (d.delivery == conf::Delivery::ProxyUrl) {
    int64_t ttl = cfg.server.signTtlMs;
    int64_t expiry = ttl > 0 ? wallSeconds() + (ttl + 999) / 1000 : 0;
    std::string loc = d.proxyUrl;
    while (!loc.empty() && loc.back() == '/') loc.pop_back();
    loc += policy::encodePath(facts.path);
    if (!cfg.server.signSecret.empty())
      loc += "?sign=" + policy::encodeQueryValue(policy::sign(cfg.server.signSecret, facts.path, expiry));
    return ex->sendSimple(302,
                          {{"Location", loc},
                           {"Referrer-Policy", "no-referrer"},
                           {"Cache-Control", "no-store"},
                           {"Content-Length", "0"}},
                          "");
  }
  preq.decision = d;
  ex->job = engine.start(preq, ex);
}

// ------------------------------------------------------------------ Server

Server::Server(event_base* base, const conf::Config& cfg, const policy::RuleSet& rules,
               proxy::Engine& engine)
    : impl_(std::make_unique<Impl>(base, cfg, rules, engine)) {}

Server::~Server() {
  Impl& s = *impl_;
  // Requests still running at exit: detach them from their connections first.
  for (auto& [evcon, c] : s.conns) {
    if (c->current) {
      Exchange* ex = c->current;
      c->current = nullptr;
      ex->conn = nullptr;
      if (ex->job) ex->job->onClientGone();
      s.active.erase(ex);
      s.dead.push_back(ex);
    }
    evhttp_connection_set_closecb(evcon, nullptr, nullptr);
    delete c;
  }
  s.conns.clear();
  for (Exchange* ex : s.dead) {
    ex->job.reset();
    ex->req = nullptr;
    delete ex;
  }
  s.dead.clear();
  if (s.http) evhttp_free(s.http);
  if (s.reaper) event_free(s.reaper);
  if (s.flushTimer) event_free(s.flushTimer);
  if (s.graceTimer) event_free(s.graceTimer);
  if (s.drainPoll) event_free(s.drainPoll);
  if (s.lagTimer) event_free(s.lagTimer);
  if (s.accessLog) {
    fflush(s.accessLog);
    if (s.ownAccessLog) fclose(s.accessLog);
  }
}

size_t Server::activeRequests() const { return impl_->active.size(); }

namespace {

int listenSocket(const conf::ListenAddr& l, std::string* err) {
  sockaddr_storage ss{};
  socklen_t len;
  int family;
  if (l.host.find(':') != std::string::npos) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(l.port);
    inet_pton(AF_INET6, l.host.c_str(), &a->sin6_addr);
    len = sizeof *a;
    family = AF_INET6;
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(l.port);
    inet_pton(AF_INET, l.host.c_str(), &a->sin_addr);
    len = sizeof *a;
    family = AF_INET;
  }
  int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *err = strerror(errno);
    return -1;
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // inherited by accepted sockets
  if (family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  if (bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || listen(fd, 1024) != 0) {
    *err = strerror(errno);
    close(fd);
    return -1;
  }
  return fd;
}

std::string boundName(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  char buf[INET6_ADDRSTRLEN] = "?";
  if (ss.ss_family == AF_INET6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &a->sin6_addr, buf, sizeof buf);
    return "[" + std::string(buf) + "]:" + std::to_string(ntohs(a->sin6_port));
  }
  auto* a = reinterpret_cast<sockaddr_in*>(&ss);
  inet_ntop(AF_INET, &a->sin_addr, buf, sizeof buf);
  return std::string(buf) + ":" + std::to_string(ntohs(a->sin_port));
}

}  // namespace

bool Server::start(std::string* err) {
  Impl& s = *impl_;
  s.http = evhttp_new(s.base);
  // Everything reaches our handler, which answers 405 itself (evhttp would say 501).
  evhttp_set_allowed_methods(s.http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST |
                                         EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
                                         EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
  evhttp_set_default_content_type(s.http, nullptr);
  int64_t hard = std::max({s.cfg.server.maxHeaderSize, s.cfg.server.maxRequestLine} ) * 4;
  evhttp_set_max_headers_size(s.http, static_cast<ev_ssize_t>(std::max(hard, kHardHeadBytes)));
  evhttp_set_max_body_size(s.http, kMaxBodyBytes);
  timeval idle{s.cfg.server.idleTimeoutMs / 1000,
               static_cast<suseconds_t>((s.cfg.server.idleTimeoutMs % 1000) * 1000)};
  evhttp_set_timeout_tv(s.http, &idle);
  evhttp_set_gencb(
      s.http, [](evhttp_request* r, void* arg) { static_cast<Impl*>(arg)->onRequest(r); }, &s);
  s.reaper = event_new(s.base, -1, 0, [](evutil_socket_t, short, void* arg) {
    static_cast<Impl*>(arg)->reap();
  }, &s);
  s.lagTimer = event_new(s.base, -1, EV_PERSIST, [](evutil_socket_t, short, void* arg) {
    auto* impl = static_cast<Impl*>(arg);
    int64_t now = monoNs();
    int64_t lateUs = (now - impl->lagDueNs) / 1000;
    impl->lagDueNs = now + 50'000'000;
    if (lateUs > impl->lagMaxUs) impl->lagMaxUs = lateUs;
    if (lateUs > 10'000) impl->lagOver10ms++;
    if (lateUs > 100'000) impl->lagOver100ms++;
  }, &s);
  s.lagDueNs = monoNs() + 50'000'000;
  timeval lagTv{0, 50'000};
  event_add(s.lagTimer, &lagTv);

  if (s.cfg.server.accessLog == "-") {
    s.accessLog = stdout;
  } else if (s.cfg.server.accessLog != "off") {
    s.accessLog = fopen(s.cfg.server.accessLog.c_str(), "ae");
    if (!s.accessLog) {
      *err = "access_log " + s.cfg.server.accessLog + ": " + strerror(errno);
      return false;
    }
    s.ownAccessLog = true;
  }
  if (s.accessLog) {
    // Lines are buffered and flushed every 200 ms, not once per request.
    s.flushTimer = event_new(s.base, -1, EV_PERSIST, [](evutil_socket_t, short, void* arg) {
      fflush(static_cast<FILE*>(arg));
    }, s.accessLog);
    timeval tv{0, 200'000};
    event_add(s.flushTimer, &tv);
  }

  for (const auto& l : s.cfg.server.listen) {
    std::string why;
    int fd = listenSocket(l, &why);
    if (fd < 0) {
      *err = "listen " + l.host + ":" + std::to_string(l.port) + ": " + why;
      return false;
    }
    evhttp_bound_socket* b = evhttp_accept_socket_with_handle(s.http, fd);
    if (!b) {
      close(fd);
      *err = "listen " + l.host + ": evhttp refused the socket";
      return false;
    }
    s.bound.push_back(b);
    conf::Log::write(conf::LogLevel::Info, "listening", "address=" + boundName(fd));
  }
  return true;
}

void Server::drain(int64_t graceMs, std::function<void()> done) {
  Impl& s = *impl_;
  if (s.draining) return;
  s.draining = true;
  for (auto* b : s.bound) evhttp_del_accept_socket(s.http, b);
  s.bound.clear();
  s.drained = std::move(done);
  conf::Log::write(conf::LogLevel::Info, "draining",
                   "active=" + std::to_string(s.active.size()) + " grace_ms=" + std::to_string(graceMs));
  s.drainPoll = evtimer_new(s.base, [](evutil_socket_t, short, void* arg) {
    static_cast<Impl*>(arg)->checkDrained();
  }, &s);
  s.graceTimer = evtimer_new(s.base, [](evutil_socket_t, short, void* arg) {
    auto* impl = static_cast<Impl*>(arg);
    conf::Log::write(conf::LogLevel::Warn, "grace_expired",
                     "active=" + std::to_string(impl->active.size()));
    if (impl->drained) {
      auto fn = std::move(impl->drained);
      impl->drained = nullptr;
      fn();
    }
  }, &s);
  timeval tv{graceMs / 1000, static_cast<suseconds_t>((graceMs % 1000) * 1000)};
  evtimer_add(s.graceTimer, &tv);
  s.checkDrained();
}

}  // namespace slip
