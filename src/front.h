// Private to src/: the server's state, shared by server.cc (connections,
// exchanges, drain), deliver.cc (the download routes), dav.cc (WebDAV) and
// admin.cc (health, metrics). Today one Impl runs on the one event loop; with worker threads
// (issue 14) each worker would own its loop, listeners, connections and
// exchanges like this, sharing only the configuration, the rules and the
// engine's thread-safe parts (see src/DESIGN.md).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "conf/worker.h"
#include "src/access_log.h"
#include "src/auth.h"
#include "src/episodes.h"
#include "src/exchange.h"
#include "src/http_conn.h"
#include "src/listener.h"
#include "src/prefetches.h"
#include "src/router.h"
#include "src/server.h"
#include "src/tls.h"
#include "src/workers.h"

namespace slip {

namespace admin {
class AdminContext;
}

/// One configuration as the front end runs it: the Config, its compiled
/// rules, the engine's Setup built from it and the WebDAV users' checker.
/// The server's current one answers new requests; an Exchange keeps the one
/// it arrived under (a reload changes nothing for a running request).
struct Generation {
  std::shared_ptr<const conf::Config> cfg;
  policy::RuleSet rules;
  proxy::SetupPtr setup;
  int64_t loadedWallMs = 0;
};

struct Server::Impl final : http::ConnHost, ExchangeHost {
  Impl(event_base* b, std::shared_ptr<const conf::Config> c, policy::RuleSet r, proxy::Engine& e,
       store::Store* st, const Clock& clk);
  ~Impl() override;

  event_base* base;
  std::shared_ptr<const Generation> gen;  // the current configuration
  /// The current configuration (what new requests and connections get).
  const conf::Config& cfg() const { return *gen->cfg; }
  proxy::Engine& engine;
  store::Store* store;  // null when no mount caches
  const Clock& clock;
  int64_t startedWallMs = 0;
  http::UserCopier copier;  // TLS responses: file segments through user space
  http::ConnOptions connOpts;
  Router router;
  AccessLog accessLog;
  std::vector<std::unique_ptr<Listener>> listeners;
  std::unordered_map<http::Conn*, std::unique_ptr<http::Conn>> conns;
  std::vector<std::unique_ptr<http::Conn>> deadConns;
  std::unordered_map<Exchange*, std::unique_ptr<Exchange>> active;
  std::vector<std::unique_ptr<Exchange>> dead;
  event* reaper = nullptr;     // frees dead exchanges and connections
  event* graceTimer = nullptr;
  event* drainPoll = nullptr;  // re-checks while finished responses flush
  bool draining = false;
  std::function<void()> drained;
  // ---- worker threads (issue 14; src/workers.h, DESIGN.md "Threads")
  FrontShared shared{clock, store, router, accessLog};  // what the workers read
  Mailbox mailbox{base};                                // connections handed over by workers
  std::unique_ptr<WorkerPool> workers;                  // none with workers = 1
  uint64_t handedIn = 0;                                // connections taken over from workers
  /// Threads that accept plain HTTP (the loop included): `workers`, auto = cores.
  int frontThreads() const;
  bool startWorkers(std::string* err);
  /// The plain-HTTP listen addresses as bound (port 0 resolved).
  std::vector<conf::ListenAddr> plainAddrs() const;
  void adopt(Handoff& h);
  /// Sums over the main loop and the workers, for /-/metrics and the stats.
  struct Totals {
    uint64_t requests = 0, bytesOut = 0, hitRequests = 0, hitBytes = 0, accepted = 0, active = 0, conns = 0;
    std::map<int, uint64_t> byStatus;
    std::map<std::string, uint64_t> failures;
  };
  Totals totals() const;
  std::string threadMetrics() const;

  // WebDAV users. The worker hashes passwords off the loop; it is declared
  // after the authenticator so that it stops (dropping pending hashings)
  // before the authenticator its callbacks use goes.
  auth::Authenticator authenticator;
  Worker authWorker;
  // Expires with the server: callbacks that may outlive it (a listing, a
  // hashing) check it before they look for their exchange.
  std::shared_ptr<bool> life = std::make_shared<bool>(true);

  // TLS (server_tls.cc). Sockets accepted on a tls listener wait in
  // `sniffing` for their first byte: a TLS handshake (0x16, or the high bit
  // of an SSLv2-style hello) gets the current context, anything else is
  // plain HTTP and gets a plain-text 400 (the nginx rule).
  struct Sniff {
    Impl* s;
    int fd;
    event* ev;
    std::string peer;
    int64_t acceptedNs;
  };
  tls::Tls tls;
  std::unordered_map<Sniff*, std::unique_ptr<Sniff>> sniffing;
  uint64_t tlsAccepted = 0, tlsPlainHttp = 0, tlsReloads = 0, tlsReloadFailures = 0;
  std::map<std::string, uint64_t> tlsFailures;  // by reason
  // counters for /-/metrics
  uint64_t requests = 0, bytesOut = 0;
  uint64_t accepted = 0, refusedConns = 0;
  std::map<int, uint64_t> byStatus;
  std::map<std::string, uint64_t> failures;  // by reason code
  // Event-loop lag: how late a 50 ms timer fires (SPEC §5: the loop must not
  // block on disk or DNS for long; this measures it).
  event* lagTimer = nullptr;
  int64_t lagDueNs = 0;
  int64_t lagLastUs = 0;
  int64_t lagMaxUs = 0;
  uint64_t lagOver10ms = 0, lagOver100ms = 0;
  // Client speeds for the status page: every exchange's bytes sampled by
  // this timer (Exchange::sampleSpeed), never by the page.
  event* speedTimer = nullptr;
  // Figures for /-/api/v1/stats, gathered as requests end.
  struct MountFigures {
    uint64_t linkRefusals = 0, rateLimited = 0;
    int64_t lastErrorUnix = 0;
    policy::Reason lastError = policy::Reason::None;
    std::string lastErrorDetail;
  };
  std::map<std::string, MountFigures> mountFigures;  // by mount name (they outlive a reload)
  std::unique_ptr<admin::AdminContext> adminCtx;  // the API's view of this server
  PrefetchRegistry prefetches{clock};             // POST /-/api/v1/prefetch jobs
  EpisodeWarmer episodes{engine, clock, life, shared.nextId};  // the next episode, warmed ahead
  // Responses through the block cache by X-Cache: HIT, and MISS or PARTIAL
  // (a PARTIAL's stored part is not told apart).
  uint64_t hitRequests = 0, missRequests = 0, hitBytesOut = 0, missBytesOut = 0;

  // ---- reload.cc: SIGHUP
  void reloadConfig();
  /// The front end's part of a valid reload (see Server::reloadConfig):
  /// false with *err, and nothing changed, when a new listen address
  /// cannot be bound.
  bool reload(std::shared_ptr<const conf::Config> c, policy::RuleSet r, proxy::SetupPtr setup, std::string* err);
  /// Opens a listener for `l` (false with *err when it cannot bind).
  std::unique_ptr<Listener> makeListener(const conf::ListenAddr& l, std::string* err);
  bool openListener(const conf::ListenAddr& l, std::string* err);
  /// The engine refuses links to these listeners (as bound).
  void tellEngineSelf();
  void applyConnLimits(const conf::Server& s);
  struct ReloadOutcome {
    int64_t atWallMs = 0;
    bool ok = false;
    std::vector<std::string> errors;        // file:line: [section] key: what
    std::vector<std::string> needsRestart;  // "[cache] dir"
  };
  std::optional<ReloadOutcome> lastReload;
  uint64_t reloads = 0, reloadFailures = 0;

  // ---- server.cc
  void onAccept(int fd, const sockaddr_storage& peer, Listener& from);
  void onRequest(http::Conn& c, http::Request&& r) override;
  void onClosed(http::Conn& c) override;
  void retire(Exchange& ex) override;
  void route(Exchange& ex);
  void reap();
  void checkDrained();
  bool selfRequest(const http::Request& r) const;
  void noteOutcome(const Exchange& ex);
  void noteMountOutcome(const Exchange& ex);
  /// The response went through the block cache (an X-Cache header, not a
  /// local mount).
  bool usesCache(const Exchange& ex) const;

  // ---- server_tls.cc: TLS listeners
  void onTlsAccept(int fd, std::string peer);
  void sniffed(Sniff* sn, short what);
  void dropSniff(Sniff* sn);
  void onTlsFailure(http::Conn& c, const std::string& reason) override;
  bool loadTls(std::string* err);
  void reloadTls();
  std::string tlsMetrics() const;

  // ---- deliver.cc: /d/, /p/ and the edge
  void addDeliveryRoutes();
  void deliverPath(Exchange& ex, policy::Route route, std::string virt);
  void deliver(Exchange& ex, policy::RequestFacts facts, proxy::Request preq);

  // ---- dav.cc: /dav/ (read-only WebDAV)
  void addDavRoutes();
  void davRequest(Exchange& ex);  // authentication, then the method

  // ---- admin.cc: /-/health, /-/metrics, /-/status, /-/api/
  void addAdminRoutes();
  bool adminAllowed(const Exchange& ex) const;
  std::string metrics() const;
  void serveApi(Exchange& ex);
};

/// The admin API's AdminContext over a running server (admin_context.cc).
std::unique_ptr<admin::AdminContext> makeAdminContext(Server::Impl& s);

}  // namespace slip
