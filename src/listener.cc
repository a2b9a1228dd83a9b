#include "src/listener.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "conf/clock.h"

namespace slip {
namespace {

/// Connections taken per readiness event before the loop serves others.
constexpr int kAcceptBatch = 64;

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

Listener::Listener(event_base* base, Options o, AcceptFn fn)
    : base_(base), opts_(std::move(o)), fn_(std::move(fn)) {}

Listener::~Listener() { close(); }

bool Listener::open(std::string* err) {
  const conf::ListenAddr& l = opts_.addr;
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
  std::string where = "listen " + l.host + ":" + std::to_string(l.port) + ": ";
  int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *err = where + strerror(errno);
    return false;
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (opts_.reusePort) setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // inherited by accepted sockets
  if (family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  if (bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || listen(fd, 1024) != 0) {
    *err = where + strerror(errno);
    ::close(fd);
    return false;
  }
  fd_ = fd;
  name_ = boundName(fd);
  sockaddr_storage bound{};
  socklen_t blen = sizeof bound;
  getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &blen);
  port_ = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                             : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  ev_ = event_new(base_, fd_, EV_READ | EV_PERSIST, &Listener::onAccept, this);
  resume_ = evtimer_new(base_, &Listener::onResume, this);
  event_add(ev_, nullptr);
  return true;
}

void Listener::close() {
  if (ev_) event_free(ev_);
  if (resume_) event_free(resume_);
  ev_ = resume_ = nullptr;
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  paused_ = false;
}

void Listener::onAccept(evutil_socket_t fd, short, void* arg) {
  auto* l = static_cast<Listener*>(arg);
  for (int i = 0; i < kAcceptBatch && l->fd_ == fd && !l->paused_; i++) {
    sockaddr_storage peer{};
    socklen_t len = sizeof peer;
    int c = accept4(fd, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (c >= 0) {
      l->fn_(c, peer, *l);  // may close this listener (drain)
      continue;
    }
    int e = errno;
    if (e == EAGAIN || e == EWOULDBLOCK) {
      // The queue is empty: nobody waits for a descriptor any more.
      if (l->episode_) {
        l->episode_ = false;
        conf::Log::write(conf::LogLevel::Debug, "accept_resumed", "address=" + l->name_);
      }
      return;
    }
    if (e == EINTR || e == ECONNABORTED || e == EPROTO) continue;
    if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) return l->pause(e);
    conf::Log::write(conf::LogLevel::Warn, "accept_failed",
                     "address=" + l->name_ + " error=" + conf::logValue(strerror(e)));
    return;
  }
}

void Listener::pause(int err) {
  // The socket stays readable while the queue holds connections we cannot
  // take: stop watching it, or the loop spins on it.
  event_del(ev_);
  paused_ = true;
  if (!episode_) {
    episode_ = true;
    pauses_++;
    if (opts_.pauseCount) (*opts_.pauseCount)++;
    conf::Log::write(conf::LogLevel::Warn, "accept_paused",
                     "address=" + name_ + " error=" + conf::logValue(strerror(err)) +
                         " retry_ms=" + std::to_string(opts_.pauseMs) +
                         " hint=\"out of file descriptors: raise LimitNOFILE/ulimit -n or lower "
                         "max_connections\"");
  }
  timeval tv = msToTimeval(opts_.pauseMs);
  evtimer_add(resume_, &tv);
}

void Listener::onResume(evutil_socket_t, short, void* arg) {
  auto* l = static_cast<Listener*>(arg);
  if (!l->paused_ || l->fd_ < 0) return;
  l->paused_ = false;
  event_add(l->ev_, nullptr);
  onAccept(l->fd_, EV_READ, l);
}

void Listener::kick() {
  if (paused_ && resume_) event_active(resume_, EV_TIMEOUT, 0);
}

}  // namespace slip
