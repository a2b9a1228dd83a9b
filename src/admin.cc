// The admin routes: /-/health (anyone); /-/metrics, /-/status and the JSON
// API under /-/api/ (admin_allow clients or `Authorization: Bearer
// <admin_token>`, src/admin_api.h's adminAllowed).
#include <openssl/evp.h>

#include <algorithm>

#include "src/admin_api.h"
#include "src/front.h"
#include "src/status_page.h"

namespace slip {
namespace {

// 'sha256-<base64>' of the text between `open` and `close` in the page: the
// Content-Security-Policy lets exactly the page's own script and style run.
std::string cspHash(std::string_view page, std::string_view open, std::string_view close) {
  size_t a = page.find(open);
  size_t b = a == std::string_view::npos ? a : page.find(close, a + open.size());
  if (b == std::string_view::npos) return "'none'";
  std::string_view body = page.substr(a + open.size(), b - a - open.size());
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_Digest(body.data(), body.size(), md, &n, EVP_sha256(), nullptr);
  unsigned char b64[4 * ((EVP_MAX_MD_SIZE + 2) / 3) + 1];
  EVP_EncodeBlock(b64, md, static_cast<int>(n));
  return "'sha256-" + std::string(reinterpret_cast<char*>(b64)) + "'";
}

const proxy::Headers& statusPageHeaders() {
  static const proxy::Headers h = [] {
    std::string_view page = statusPage();
    std::string csp = "default-src 'none'; script-src " + cspHash(page, "<script>", "</script>") +
                      "; style-src " + cspHash(page, "<style>", "</style>") +
                      "; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
                      "frame-ancestors 'none'";
    return proxy::Headers{{"Content-Type", "text/html; charset=utf-8"},
                          {"Cache-Control", "no-store"},
                          {"Content-Security-Policy", csp},
                          {"X-Frame-Options", "DENY"},
                          {"X-Content-Type-Options", "nosniff"},
                          {"Referrer-Policy", "no-referrer"}};
  }();
  return h;
}

/// A Prometheus label value: backslash, double quote and newline escaped.
std::string labelValue(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}
}  // namespace

void Server::Impl::addAdminRoutes() {
  adminCtx = makeAdminContext(*this);
  router.add({.pattern = "/-/health", .handler = [this](Exchange& ex) {
                std::string body = "{\"status\":\"ok\",\"active\":" + std::to_string(active.size()) + "}\n";
                ex.respond(200, {{"Content-Type", "application/json"}, {"Cache-Control", "no-store"}}, body);
              }});
  router.add({.pattern = "/-/metrics", .admin = true, .handler = [this](Exchange& ex) {
                ex.respond(200, {{"Content-Type", "text/plain; version=0.0.4"}, {"Cache-Control", "no-store"}},
                           metrics());
              }});
  router.add({.pattern = "/-/status", .admin = true, .handler = [](Exchange& ex) {
                ex.respond(200, statusPageHeaders(), statusPage());
              }});
  // The API answers its own methods and its refusals as JSON (admin check
  // included), so the route lets every method with a meaning here through.
  router.add({.pattern = std::string(admin::kApiPrefix),
              .prefix = true,
              .methods = {"GET", "HEAD", "POST", "DELETE", "PUT", "PATCH", "OPTIONS"},
              .acceptsBody = true,
              .handler = [this](Exchange& ex) { serveApi(ex); }});
  // The rest of /-/ is reserved for admin pages, on every role.
  router.add({.pattern = "/-/", .prefix = true, .handler = [](Exchange& ex) {
                ex.sendError(policy::Reason::UnknownRoute, "");
              }});
}

bool Server::Impl::adminAllowed(const Exchange& ex) const {
  return admin::adminAllowed(cfg().server, ex.client(), ex.request().headers.get("Authorization"));
}

void Server::Impl::serveApi(Exchange& ex) {
  const http::HeaderList& h = ex.request().headers;
  admin::ApiResponse resp;
  if (!adminAllowed(ex)) {
    if (cfg().server.adminToken.empty()) {
      resp = admin::errorResponse(
          policy::Reason::Denied, "admin route: the client is not in admin_allow (no admin_token is set)");
    } else {
      resp = admin::errorResponse(policy::Reason::AdminAuth, "");
      resp.headers.emplace_back("WWW-Authenticate", admin::kApiChallenge);
    }
  } else {
    admin::ApiRequest r;
    r.method = ex.method();
    r.path = ex.path();
    r.query = std::string(ex.query());
    r.contentType = std::string(h.get("Content-Type"));
    if (const std::string* o = h.find("Origin")) r.origin = *o;
    r.secFetchSite = std::string(h.get("Sec-Fetch-Site"));
    r.customHeader = std::string(h.get("X-Slipstream"));
    r.host = std::string(h.get("Host"));
    r.tls = ex.overTls();
    r.body = ex.request().body;
    r.client = ex.client();
    resp = admin::handle(r, *adminCtx);
  }
  proxy::Headers out{{"Content-Type", resp.contentType}};
  for (auto& [name, value] : resp.headers) out.push_back({name, value});
  if (resp.reason != policy::Reason::None) ex.noteFailure(resp.reason);
  ex.respond(resp.status, std::move(out), resp.body);
}

Server::Impl::Totals Server::Impl::totals() const {
  Totals t;
  t.requests = requests;
  t.bytesOut = bytesOut;
  t.hitRequests = hitRequests;
  t.hitBytes = hitBytesOut;
  t.accepted = accepted;
  t.active = active.size();
  t.conns = conns.size() + sniffing.size();
  t.byStatus = byStatus;
  t.failures = failures;
  for (size_t i = 0; workers && i < workers->size(); i++) {
    const WorkerFigures& f = workers->figures(i);
    t.requests += f.requests;
    t.bytesOut += f.bytesOut;
    t.hitRequests += f.hits;
    t.hitBytes += f.hitBytes;
    t.accepted += f.accepted;
    t.active += f.active;
    t.conns += f.conns;
    std::lock_guard<std::mutex> g(f.mu);
    for (const auto& [code, n] : f.byStatus) t.byStatus[code] += n;
    for (const auto& [reason, n] : f.failures) t.failures[reason] += n;
  }
  return t;
}

// Per thread: thread 0 is the main loop (every request it answered, warm or
// not), 1.. the workers (the warm hits they served themselves).
std::string Server::Impl::threadMetrics() const {
  std::string o =
      "# HELP slipstream_thread_requests_total Requests answered by each front-end thread (0 = the main loop).\n"
      "# TYPE slipstream_thread_requests_total counter\n"
      "slipstream_thread_requests_total{thread=\"0\"} " + std::to_string(requests) + "\n";
  std::string hits =
      "# HELP slipstream_thread_hits_total Responses with X-Cache: HIT answered by each front-end thread.\n"
      "# TYPE slipstream_thread_hits_total counter\n"
      "slipstream_thread_hits_total{thread=\"0\"} " + std::to_string(hitRequests) + "\n";
  std::string handoffs =
      "# HELP slipstream_thread_handoffs_total Connections a worker thread handed to the main loop.\n"
      "# TYPE slipstream_thread_handoffs_total counter\n";
  for (size_t i = 0; workers && i < workers->size(); i++) {
    const WorkerFigures& f = workers->figures(i);
    std::string label = "{thread=\"" + std::to_string(i + 1) + "\"} ";
    o += "slipstream_thread_requests_total" + label + std::to_string(f.requests.load()) + "\n";
    hits += "slipstream_thread_hits_total" + label + std::to_string(f.hits.load()) + "\n";
    handoffs += "slipstream_thread_handoffs_total" + label + std::to_string(f.handoffs.load()) + "\n";
  }
  return o + hits + handoffs +
         "# HELP slipstream_front_threads Threads accepting plain-HTTP clients ([server] workers).\n"
         "# TYPE slipstream_front_threads gauge\n"
         "slipstream_front_threads " + std::to_string(workers ? workers->size() + 1 : 1) + "\n";
}

std::string Server::Impl::metrics() const {
  proxy::Stats st = engine.snapshot();
  Totals t = totals();
  std::string o;
  auto metric = [&o](const char* name, const char* type, const char* help, uint64_t v) {
    o += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n" + name +
         " " + std::to_string(v) + "\n";
  };
  o += "# HELP slipstream_requests_total Requests answered, by status.\n"
       "# TYPE slipstream_requests_total counter\n";
  for (const auto& [code, n] : t.byStatus)
    o += "slipstream_requests_total{status=\"" + std::to_string(code) + "\"} " + std::to_string(n) + "\n";
  metric("slipstream_active_requests", "gauge", "Requests running now.", t.active);
  metric("slipstream_loop_lag_max_microseconds", "gauge", "Longest the event loop was late for a timer.",
         static_cast<uint64_t>(lagMaxUs));
  metric("slipstream_loop_lag_over_10ms_total", "counter", "Timer ticks the loop served over 10 ms late.",
         lagOver10ms);
  metric("slipstream_loop_lag_over_100ms_total", "counter", "Timer ticks the loop served over 100 ms late.",
         lagOver100ms);
  o += "# HELP slipstream_request_failures_total Requests that failed, by reason (policy/reasons.cc).\n"
       "# TYPE slipstream_request_failures_total counter\n";
  for (const auto& [reason, n] : t.failures)
    o += "slipstream_request_failures_total{reason=\"" + reason + "\"} " + std::to_string(n) + "\n";
  metric("slipstream_client_connections", "gauge",
         "Client connections open (on tls listeners also those before their first byte).",
         t.conns);
  metric("slipstream_accepted_connections_total", "counter", "Client connections accepted.", t.accepted);
  uint64_t refused = refusedConns;
  for (size_t i = 0; workers && i < workers->size(); i++) refused += workers->figures(i).refused;
  metric("slipstream_refused_connections_total", "counter",
         "Connections answered 503 and closed because max_connections were open.", refused);
  uint64_t pauses = 0;
  for (const auto& l : listeners) pauses += l->pauses();
  for (size_t i = 0; workers && i < workers->size(); i++) pauses += workers->figures(i).acceptPauses;
  metric("slipstream_accept_pauses_total", "counter",
         "Times accepting paused for lack of file descriptors.", pauses);
  metric("slipstream_dav_password_checks_total", "counter",
         "WebDAV passwords hashed (verdicts are cached; a worker thread hashes).",
         authenticator.hashings());
  metric("slipstream_sent_bytes_total", "counter", "Body bytes sent to clients.", t.bytesOut);
  o += threadMetrics();
  o += "# HELP slipstream_config_reloads_total Configuration reloads (SIGHUP), by result.\n"
       "# TYPE slipstream_config_reloads_total counter\n"
       "slipstream_config_reloads_total{result=\"ok\"} " + std::to_string(reloads) + "\n"
       "slipstream_config_reloads_total{result=\"failed\"} " + std::to_string(reloadFailures) + "\n";
  o += tlsMetrics();
  metric("slipstream_upstream_requests_total", "counter", "Upstream HTTP requests started.", st.upstreamRequests);
  metric("slipstream_upstream_bytes_total", "counter", "Body bytes received from upstreams.", st.upstreamBytes);
  metric("slipstream_upstream_errors_total", "counter", "Upstream requests that failed.", st.upstreamErrors);
  metric("slipstream_upstream_retries_total", "counter", "Upstream retries after a failure.", st.retries);
  metric("slipstream_upstream_transfers", "gauge", "Upstream transfers running now.",
         static_cast<uint64_t>(std::max(0, st.activeTransfers)));
  metric("slipstream_fill_preemptions_total", "counter",
         "Background (prefetch) pieces stopped so that a playing client got the connection.", st.preemptions);
  const EpisodeWarmer::Counters& ep = episodes.counters();
  metric("slipstream_next_episode_started_total", "counter",
         "Next episodes whose warming (head and media index) started.", ep.started);
  metric("slipstream_next_episode_warmed_total", "counter",
         "Next episodes warmed: head and media index stored.", ep.warmed);
  metric("slipstream_next_episode_failed_total", "counter", "Next-episode warmings that failed.", ep.failed);
  metric("slipstream_next_episode_skipped_total", "counter",
         "Next episodes not warmed: no listing, a rule that does not cache them, too many running.",
         ep.skipped);
  metric("slipstream_link_resolutions_total", "counter", "Links resolved by sources.", st.linkResolutions);
  metric("slipstream_cancelled_blocks_total", "counter",
         "Block fetches stopped because no reader wanted them any more (a seek, a client gone).",
         st.cancelledBlocks);
  metric("slipstream_cache_hit_bytes_total", "counter", "Bytes served from stored blocks.", st.cacheHitBytes);
  metric("slipstream_fill_memory_blocks_total", "counter",
         "Blocks fetched into memory buffers: clients read them as bytes arrive, the disk writes behind.",
         st.memoryBlocks);
  metric("slipstream_fill_dropped_blocks_total", "counter",
         "Blocks served from memory but not cached because the disk was behind (a later reader misses).",
         st.droppedBlocks);
  metric("slipstream_fill_memory_read_bytes_total", "counter", "Bytes served to clients from block buffers.",
         st.memoryReadBytes);
  metric("slipstream_fill_memory_bytes", "gauge", "Block buffers alive now ([cache] fill_memory bounds them).",
         st.fillMemoryBytes);
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
    metric("slipstream_cache_bypassed_total", "counter",
           "Responses streamed uncached because the store could not take or give their bytes.", st.cacheBypasses);
  }
  // Per upstream host of the fill: the adaptive connection count (issue 11).
  auto perHost = [&o, &st](const char* name, const char* help, int (*get)(const proxy::HostStats&)) {
    if (st.hosts.empty()) return;
    o += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " gauge\n";
    for (const auto& h : st.hosts)
      o += std::string(name) + "{host=\"" + labelValue(h.host) + "\"} " + std::to_string(get(h)) + "\n";
  };
  perHost("slipstream_upstream_host_connections",
          "Transfers the fill runs at once against this upstream host now (adaptive; connections is the ceiling).",
          [](const proxy::HostStats& h) { return h.target; });
  perHost("slipstream_upstream_host_transfers", "The fill's transfers to this upstream host now.",
          [](const proxy::HostStats& h) { return h.running; });
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

}  // namespace slip
