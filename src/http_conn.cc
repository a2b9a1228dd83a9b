// One client connection. Invariants:
//  - At most one request is handled at a time. While it is (Handling,
//    Responding) reading is off: pipelined bytes wait in the input buffer
//    and a client's half-close is not mistaken for a vanished client (a
//    client that really went away shows up as a write error).
//  - The connection never closes with response bytes still queued unless
//    the client is gone: Flushing waits for the output to be written,
//    Lingering then shuts our side down and reads until the client's EOF, so
//    the kernel does not answer unread input with a reset that would destroy
//    the response in flight (the classic lingering close).
//  - Nothing here calls the host or the handler from inside a call made by
//    them: follow-up work (the next pipelined request, closing after a flush
//    that is already done) runs from the `wake_` event.
//  - TLS: everything the response writes goes to `pending_` first (out());
//    pump() copies it into the OpenSSL bufferevent while that holds less
//    than kClientHighWater, so memory per client stays bounded and file
//    segments are read in pipe-sized steps (no sendfile under TLS).
#include "src/http_conn.h"

#include <event2/buffer.h>
#include <event2/bufferevent_ssl.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <ctime>

#include "conf/clock.h"
#include "conf/conf.h"
#include "src/tls.h"

namespace slip::http {
namespace {

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && strncasecmp(a.data(), b.data(), a.size()) == 0;
}

/// Headers the connection itself owns (framing and persistence).
bool hopByHop(std::string_view name) {
  return iequals(name, "Connection") || iequals(name, "Keep-Alive") ||
         iequals(name, "Transfer-Encoding") || iequals(name, "Date");
}

bool cleanValue(std::string_view v) {
  for (char c : v)
    if (c == '\r' || c == '\n' || c == '\0') return false;
  return true;
}

}  // namespace

// ------------------------------------------------------------------ UserCopier

UserCopier::UserCopier() {
  int fds[2];
  if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) return;
  r_ = fds[0];
  w_ = fds[1];
  // One job step (kClientHighWater) per move where the kernel allows a pipe
  // that large (/proc/sys/fs/pipe-max-size); the default 64 KiB otherwise.
  int size = fcntl(w_, F_SETPIPE_SZ, static_cast<int>(proxy::kClientHighWater));
  if (size < 0) size = fcntl(w_, F_GETPIPE_SZ);
  size_ = size > 0 ? static_cast<size_t>(size) : 4096;
}

UserCopier::~UserCopier() {
  if (r_ >= 0) ::close(r_);
  if (w_ >= 0) ::close(w_);
}

ssize_t UserCopier::move(evbuffer* from, evbuffer* to, size_t max, std::string* err) {
  size_t want = std::min({std::max<size_t>(max, 1), size_, evbuffer_get_length(from)});
  if (w_ < 0) {
    *err = "no pipe";
    return -1;
  }
  if (want == 0) return 0;
  // A sendfile chain goes in whole up to the pipe's room; memory chains up
  // to `want`. Either way the pipe was empty, so something fits.
  int n = evbuffer_write_atmost(from, w_, static_cast<ev_ssize_t>(want));
  if (n <= 0) {
    // 0: sendfile found the file shorter than its segment.
    *err = n == 0 ? "file segment ends early" : strerror(errno);
    return -1;
  }
  size_t got = 0;
  while (got < static_cast<size_t>(n)) {
    int r = evbuffer_read(to, r_, static_cast<int>(static_cast<size_t>(n) - got));
    if (r <= 0) {
      *err = std::string("pipe read: ") + (r < 0 ? strerror(errno) : "empty");
      char scratch[4096];
      while (read(r_, scratch, sizeof scratch) > 0) {
      }
      return -1;
    }
    got += static_cast<size_t>(r);
  }
  return n;
}

// ------------------------------------------------------------------ Conn

Conn::Conn(ConnHost& host, event_base* base, bufferevent* bev, std::string peer,
           const ConnOptions& o, const Clock& clock)
    : host_(host),
      bev_(bev),
      timer_(evtimer_new(base, &Conn::onTimer, this)),
      wake_(event_new(base, -1, 0, &Conn::onWake, this)),
      peer_(std::move(peer)),
      opts_(o),
      clock_(clock),
      parser_(o.limits) {
  ssl_ = bufferevent_openssl_get_ssl(bev_);
  if (ssl_) pending_ = evbuffer_new();
  bufferevent_setcb(bev_, &Conn::onRead, &Conn::onWrite, &Conn::onEvent, this);
  timeval send = msToTimeval(opts_.sendTimeoutMs);
  // Only a write timeout: reads are bounded by our own header/idle timer
  // (a deadline, not reset by every byte as libevent's read timeout is).
  bufferevent_set_timeouts(bev_, nullptr, &send);
}

Conn::~Conn() {
  if (bev_) {
    bufferevent_setcb(bev_, nullptr, nullptr, nullptr, nullptr);
    bufferevent_free(bev_);
  }
  event_free(timer_);
  event_free(wake_);
  if (pending_) evbuffer_free(pending_);
}

void Conn::start(int64_t headerMs) {
  headerDeadline_ = true;  // a new connection owes us a request within header_timeout
  armTimer(headerMs >= 0 ? headerMs : opts_.headerTimeoutMs);
  bufferevent_enable(bev_, EV_READ);
}

void Conn::refuse(policy::Reason r) {
  parser_.fail(r, "");
  dispatch(parser_.take());
}

bool Conn::idle() const {
  if (state_ == State::Closed || state_ == State::Lingering) return true;
  return state_ == State::Reading && !parser_.started() && queued() == 0 &&
         evbuffer_get_length(bufferevent_get_input(bev_)) == 0;
}

size_t Conn::queued() const {
  if (!bev_) return 0;
  return evbuffer_get_length(bufferevent_get_output(bev_)) +
         (pending_ ? evbuffer_get_length(pending_) : 0);
}

evbuffer* Conn::out() const { return pending_ ? pending_ : bufferevent_get_output(bev_); }

bool Conn::pump() {
  if (!pending_ || copyFailed_ || !bev_) return !copyFailed_;
  evbuffer* o = bufferevent_get_output(bev_);
  const size_t high = proxy::kClientHighWater;
  size_t held = 0;
  while (evbuffer_get_length(pending_) > 0 && (held = evbuffer_get_length(o)) < high) {
    std::string err = "no copier";
    ssize_t n = opts_.copier ? opts_.copier->move(pending_, o, high - held, &err) : -1;
    if (n <= 0) {
      conf::Log::write(conf::LogLevel::Error, "response_copy_failed",
                       "peer=" + peer_ + " error=" + conf::logValue(err));
      copyFailed_ = true;
      wake();  // closes from the loop, not inside a call made by the job
      return false;
    }
  }
  return true;
}

void Conn::armTimer(int64_t ms) {
  timeval tv = msToTimeval(ms);
  evtimer_add(timer_, &tv);
}

void Conn::wake() { event_active(wake_, 0, 0); }

// ------------------------------------------------------------------ reading

void Conn::onRead(bufferevent*, void* arg) {
  auto* c = static_cast<Conn*>(arg);
  if (c->state_ == State::Lingering) {
    evbuffer* in = bufferevent_get_input(c->bev_);
    evbuffer_drain(in, evbuffer_get_length(in));
    return;
  }
  if (c->state_ == State::Reading) c->parse();
}

void Conn::parse() {
  evbuffer* in = bufferevent_get_input(bev_);
  bool wasStarted = parser_.started();
  if (!wasStarted) startNs_ = clock_.monoNs();
  while (state_ == State::Reading && evbuffer_get_length(in) > 0) {
    evbuffer_iovec v;
    if (evbuffer_peek(in, -1, nullptr, &v, 1) < 1) break;
    size_t used = 0;
    RequestParser::Result res = parser_.feed(static_cast<const char*>(v.iov_base), v.iov_len, &used);
    evbuffer_drain(in, used);
    if (res != RequestParser::Result::NeedMore) return dispatch(parser_.take());
    if (used == 0) break;
  }
  if (state_ != State::Reading) return;
  if (!wasStarted && parser_.started() && !headerDeadline_) {
    // The first byte of a keep-alive request: from now on the header deadline.
    headerDeadline_ = true;
    armTimer(opts_.headerTimeoutMs);
  }
  if (parser_.takeContinue()) {
    evbuffer_add(out(), "HTTP/1.1 100 Continue\r\n\r\n", 25);
    pump();
  }
}

void Conn::dispatch(Request&& r) {
  r.startNs = startNs_ ? startNs_ : clock_.monoNs();
  startNs_ = 0;
  evtimer_del(timer_);
  bufferevent_disable(bev_, EV_READ);
  state_ = State::Handling;
  handler_ = nullptr;
  isHead_ = r.isHead();
  versionMinor_ = r.versionMinor;
  keepAlive_ = r.keepAlive && r.error == policy::Reason::None;
  closeAfter_ = !keepAlive_ || shutdownIdle_;
  headerDeadline_ = false;
  if (refusal_ != policy::Reason::None && r.error == policy::Reason::None) {
    r.error = refusal_;
    keepAlive_ = false;
    closeAfter_ = true;
  }
  host_.onRequest(*this, std::move(r));
}

// ------------------------------------------------------------------ writing

std::string Conn::dateHeader() {
  static thread_local int64_t cachedSecond = -1;
  static thread_local std::string cached;
  int64_t now = clock_.wallSeconds();
  if (now != cachedSecond) {
    time_t t = static_cast<time_t>(now);
    tm g{};
    gmtime_r(&t, &g);
    char buf[64];
    strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S GMT", &g);
    cached = buf;
    cachedSecond = now;
  }
  return cached;
}

void Conn::beginResponse(int status, const proxy::Headers& headers) {
  if (state_ != State::Handling) return;
  bodyless_ = status < 200 || status == 204 || status == 304;
  lengthKnown_ = false;
  chunked_ = false;
  remaining_ = 0;
  std::string head = "HTTP/1.1 " + std::to_string(status) + " " + policy::statusText(status) + "\r\n";
  for (const auto& h : headers) {
    if (hopByHop(h.name)) continue;
    if (!cleanValue(h.name) || !cleanValue(h.value)) {
      conf::Log::write(conf::LogLevel::Warn, "bad_response_header", "name=" + conf::logValue(h.name));
      continue;
    }
    if (iequals(h.name, "Content-Length")) {
      uint64_t n = 0;
      auto [p, ec] = std::from_chars(h.value.data(), h.value.data() + h.value.size(), n);
      if (ec != std::errc() || p != h.value.data() + h.value.size() || lengthKnown_) continue;
      lengthKnown_ = true;
      remaining_ = n;
    }
    head += h.name;
    head += ": ";
    head += h.value;
    head += "\r\n";
  }
  if (!bodyless_ && !lengthKnown_) {
    // No length: chunked for HTTP/1.1; an HTTP/1.0 client learns the end
    // only from the close.
    if (versionMinor_ >= 1) chunked_ = true;
    else closeAfter_ = true;
  }
  if (shutdownIdle_) closeAfter_ = true;
  head += "Date: " + dateHeader() + "\r\n";
  if (chunked_) head += "Transfer-Encoding: chunked\r\n";
  if (closeAfter_) head += "Connection: close\r\n";
  else if (versionMinor_ == 0) head += "Connection: keep-alive\r\n";
  head += "\r\n";
  evbuffer_add(out(), head.data(), head.size());
  state_ = State::Responding;
  // Refill before the socket runs dry: "drained" below a quarter of the
  // high-water mark, not only when empty.
  bufferevent_setwatermark(bev_, EV_WRITE, proxy::kDrainedMark, 0);
  bufferevent_enable(bev_, EV_WRITE);
  pump();
}

void Conn::body(evbuffer* data) {
  size_t n = evbuffer_get_length(data);
  if (state_ != State::Responding || isHead_ || bodyless_ || n == 0) {
    evbuffer_drain(data, n);
    return;
  }
  evbuffer* out = this->out();
  if (lengthKnown_) {
    if (n > remaining_) {
      // A job's bug, not the client's: never let it break the framing.
      if (remaining_ > 0)
        conf::Log::write(conf::LogLevel::Error, "response_overrun",
                         "peer=" + peer_ + " expected=" + std::to_string(remaining_) +
                             " actual=" + std::to_string(n));
      evbuffer_remove_buffer(data, out, remaining_);
      evbuffer_drain(data, evbuffer_get_length(data));
      remaining_ = 0;
      pump();
      return;
    }
    remaining_ -= n;
    evbuffer_add_buffer(out, data);
  } else if (chunked_) {
    evbuffer_add_printf(out, "%zx\r\n", n);
    evbuffer_add_buffer(out, data);
    evbuffer_add(out, "\r\n", 2);
  } else {
    evbuffer_add_buffer(out, data);
  }
  pump();
}

void Conn::endResponse() {
  if (state_ != State::Responding) return abortResponse();
  handler_ = nullptr;
  if (!isHead_ && !bodyless_ && lengthKnown_ && remaining_ > 0) {
    conf::Log::write(conf::LogLevel::Warn, "response_short",
                     "peer=" + peer_ + " missing=" + std::to_string(remaining_));
    return abortResponse();
  }
  if (chunked_ && !isHead_) {
    evbuffer_add(out(), "0\r\n\r\n", 5);
    pump();
  }
  bufferevent_setwatermark(bev_, EV_WRITE, 0, 0);
  if (closeAfter_ || shutdownIdle_) {
    state_ = State::Flushing;
    wake();
    return;
  }
  state_ = State::Reading;
  headerDeadline_ = false;
  armTimer(opts_.idleTimeoutMs);
  bufferevent_enable(bev_, EV_READ);
  if (evbuffer_get_length(bufferevent_get_input(bev_)) > 0) wake();  // a pipelined request
}

void Conn::abortResponse() {
  if (state_ == State::Closed || state_ == State::Lingering) return;
  handler_ = nullptr;
  closeAfter_ = true;
  state_ = State::Flushing;
  bufferevent_setwatermark(bev_, EV_WRITE, 0, 0);
  bufferevent_disable(bev_, EV_READ);
  wake();
}

void Conn::whenFlushed(std::function<void()> fn) {
  flushed_ = std::move(fn);
  if (queued() == 0) return wake();
  bufferevent_setwatermark(bev_, EV_WRITE, 0, 0);
  bufferevent_enable(bev_, EV_WRITE);
}

int Conn::release(std::string* unread) {
  if (state_ == State::Closed || ssl_ || !bev_ || queued() > 0) return -1;
  int fd = bufferevent_getfd(bev_);
  if (fd < 0) return -1;
  evbuffer* in = bufferevent_get_input(bev_);
  size_t n = evbuffer_get_length(in);
  if (n > 0) {
    size_t at = unread->size();
    unread->resize(at + n);
    evbuffer_remove(in, unread->data() + at, n);
  }
  handler_ = nullptr;
  flushed_ = nullptr;
  state_ = State::Closed;
  evtimer_del(timer_);
  event_del(wake_);
  bufferevent_setcb(bev_, nullptr, nullptr, nullptr, nullptr);
  bufferevent_disable(bev_, EV_READ | EV_WRITE);
  bufferevent_setfd(bev_, -1);  // freeing it must not close the socket
  bufferevent_free(bev_);
  bev_ = nullptr;
  host_.onClosed(*this);
  return fd;
}

void Conn::resume(Request&& r) {
  startNs_ = r.startNs;
  dispatch(std::move(r));
}

void Conn::onWrite(bufferevent*, void* arg) {
  auto* c = static_cast<Conn*>(arg);
  if (c->flushed_ && c->queued() == 0) {
    auto fn = std::move(c->flushed_);
    c->flushed_ = nullptr;
    return fn();
  }
  if (c->pending_ && !c->pump()) return;  // the wake event closes it
  if (c->state_ == State::Responding && c->handler_) {
    // TLS: the job makes more once what it queued is with OpenSSL.
    if (!c->pending_ || evbuffer_get_length(c->pending_) == 0) c->handler_->onWritable();
  } else if (c->state_ == State::Flushing && c->queued() == 0) {
    c->startLinger();
  }
}

void Conn::onWake(evutil_socket_t, short, void* arg) {
  auto* c = static_cast<Conn*>(arg);
  if (c->copyFailed_) return c->peerGone();
  if (c->flushed_ && c->queued() == 0) {
    auto fn = std::move(c->flushed_);
    c->flushed_ = nullptr;
    return fn();
  }
  if (c->state_ == State::Reading) {
    if (evbuffer_get_length(bufferevent_get_input(c->bev_)) > 0) c->parse();
  } else if (c->state_ == State::Flushing) {
    if (!c->pump()) return;
    if (c->queued() == 0) c->startLinger();
  }
}

// ------------------------------------------------------------------ closing

void Conn::startLinger() {
  if (ssl_) {
    // close_notify first: a TLS client tells the end of a close-delimited
    // body from a cut connection by it. Best effort (the socket is writable:
    // the output just drained).
    SSL_shutdown(ssl_);
    ERR_clear_error();
  }
  if (peerEof_) return close();
  int fd = bufferevent_getfd(bev_);
  if (fd < 0 || shutdown(fd, SHUT_WR) != 0) return close();
  state_ = State::Lingering;
  evbuffer* in = bufferevent_get_input(bev_);
  evbuffer_drain(in, evbuffer_get_length(in));
  bufferevent_enable(bev_, EV_READ);
  armTimer(opts_.lingerMs);
}

void Conn::shutdownWhenIdle() {
  if (state_ == State::Closed) return;
  shutdownIdle_ = true;
  if (state_ == State::Reading && !parser_.started() &&
      evbuffer_get_length(bufferevent_get_input(bev_)) == 0) {
    if (queued() == 0) return close();
    state_ = State::Flushing;
    bufferevent_disable(bev_, EV_READ);
    bufferevent_setwatermark(bev_, EV_WRITE, 0, 0);
  }
}

void Conn::noteTlsFailure(const char* why) {
  if (!ssl_ || tlsReported_ || SSL_is_init_finished(ssl_)) return;
  tlsReported_ = true;
  host_.onTlsFailure(*this, why ? std::string(why) : tls::handshakeError(bev_));
}

void Conn::onEvent(bufferevent*, short what, void* arg) {
  auto* c = static_cast<Conn*>(arg);
  if (what == BEV_EVENT_CONNECTED) return;  // TLS: the handshake finished
  if (what & (BEV_EVENT_ERROR | BEV_EVENT_EOF))
    c->noteTlsFailure(what & BEV_EVENT_ERROR ? nullptr : "closed");
  if ((what & BEV_EVENT_EOF) && (what & BEV_EVENT_READING) && !(what & BEV_EVENT_ERROR)) {
    c->peerEof_ = true;
    if (c->state_ == State::Lingering) return c->close();
    if (c->state_ == State::Reading) {
      // No (complete) request can follow; answer what is queued, then close.
      if (c->queued() == 0) return c->close();
      c->state_ = State::Flushing;
      evtimer_del(c->timer_);
      bufferevent_setwatermark(c->bev_, EV_WRITE, 0, 0);
    }
    return;
  }
  // A reset, a write error, or send_timeout: the client is gone.
  if (what & BEV_EVENT_TIMEOUT)
    conf::Log::write(conf::LogLevel::Debug, "send_timeout", "peer=" + c->peer_);
  c->peerGone();
}

void Conn::onTimer(evutil_socket_t, short, void* arg) {
  auto* c = static_cast<Conn*>(arg);
  switch (c->state_) {
    case State::Reading:
      if (c->parser_.started()) {
        // Part of a request came, not all of it in time: 408, then close.
        c->parser_.fail(policy::Reason::RequestTimeout, "");
        return c->dispatch(c->parser_.take());
      }
      if (c->queued() > 0) return c->armTimer(c->opts_.idleTimeoutMs);  // still writing to it
      c->noteTlsFailure("timeout");  // a TLS client that stalled in its handshake
      return c->close();
    case State::Lingering: return c->close();
    default: return;
  }
}

void Conn::peerGone() {
  if (state_ == State::Closed) return;
  if (ResponseHandler* h = handler_) {
    handler_ = nullptr;
    h->onPeerGone();
  }
  close();
}

void Conn::close() {
  if (state_ == State::Closed) return;
  state_ = State::Closed;
  evtimer_del(timer_);
  event_del(wake_);
  if (ResponseHandler* h = handler_) {  // closed under a running request (shutdown)
    handler_ = nullptr;
    h->onPeerGone();
  }
  bufferevent_setcb(bev_, nullptr, nullptr, nullptr, nullptr);
  bufferevent_free(bev_);  // closes the socket
  bev_ = nullptr;
  host_.onClosed(*this);
}

}  // namespace slip::http
