// Front-end worker threads (issue 14, `[server] workers`). See src/DESIGN.md,
// "Threads", for the model; in short:
//  - a worker owns an event_base, listener sockets on the plain-HTTP
//    addresses (SO_REUSEPORT: the kernel spreads connections over the main
//    loop and the workers), and the connections and exchanges it accepted;
//  - it serves a request itself only when it is a GET/HEAD download whose
//    every requested byte is stored and fresh (src/warm.cc); any other
//    request moves its *connection* to the main loop (descriptor, unread
//    bytes, the parsed request), which owns it from then on;
//  - threads talk through one mechanism, a Mailbox: a mutex-protected queue
//    of closures and an event_active on the receiving base.
#pragma once

#include <event2/event.h>
#include <sys/socket.h>

#include <atomic>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "conf/conf.h"
#include "src/http_parser.h"

namespace slip {

class Clock;
struct Generation;
class Router;
class AccessLog;
namespace store {
class Store;
}
namespace proxy {
struct Header;
}

/// Closures run on the thread of one event_base, posted from any thread.
/// Closures still queued when it is destroyed are dropped (not run).
class Mailbox {
 public:
  explicit Mailbox(event_base* base);
  ~Mailbox();
  Mailbox(const Mailbox&) = delete;
  Mailbox& operator=(const Mailbox&) = delete;
  void post(std::function<void()> fn);

 private:
  static void run(evutil_socket_t, short, void* arg);
  std::mutex mu_;
  std::deque<std::function<void()>> queue_;
  event* ev_;
};

/// A connection a worker does not serve, on its way to the main loop. The
/// descriptor is closed if nobody takes it.
struct Handoff {
  int fd = -1;
  std::string peer;
  std::string unread;      // bytes read after the request (pipelined)
  http::Request request;   // parsed by the worker
  int worker = 0;
  ~Handoff();
};

/// What the main loop shares with its workers. Everything here is safe to
/// use from any thread.
struct FrontShared {
  const Clock& clock;
  store::Store* store;          // the read side only (Store::warmReader)
  const Router& router;         // built before the workers start, never changed after
  AccessLog& accessLog;         // thread-safe
  std::string selfName, selfValue;  // the loop guard's header (constant)
  std::atomic<uint64_t> nextId{1};
  std::atomic<int64_t> workerConns{0};  // connections the workers hold
  std::atomic<int64_t> mainConns{0};    // connections the main loop holds (max_connections counts both)
  /// Hands a connection to the main loop (its Mailbox).
  std::function<void(std::unique_ptr<Handoff>)> toMain;

  FrontShared(const Clock& c, store::Store* s, const Router& r, AccessLog& a)
      : clock(c), store(s), router(r), accessLog(a) {}
  std::shared_ptr<const Generation> current() const {
    std::lock_guard<std::mutex> g(mu_);
    return gen_;
  }
  void publish(std::shared_ptr<const Generation> g) {
    std::lock_guard<std::mutex> l(mu_);
    gen_ = std::move(g);
  }

 private:
  mutable std::mutex mu_;
  std::shared_ptr<const Generation> gen_;
};

/// One worker's counters, read by the main loop for /-/metrics and the stats.
struct WorkerFigures {
  std::atomic<uint64_t> requests{0}, bytesOut{0}, hits{0}, hitBytes{0}, handoffs{0}, accepted{0};
  std::atomic<uint64_t> refused{0};  // answered 503 and closed: max_connections were open
  std::atomic<uint64_t> acceptPauses{0};  // its listeners' out-of-descriptor episodes
  std::atomic<uint64_t> active{0}, conns{0};
  mutable std::mutex mu;
  std::map<int, uint64_t> byStatus;
  std::map<std::string, uint64_t> failures;
};

class FrontWorker;

/// "192.0.2.1" / "2001:db8::1" (a v4-mapped address as v4).
std::string clientAddress(const sockaddr_storage& ss);

/// The worker threads. Created by the main loop after its listeners are
/// bound; destroyed (threads stopped and joined) before anything they use.
class WorkerPool {
 public:
  WorkerPool(FrontShared& shared, int threads);
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  /// Binds every worker's listeners on `plain` (addresses as bound by the
  /// main loop, ports resolved) and starts the threads. False with *err.
  bool start(const std::vector<conf::ListenAddr>& plain, std::string* err);
  /// Reload: the workers listen on exactly `plain` from now on.
  void setListeners(const std::vector<conf::ListenAddr>& plain);
  /// SIGTERM: listeners close, idle connections close, running responses finish.
  void drain();
  /// Draining and nothing left running or queued on any worker.
  bool drained() const;
  size_t size() const { return workers_.size(); }
  const WorkerFigures& figures(size_t i) const;

 private:
  FrontShared& shared_;
  std::vector<std::unique_ptr<FrontWorker>> workers_;
};

}  // namespace slip
