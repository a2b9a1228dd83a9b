// Front-end worker threads (issue 14). Invariants:
//  - Everything a FrontWorker owns (its event_base, listeners, connections,
//    exchanges, WarmReader) is touched on its own thread only, from the
//    moment the thread starts until it ends (it frees them itself). Before
//    the start the main thread builds them while the base is not running.
//  - A connection lives on exactly one thread. A worker moves a connection
//    to the main loop at most once, between two responses (nothing queued
//    towards the client), and never takes one back.
//  - Threads talk through Mailboxes only (a closure queue + event_active);
//    the rest they share (FrontShared, the store's pin table, the access
//    log, counters) is immutable, atomic, or behind its own mutex.
#include "src/workers.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <unistd.h>

#include <thread>
#include <unordered_map>

#include "conf/clock.h"
#include "src/access_log.h"
#include "src/exchange.h"
#include "src/front.h"
#include "src/listener.h"
#include "src/warm.h"
#include "store/store.h"

namespace slip {

// ------------------------------------------------------------------ Mailbox

Mailbox::Mailbox(event_base* base) : ev_(event_new(base, -1, 0, &Mailbox::run, this)) {}

Mailbox::~Mailbox() { event_free(ev_); }

void Mailbox::post(std::function<void()> fn) {
  {
    std::lock_guard<std::mutex> g(mu_);
    queue_.push_back(std::move(fn));
  }
  event_active(ev_, 0, 0);  // thread-safe: the bases are made after evthread_use_pthreads()
}

void Mailbox::run(evutil_socket_t, short, void* arg) {
  auto* m = static_cast<Mailbox*>(arg);
  std::deque<std::function<void()>> batch;
  {
    std::lock_guard<std::mutex> g(m->mu_);
    batch.swap(m->queue_);
  }
  for (auto& fn : batch) fn();
}

Handoff::~Handoff() {
  if (fd >= 0) close(fd);
}

// ------------------------------------------------------------------ FrontWorker

class FrontWorker final : public http::ConnHost, public ExchangeHost {
 public:
  FrontWorker(FrontShared& sh, int index) : sh_(sh), index_(index) {
    // No epoll changelist here (the main loop has one): a connection handed
    // to the main loop must leave this thread's epoll set inside
    // Conn::release, before the main loop can close its descriptor and the
    // number is reused, not at this loop's next turn.
    base_ = event_base_new();
    inbox_ = std::make_unique<Mailbox>(base_);
    reaper_ = event_new(base_, -1, 0, [](evutil_socket_t, short, void* a) { static_cast<FrontWorker*>(a)->reap(); }, this);
    tick_ = event_new(base_, -1, EV_PERSIST, [](evutil_socket_t, short, void* a) { static_cast<FrontWorker*>(a)->onTick(); }, this);
    timeval tv{0, 100'000};
    event_add(tick_, &tv);
    if (sh_.store) reader_ = sh_.store->warmReader();
  }

  ~FrontWorker() override {
    if (thread_.joinable()) {
      inbox_->post([this] { event_base_loopbreak(base_); });
      thread_.join();
    }
    event_free(reaper_);
    event_free(tick_);
    inbox_.reset();
    event_base_free(base_);
  }

  bool open(const std::vector<conf::ListenAddr>& plain, std::string* err) {
    for (const auto& a : plain)
      if (!listen(a, err)) return false;
    return true;
  }
  void start() { thread_ = std::thread([this] { run(); }); }
  Mailbox& inbox() { return *inbox_; }
  WorkerFigures fig;
  std::atomic<bool> drained{false};

  void syncListeners(const std::vector<conf::ListenAddr>& plain) {
    std::erase_if(listeners_, [&plain](const std::unique_ptr<Listener>& l) {
      return std::none_of(plain.begin(), plain.end(), [&l](const conf::ListenAddr& a) {
        return a.host == l->addr().host && a.port == l->addr().port;
      });
    });
    for (const auto& a : plain) {
      bool have = std::any_of(listeners_.begin(), listeners_.end(), [&a](const std::unique_ptr<Listener>& l) {
        return a.host == l->addr().host && a.port == l->addr().port;
      });
      std::string err;
      if (!have && !draining_ && !listen(a, &err))
        conf::Log::write(conf::LogLevel::Error, "worker_listen_failed",
                         "worker=" + std::to_string(index_) + " error=" + conf::logValue(err));
    }
  }

  void beginDrain() {
    draining_ = true;
    listeners_.clear();
    std::vector<http::Conn*> open;
    for (auto& [c, owned] : conns_) open.push_back(c);
    for (http::Conn* c : open) c->shutdownWhenIdle();
    checkDrained();
  }

 private:
  bool listen(const conf::ListenAddr& a, std::string* err) {
    Listener::Options o;
    o.addr = a;
    o.reusePort = true;
    o.pauseCount = &fig.acceptPauses;
    auto l = std::make_unique<Listener>(base_, o, [this](int fd, const sockaddr_storage& peer, Listener& from) {
      onAccept(fd, peer, from);
    });
    if (!l->open(err)) return false;
    listeners_.push_back(std::move(l));
    return true;
  }

  void run() {
    event_base_dispatch(base_);
    // Stopping: this thread frees what it owns (exchanges first: their jobs
    // read through the WarmReader, whose segments unpin blocks).
    std::vector<http::Conn*> open;
    for (auto& [c, owned] : conns_) open.push_back(c);
    for (http::Conn* c : open) c->close();  // tells a running Exchange first
    std::vector<Exchange*> running;
    for (auto& [ex, owned] : active_) running.push_back(ex);
    for (Exchange* ex : running) ex->abandon();
    active_.clear();
    dead_.clear();
    deadConns_.clear();
    conns_.clear();
    listeners_.clear();
    reader_.reset();
  }

  void onAccept(int fd, const sockaddr_storage& peer, Listener&) {
    if (draining_) {
      close(fd);
      return;
    }
    bufferevent* bev = bufferevent_socket_new(base_, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!bev) {
      close(fd);
      return;
    }
    fig.accepted++;
    std::shared_ptr<const Generation> g = sh_.current();
    const conf::Server& s = g->cfg->server;
    http::ConnOptions o;
    o.limits.maxRequestLine = static_cast<size_t>(s.maxRequestLine);
    o.limits.maxHeaderBytes = static_cast<size_t>(s.maxHeaderSize);
    o.limits.maxBody = static_cast<size_t>(s.maxRequestBody);
    o.headerTimeoutMs = s.headerTimeoutMs;
    o.idleTimeoutMs = s.idleTimeoutMs;
    o.sendTimeoutMs = s.sendTimeoutMs;
    bool over = sh_.mainConns.load() + sh_.workerConns.load() >= s.maxConnections;
    auto conn = std::make_unique<http::Conn>(*this, base_, bev, clientAddress(peer), o, sh_.clock);
    http::Conn* c = conn.get();
    conns_.emplace(c, std::move(conn));
    sh_.workerConns++;
    fig.conns++;
    if (over) {
      fig.refused++;
      return c->refuse(policy::Reason::Overloaded);
    }
    c->start();
  }

  void onClosed(http::Conn& c) override {
    auto it = conns_.find(&c);
    if (it == conns_.end()) return;
    deadConns_.push_back(std::move(it->second));
    conns_.erase(it);
    sh_.workerConns--;
    fig.conns--;
    event_active(reaper_, 0, 0);
    for (auto& l : listeners_) l->kick();
  }

  void onRequest(http::Conn& c, http::Request&& r) override {
    std::shared_ptr<const Generation> g = sh_.current();
    WarmPlan plan;
    if (draining_ || !reader_ || !planWarm(r, *g, sh_, c.peer(), *reader_, &plan)) return handOff(c, std::move(r));
    auto owned = std::make_unique<Exchange>(*this, c, std::move(r), sh_.nextId++, sh_.clock);
    Exchange& ex = *owned;
    ex.gen = std::move(g);
    active_.emplace(&ex, std::move(owned));
    fig.active++;
    c.setHandler(&ex);
    ex.setState(ExState::Deciding);
    ex.setPath(plan.path);
    ex.setTarget(plan.mount, plan.virt, plan.rest);
    ex.setDelivery(plan.delivery);
    ex.setState(ExState::Opening);
    ex.job = startWarm(std::move(plan), *reader_, &ex);
  }

  // Not ours to answer: the connection goes to the main loop once the
  // previous response (keep-alive) is out, with the request as parsed.
  void handOff(http::Conn& c, http::Request&& r) {
    fig.handoffs++;
    auto req = std::make_shared<http::Request>(std::move(r));
    http::Conn* cp = &c;
    c.whenFlushed([this, cp, req] {
      auto h = std::make_unique<Handoff>();
      h->peer = cp->peer();
      h->fd = cp->release(&h->unread);  // the connection is closed here (onClosed)
      if (h->fd < 0) return cp->close();
      h->request = std::move(*req);
      h->worker = index_;
      sh_.toMain(std::move(h));
    });
  }

  void retire(Exchange& ex) override {
    auto it = active_.find(&ex);
    if (it == active_.end()) return;
    const AccessEntry& e = ex.entry();
    fig.requests++;
    fig.bytesOut += e.bytes;
    if (e.cache == "HIT") {
      fig.hits++;
      fig.hitBytes += e.bytes;
    }
    {
      std::lock_guard<std::mutex> g(fig.mu);
      fig.byStatus[e.status]++;
      if (ex.failure() != policy::Reason::None) fig.failures[policy::reasonCode(ex.failure())]++;
    }
    sh_.accessLog.write(e);
    dead_.push_back(std::move(it->second));
    active_.erase(it);
    fig.active--;
    event_active(reaper_, 0, 0);
  }

  void reap() {
    std::vector<std::unique_ptr<Exchange>> d;
    d.swap(dead_);
    std::vector<std::unique_ptr<http::Conn>> dc;
    dc.swap(deadConns_);
    d.clear();
    dc.clear();
    checkDrained();
  }

  void onTick() {
    if (reader_) reader_->sweep(sh_.clock.monoMs());
    checkDrained();
  }

  void checkDrained() {
    if (!draining_ || !active_.empty()) return;
    for (auto& [c, owned] : conns_)
      if (!c->idle()) return;
    drained.store(true);
  }

  FrontShared& sh_;
  int index_;
  event_base* base_ = nullptr;
  std::unique_ptr<Mailbox> inbox_;
  event* reaper_ = nullptr;
  event* tick_ = nullptr;  // sweeps kept segments, notices a finished drain
  std::unique_ptr<store::WarmReader> reader_;
  std::vector<std::unique_ptr<Listener>> listeners_;
  std::unordered_map<http::Conn*, std::unique_ptr<http::Conn>> conns_;
  std::vector<std::unique_ptr<http::Conn>> deadConns_;
  std::unordered_map<Exchange*, std::unique_ptr<Exchange>> active_;
  std::vector<std::unique_ptr<Exchange>> dead_;
  bool draining_ = false;
  std::thread thread_;
};

// ------------------------------------------------------------------ WorkerPool

WorkerPool::WorkerPool(FrontShared& shared, int threads) : shared_(shared) {
  for (int i = 0; i < threads; i++) workers_.push_back(std::make_unique<FrontWorker>(shared_, i + 1));
}

WorkerPool::~WorkerPool() { workers_.clear(); }  // each stops its thread and joins it

bool WorkerPool::start(const std::vector<conf::ListenAddr>& plain, std::string* err) {
  for (auto& w : workers_)
    if (!w->open(plain, err)) return false;
  for (auto& w : workers_) w->start();
  conf::Log::write(conf::LogLevel::Info, "workers_started",
                   "threads=" + std::to_string(workers_.size() + 1) + " listeners=" + std::to_string(plain.size()));
  return true;
}

void WorkerPool::setListeners(const std::vector<conf::ListenAddr>& plain) {
  for (auto& w : workers_) {
    FrontWorker* fw = w.get();
    fw->inbox().post([fw, plain] { fw->syncListeners(plain); });
  }
}

void WorkerPool::drain() {
  for (auto& w : workers_) {
    FrontWorker* fw = w.get();
    fw->inbox().post([fw] { fw->beginDrain(); });
  }
}

bool WorkerPool::drained() const {
  return std::all_of(workers_.begin(), workers_.end(), [](const auto& w) { return w->drained.load(); });
}

const WorkerFigures& WorkerPool::figures(size_t i) const { return workers_[i]->fig; }

}  // namespace slip
