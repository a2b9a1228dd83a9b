// Private to src/: the server's state, shared by server.cc (connections,
// exchanges, drain), deliver.cc (the download routes) and admin.cc (health,
// metrics). Today one Impl runs on the one event loop; with worker threads
// (issue 14) each worker would own its loop, listeners, connections and
// exchanges like this, sharing only the configuration, the rules and the
// engine's thread-safe parts (see src/DESIGN.md).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "src/access_log.h"
#include "src/exchange.h"
#include "src/http_conn.h"
#include "src/listener.h"
#include "src/router.h"
#include "src/server.h"

namespace slip {

struct Server::Impl final : http::ConnHost, ExchangeHost {
  Impl(event_base* b, const conf::Config& c, const policy::RuleSet& r, proxy::Engine& e,
       const Clock& clk);
  ~Impl() override;

  event_base* base;
  const conf::Config& cfg;
  const policy::RuleSet& rules;
  proxy::Engine& engine;
  const Clock& clock;
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
  uint64_t nextId = 1;

  // counters for /-/metrics
  uint64_t requests = 0, bytesOut = 0;
  uint64_t accepted = 0, refusedConns = 0;
  std::map<int, uint64_t> byStatus;
  std::map<std::string, uint64_t> failures;  // by reason code
  // Event-loop lag: how late a 50 ms timer fires (SPEC §5: the loop must not
  // block on disk or DNS for long; this measures it).
  event* lagTimer = nullptr;
  int64_t lagDueNs = 0;
  int64_t lagMaxUs = 0;
  uint64_t lagOver10ms = 0, lagOver100ms = 0;

  // ---- server.cc
  void onAccept(int fd, const sockaddr_storage& peer, Listener& from);
  void onRequest(http::Conn& c, http::Request&& r) override;
  void onClosed(http::Conn& c) override;
  void retire(Exchange& ex) override;
  void route(Exchange& ex);
  void reap();
  void checkDrained();
  bool selfRequest(const http::Request& r) const;

  // ---- deliver.cc: /d/, /p/ and the edge
  void addDeliveryRoutes();
  void deliverPath(Exchange& ex, policy::Route route, std::string virt);
  void deliver(Exchange& ex, policy::RequestFacts facts, proxy::Request preq);

  // ---- admin.cc: /-/health, /-/metrics
  void addAdminRoutes();
  bool adminAllowed(const Exchange& ex) const;
  std::string metrics() const;
};

}  // namespace slip
