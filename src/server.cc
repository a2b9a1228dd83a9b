// Front end core. Invariants:
//  - Every accepted socket is a Conn in `conns` from accept until it closes;
//    max_connections counts them all, idle ones included.
//  - An Exchange is in `active` from its request until it ends; the Conn
//    holds it as its ResponseHandler meanwhile, and tells it first when the
//    client vanishes.
//  - Exchanges and Conns are freed by the reaper event, never inside a
//    callback of their own (a Job's Sink call, a bufferevent callback).
#include "src/server.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <thread>

#include "conf/clock.h"
#include "src/admin_api.h"
#include "src/front.h"

namespace slip {

using policy::Reason;

std::string clientAddress(const sockaddr_storage& ss) {
  char buf[INET6_ADDRSTRLEN] = "-";
  if (ss.ss_family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&ss)->sin_addr, buf, sizeof buf);
  } else if (ss.ss_family == AF_INET6) {
    auto* in6 = reinterpret_cast<const sockaddr_in6*>(&ss);
    if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr))
      inet_ntop(AF_INET, in6->sin6_addr.s6_addr + 12, buf, sizeof buf);
    else
      inet_ntop(AF_INET6, &in6->sin6_addr, buf, sizeof buf);
  }
  return buf;
}

Server::Impl::Impl(event_base* b, std::shared_ptr<const conf::Config> c, policy::RuleSet r,
                   proxy::Engine& e, store::Store* st, const Clock& clk)
    : base(b),
      engine(e),
      store(st),
      clock(clk),
      accessLog(b, clk),
      authenticator(c, clk),
      authWorker(b) {
  auto g = std::make_shared<Generation>();
  g->cfg = std::move(c);
  g->rules = std::move(r);
  g->setup = e.setup();
  g->loadedWallMs = clk.wallMs();
  gen = std::move(g);
  shared.publish(gen);
  shared.selfName = e.selfHeader().name;
  shared.selfValue = e.selfHeader().value;
  shared.toMain = [this](std::unique_ptr<Handoff> h) {
    std::shared_ptr<Handoff> held(std::move(h));
    mailbox.post([this, held] { adopt(*held); });
  };
  connOpts.copier = &copier;
  applyConnLimits(cfg().server);
}

// Limits and timeouts of connections accepted from now on (open ones keep
// the options they were made with).
void Server::Impl::applyConnLimits(const conf::Server& s) {
  connOpts.limits.maxRequestLine = static_cast<size_t>(s.maxRequestLine);
  connOpts.limits.maxHeaderBytes = static_cast<size_t>(s.maxHeaderSize);
  connOpts.limits.maxBody = static_cast<size_t>(s.maxRequestBody);
  connOpts.headerTimeoutMs = s.headerTimeoutMs;
  connOpts.idleTimeoutMs = s.idleTimeoutMs;
  connOpts.sendTimeoutMs = s.sendTimeoutMs;
}

Server::Impl::~Impl() {
  workers.reset();  // the threads stop first: nothing of theirs reaches this loop any more
  draining = true;  // requests that end now start nothing (a next episode's warming)
  // Requests still running at exit: their clients count as gone.
  std::vector<http::Conn*> open;
  for (auto& [c, owned] : conns) open.push_back(c);
  for (http::Conn* c : open) c->close();  // tells a running Exchange first
  std::vector<Exchange*> running;
  for (auto& [ex, owned] : active) running.push_back(ex);
  for (Exchange* ex : running) ex->abandon();  // retire() moves it to `dead`
  std::vector<Sniff*> sniffs;
  for (auto& [sn, owned] : sniffing) sniffs.push_back(sn);
  for (Sniff* sn : sniffs) dropSniff(sn);
  active.clear();
  dead.clear();  // jobs go with their exchanges, before the engine
  deadConns.clear();
  conns.clear();
  listeners.clear();
  if (reaper) event_free(reaper);
  if (graceTimer) event_free(graceTimer);
  if (drainPoll) event_free(drainPoll);
  if (lagTimer) event_free(lagTimer);
  if (speedTimer) event_free(speedTimer);
}

// ------------------------------------------------------------------ connections

void Server::Impl::onAccept(int fd, const sockaddr_storage& peer, Listener& from) {
  if (draining) {
    close(fd);
    return;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (from.tls()) return onTlsAccept(fd, clientAddress(peer));
  bufferevent* bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
  if (!bev) {
    close(fd);
    return;
  }
  accepted++;
  bool over = static_cast<int64_t>(conns.size() + sniffing.size()) + shared.workerConns.load() >=
              cfg().server.maxConnections;
  auto conn = std::make_unique<http::Conn>(*this, base, bev, clientAddress(peer), connOpts, clock);
  http::Conn* c = conn.get();
  conns.emplace(c, std::move(conn));
  shared.mainConns++;
  if (over) {
    // Tell the client rather than leave it hanging in the backlog: one
    // 503 and close. The connection is short-lived (lingerMs at most).
    refusedConns++;
    c->refuse(Reason::Overloaded);
    return;
  }
  c->start();
}

void Server::Impl::onClosed(http::Conn& c) {
  auto it = conns.find(&c);
  if (it == conns.end()) return;
  deadConns.push_back(std::move(it->second));
  conns.erase(it);
  shared.mainConns--;
  if (reaper) event_active(reaper, 0, 0);
  for (auto& l : listeners) l->kick();  // a descriptor is free again
}

// A connection a worker thread did not serve: from now on it is this
// loop's, for good (its descriptor, the bytes it had read after the request,
// and the request as the worker parsed it).
void Server::Impl::adopt(Handoff& h) {
  bufferevent* bev = bufferevent_socket_new(base, h.fd, BEV_OPT_CLOSE_ON_FREE);
  if (!bev) return;  // ~Handoff closes the socket
  h.fd = -1;
  if (!h.unread.empty()) {
    // A new socket bufferevent keeps its input's end frozen until it reads:
    // the bytes the worker had read go in front of whatever comes next.
    evbuffer* in = bufferevent_get_input(bev);
    evbuffer_unfreeze(in, 0);
    evbuffer_add(in, h.unread.data(), h.unread.size());
    evbuffer_freeze(in, 0);
  }
  handedIn++;
  conf::Log::write(conf::LogLevel::Debug, "connection_handed_over",
                   "worker=" + std::to_string(h.worker) + " peer=" + h.peer + " unread=" + std::to_string(h.unread.size()) +
                       " target=" + conf::logValue(h.request.target));
  auto conn = std::make_unique<http::Conn>(*this, base, bev, h.peer, connOpts, clock);
  http::Conn* c = conn.get();
  conns.emplace(c, std::move(conn));
  shared.mainConns++;
  c->resume(std::move(h.request));
  if (draining) c->shutdownWhenIdle();  // closes after this response
}

// ------------------------------------------------------------------ requests

void Server::Impl::onRequest(http::Conn& c, http::Request&& r) {
  auto owned = std::make_unique<Exchange>(*this, c, std::move(r), shared.nextId++, clock);
  Exchange& ex = *owned;
  ex.gen = gen;  // answered with the configuration current now, whatever a reload does meanwhile
  active.emplace(&ex, std::move(owned));
  c.setHandler(&ex);
  ex.setState(ExState::Deciding);
  route(ex);
}

bool Server::Impl::selfRequest(const http::Request& r) const {
  const proxy::Header& self = engine.selfHeader();
  const std::string* v = r.headers.find(self.name);
  return v && v->size() == self.value.size() &&
         CRYPTO_memcmp(v->data(), self.value.data(), v->size()) == 0;
}

void Server::Impl::route(Exchange& ex) {
  const http::Request& r = ex.request();
  if (r.error != Reason::None) return ex.sendError(r.error, r.errorDetail);
  // Our own upstream request, come back through a link that points at us:
  // never admitted anywhere (no admin page for it, no loop).
  if (selfRequest(r)) return ex.sendError(Reason::SelfRequest, "");
  if (draining) return ex.sendError(Reason::ShuttingDown, "");
  if (r.method == "CONNECT") return ex.sendError(Reason::MethodNotAllowed, "", "GET, HEAD");
  std::string_view target = r.target;
  if (target.empty() || target.front() != '/') {
    // absolute-form ("http://other/") or authority-form: we are not a proxy.
    return ex.sendError(
        target.find("://") != std::string_view::npos ? Reason::AbsoluteTarget : Reason::BadRequest, "");
  }
  policy::PathResult pr = policy::normalizePath(ex.rawPath());
  if (pr.reason != Reason::None) return ex.sendError(pr.reason, "");
  ex.setPath(std::move(pr.path));
  const Route* rt = router.find(ex.path());
  if (!rt) {
    if (r.method != "GET" && r.method != "HEAD")
      return ex.sendError(Reason::MethodNotAllowed, "", "GET, HEAD");
    return ex.sendError(Reason::UnknownRoute, "");
  }
  if (!rt->allows(r.method)) return ex.sendError(Reason::MethodNotAllowed, "", rt->allow());
  if (!r.body.empty() && !rt->acceptsBody) return ex.sendError(Reason::RequestBody, "");
  if (rt->admin && !adminAllowed(ex)) {
    // With a token configured the client can still prove itself: 401 and a
    // Basic challenge (a browser asks for the token as a password).
    if (cfg().server.adminToken.empty()) return ex.sendError(Reason::Denied, "admin route");
    return ex.sendError(Reason::AdminAuth, "");
  }
  rt->handler(ex);
}

void Server::Impl::retire(Exchange& ex) {
  auto it = active.find(&ex);
  if (it == active.end()) return;
  const AccessEntry& e = ex.entry();
  requests++;
  bytesOut += e.bytes;
  byStatus[e.status]++;
  if (ex.failure() != Reason::None) failures[policy::reasonCode(ex.failure())]++;
  noteOutcome(ex);
  if (!draining) episodes.check(ex);
  accessLog.write(e);
  if (conf::Log::enabled(conf::LogLevel::Debug))
    conf::Log::write(conf::LogLevel::Debug, "request_trail",
                     "id=" + std::to_string(ex.id()) + " status=" + std::to_string(e.status) +
                         " reason=" + e.reason + " trail=" + ex.trail());
  dead.push_back(std::move(it->second));
  active.erase(it);
  if (reaper) event_active(reaper, 0, 0);
}

// What /-/api/v1/stats reports per mount and about the cache, from the
// requests as they end (the sources' own counters come with the fill).
void Server::Impl::noteOutcome(const Exchange& ex) {
  if (!usesCache(ex)) return noteMountOutcome(ex);
  const AccessEntry& e = ex.entry();
  if (e.cache == "HIT") {
    hitRequests++;
    hitBytesOut += e.bytes;
  } else {
    missRequests++;
    missBytesOut += e.bytes;
  }
  noteMountOutcome(ex);
}

bool Server::Impl::usesCache(const Exchange& ex) const {
  const std::vector<conf::Mount>& mounts = ex.gen->cfg->mounts;
  if (!store || ex.mount() < 0 || static_cast<size_t>(ex.mount()) >= mounts.size()) return false;
  // A local mount's files are read in place (its X-Cache says HIT for
  // what is on disk, not for the block cache).
  return mounts[static_cast<size_t>(ex.mount())].source != conf::SourceType::Local &&
         ex.entry().cache != "-";
}

void Server::Impl::noteMountOutcome(const Exchange& ex) {
  const std::vector<conf::Mount>& mounts = ex.gen->cfg->mounts;
  if (ex.mount() < 0 || static_cast<size_t>(ex.mount()) >= mounts.size()) return;
  MountFigures& m = mountFigures[mounts[static_cast<size_t>(ex.mount())].name];
  Reason r = ex.failure();
  if (r == Reason::UpstreamDenied || r == Reason::AccountAuth) m.linkRefusals++;
  if (r == Reason::RateLimited) m.rateLimited++;
  // Errors of the mount's upstream side, not a client's own mistakes.
  if (policy::reasonStatus(r) >= 500) {
    m.lastError = r;
    m.lastErrorUnix = clock.wallSeconds();
    m.lastErrorDetail = ex.failureDetail();
  }
}

void Server::Impl::reap() {
  std::vector<std::unique_ptr<Exchange>> d;
  d.swap(dead);
  std::vector<std::unique_ptr<http::Conn>> dc;
  dc.swap(deadConns);
  d.clear();
  dc.clear();
  checkDrained();
}

void Server::Impl::checkDrained() {
  if (!draining || !drained) return;
  if (!active.empty()) return;
  if (workers && !workers->drained()) {  // their responses finish on their threads
    timeval tv{0, 20'000};
    event_add(drainPoll, &tv);
    return;
  }
  // Finished responses may still have bytes queued for their clients.
  for (auto& [c, owned] : conns) {
    if (!c->idle()) {
      timeval tv{0, 20'000};
      event_add(drainPoll, &tv);
      return;
    }
  }
  auto fn = std::move(drained);
  drained = nullptr;
  fn();
}

// ------------------------------------------------------------------ worker threads

int Server::Impl::frontThreads() const {
  int64_t n = cfg().server.workers;  // a restart key: the value at start
  if (n <= 0) n = std::max(1u, std::thread::hardware_concurrency());
  return static_cast<int>(std::min<int64_t>(n, 64));
}

std::vector<conf::ListenAddr> Server::Impl::plainAddrs() const {
  std::vector<conf::ListenAddr> out;
  for (const auto& l : listeners) {
    if (l->tls()) continue;  // TLS connections stay on this loop
    conf::ListenAddr a = l->addr();
    a.port = l->boundPort();
    out.push_back(a);
  }
  return out;
}

bool Server::Impl::startWorkers(std::string* err) {
  int n = frontThreads();
  if (n <= 1) return true;  // today's single loop, exactly
  workers = std::make_unique<WorkerPool>(shared, n - 1);
  return workers->start(plainAddrs(), err);
}

// ------------------------------------------------------------------ Server

Server::Server(event_base* base, std::shared_ptr<const conf::Config> cfg, policy::RuleSet rules,
               proxy::Engine& engine, store::Store* store, const Clock& clock)
    : impl_(std::make_unique<Impl>(base, std::move(cfg), std::move(rules), engine, store, clock)) {}

void Server::reloadConfig() { impl_->reloadConfig(); }

void Server::reloadTls() { impl_->reloadTls(); }

Server::~Server() = default;

size_t Server::activeRequests() const { return impl_->active.size(); }

int64_t Server::shutdownGraceMs() const { return impl_->cfg().server.shutdownGraceMs; }

bool Server::start(std::string* err) {
  Impl& s = *impl_;
  s.reaper = event_new(s.base, -1, 0, [](evutil_socket_t, short, void* arg) {
    static_cast<Impl*>(arg)->reap();
  }, &s);
  s.lagTimer = event_new(s.base, -1, EV_PERSIST, [](evutil_socket_t, short, void* arg) {
    auto* impl = static_cast<Impl*>(arg);
    int64_t now = impl->clock.monoNs();
    int64_t lateUs = (now - impl->lagDueNs) / 1000;
    impl->lagDueNs = now + 50'000'000;
    impl->lagLastUs = std::max<int64_t>(0, lateUs);
    if (lateUs > impl->lagMaxUs) impl->lagMaxUs = lateUs;
    if (lateUs > 10'000) impl->lagOver10ms++;
    if (lateUs > 100'000) impl->lagOver100ms++;
  }, &s);
  s.lagDueNs = s.clock.monoNs() + 50'000'000;
  timeval lagTv{0, 50'000};
  event_add(s.lagTimer, &lagTv);
  s.speedTimer = event_new(s.base, -1, EV_PERSIST, [](evutil_socket_t, short, void* arg) {
    auto* impl = static_cast<Impl*>(arg);
    int64_t now = impl->clock.monoNs();
    for (auto& [ex, owned] : impl->active) {
      ex->speed().sample(now, ex->bytesWritten());
      impl->episodes.check(*ex);
    }
    impl->prefetches.sample(now);
    impl->episodes.sample();
  }, &s);
  timeval speedTv{0, 500'000};
  event_add(s.speedTimer, &speedTv);
  s.startedWallMs = s.clock.wallMs();
  if (!s.accessLog.open(s.cfg().server.accessLog, err)) return false;
  if (s.cfg().server.anyTls() && !s.loadTls(err)) return false;

  s.addAdminRoutes();
  s.addDeliveryRoutes();
  s.addDavRoutes();

  for (const auto& l : s.cfg().server.listen)
    if (!s.openListener(l, err)) return false;
  s.tellEngineSelf();
  return s.startWorkers(err);
}

void Server::drain(int64_t graceMs, std::function<void()> done) {
  Impl& s = *impl_;
  if (s.draining) return;
  s.draining = true;
  for (auto& l : s.listeners) l->close();
  if (s.workers) s.workers->drain();
  std::vector<Impl::Sniff*> sniffs;
  for (auto& [sn, owned] : s.sniffing) sniffs.push_back(sn);
  for (Impl::Sniff* sn : sniffs) s.dropSniff(sn);
  s.drained = std::move(done);
  conf::Log::write(conf::LogLevel::Info, "draining",
                   "active=" + std::to_string(s.active.size()) + " grace_ms=" + std::to_string(graceMs));
  std::vector<http::Conn*> open;
  for (auto& [c, owned] : s.conns) open.push_back(c);
  for (http::Conn* c : open) c->shutdownWhenIdle();  // may close it (onClosed edits conns)
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
  timeval tv = msToTimeval(graceMs);
  evtimer_add(s.graceTimer, &tv);
  s.checkDrained();
}

}  // namespace slip
