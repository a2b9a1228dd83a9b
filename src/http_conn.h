// One client connection: a bufferevent (a plain socket one, or an OpenSSL
// one for a TLS listener), the request parser, the connection's timers and
// the response framing (Content-Length, chunked or close-delimited, HEAD,
// keep-alive, Connection: close). See src/DESIGN.md for the state machine
// and the lifetimes.
#pragma once

#include <event2/bufferevent.h>
#include <event2/event.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "proxy/proxy.h"
#include "src/http_parser.h"

namespace slip {
class Clock;
}

typedef struct ssl_st SSL;

namespace slip::http {

class Conn;

/// Moves bytes from one evbuffer to another through user space, file
/// segments included: a job queues sendfile chains (bytes that are still in
/// a file, not in memory), which only a socket can drain; OpenSSL must see
/// the bytes. They go through a pipe: sendfile (or writev) into it, read out
/// of it, at most one pipe's worth per step. One per loop; the pipe is empty
/// between calls.
class UserCopier {
 public:
  UserCopier();
  ~UserCopier();
  UserCopier(const UserCopier&) = delete;
  UserCopier& operator=(const UserCopier&) = delete;
  /// Moves up to about `max` bytes (at least one byte, at most the pipe's
  /// size) from the front of `from` to the end of `to`. Returns the bytes
  /// moved; -1 when the bytes cannot be read (an I/O error on a file
  /// segment, no pipe); *err then says why.
  ssize_t move(evbuffer* from, evbuffer* to, size_t max, std::string* err);
  size_t pipeSize() const { return size_; }

 private:
  int r_ = -1, w_ = -1;
  size_t size_ = 0;
};

/// Told about the response in progress; set by whoever answers the request
/// (the Exchange) and cleared by the connection when the response ends.
class ResponseHandler {
 public:
  virtual ~ResponseHandler() = default;
  /// The output buffer fell below proxy::kDrainedMark while a body streams.
  virtual void onWritable() = 0;
  /// The client vanished (write error, reset, send_timeout) before the
  /// response ended. The connection is closed; do not touch it again.
  virtual void onPeerGone() = 0;
};

/// The connection's owner (the server).
class ConnHost {
 public:
  virtual ~ConnHost() = default;
  /// A request was read (or failed to be: `r.error`). Exactly one response
  /// must follow through beginResponse/endResponse or abortResponse.
  virtual void onRequest(Conn& c, Request&& r) = 0;
  /// The connection closed; the host frees it later, from the loop (never
  /// inside this call's caller).
  virtual void onClosed(Conn& c) = 0;
  /// A TLS connection ended before its handshake finished: `reason` is
  /// OpenSSL's ("unsupported_protocol", ...), "closed" or "timeout". Called
  /// once, just before the connection closes.
  virtual void onTlsFailure(Conn& c, const std::string& reason) {
    (void)c;
    (void)reason;
  }
};

struct ConnOptions {
  Limits limits;
  int64_t headerTimeoutMs = 10'000;
  int64_t idleTimeoutMs = 60'000;
  int64_t sendTimeoutMs = 600'000;
  int64_t lingerMs = 2'000;  // after our close: discard what the client still sends
  /// Copies response bytes into TLS connections (required for them).
  UserCopier* copier = nullptr;
};

class Conn {
 public:
  enum class State {
    Reading,     // waiting for or reading a request (header/idle timer armed)
    Handling,    // request handed to the host; no response head yet
    Responding,  // head queued, body streaming
    Flushing,    // last response queued; closing once the output is written
    Lingering,   // our side shut down; discarding input until EOF or lingerMs
    Closed,
  };

  /// Takes ownership of `bev` (a socket or an OpenSSL socket bufferevent;
  /// BEV_OPT_CLOSE_ON_FREE). An OpenSSL one needs BEV_OPT_DEFER_CALLBACKS
  /// (it would otherwise call back from inside bufferevent_enable) and
  /// `o.copier`.
  Conn(ConnHost& host, event_base* base, bufferevent* bev, std::string peer, const ConnOptions& o,
       const Clock& clock);
  ~Conn();
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;

  /// Starts reading (and the header timer: `headerMs`, or header_timeout
  /// when negative — the time the server already spent on the connection
  /// counts).
  void start(int64_t headerMs = -1);
  /// Answers at once with `r`'s error status without reading a request
  /// (over max_connections), then closes.
  void refuse(policy::Reason r);
  /// Every request on this connection fails with `r` (and the connection
  /// closes after the answer): plain HTTP on a TLS port.
  void refuseRequests(policy::Reason r) { refusal_ = r; }
  /// TLS: the connection's SSL object; null for plain HTTP.
  SSL* ssl() const { return ssl_; }

  const std::string& peer() const { return peer_; }
  State state() const { return state_; }
  /// Closed, or nothing left to do for it: no request in progress, nothing
  /// queued, no partial request.
  bool idle() const;

  // ---- the response to the current request (after ConnHost::onRequest)

  void setHandler(ResponseHandler* h) { handler_ = h; }
  /// The connection ends after this response (Connection: close).
  void closeAfterResponse() { closeAfter_ = true; }
  /// Queues the status line and headers. The framing follows the headers:
  /// Content-Length → exactly that many body bytes; none → chunked (HTTP/1.1)
  /// or close-delimited (HTTP/1.0). HEAD answers get no body.
  void beginResponse(int status, const proxy::Headers& headers);
  /// Queues body bytes (drains `data`).
  void body(evbuffer* data);
  /// The body is complete: the next request may follow, or the connection
  /// closes once the output is written. A body shorter than its
  /// Content-Length is cut off instead (the client sees the short read).
  void endResponse();
  /// The response failed after its head: what is queued still goes out,
  /// then the connection closes (no last chunk, short Content-Length).
  void abortResponse();
  /// Bytes queued towards the client (for TLS: also those not yet handed to
  /// OpenSSL).
  size_t queued() const;
  /// Closes an idle connection (drain); a busy one closes after its response.
  void shutdownWhenIdle();
  /// Closes now (no more callbacks; the host's onClosed follows).
  void close();

  // ---- moving a connection to another thread (issue 14: a worker hands a
  // request it does not serve to the main loop). Plain HTTP only.

  /// Runs `fn` (from the loop) once nothing is queued towards the client:
  /// the previous response of a keep-alive connection may still be going out.
  void whenFlushed(std::function<void()> fn);
  /// Gives up the socket without closing it: returns its descriptor and
  /// appends the bytes read but not parsed (pipelined requests) to *unread.
  /// The connection is Closed afterwards (the host's onClosed follows); -1
  /// when it cannot be moved (TLS, closed, output still queued).
  int release(std::string* unread);
  /// The receiving side of release(): a connection built on the moved
  /// socket (its unread bytes already in the bufferevent's input) handles
  /// `r`, the request the other thread parsed, as if it had read it.
  void resume(Request&& r);

 private:
  static void onRead(bufferevent*, void* arg);
  static void onWrite(bufferevent*, void* arg);
  static void onEvent(bufferevent*, short what, void* arg);
  static void onTimer(evutil_socket_t, short, void* arg);
  static void onWake(evutil_socket_t, short, void* arg);
  void parse();
  void dispatch(Request&& r);
  void startLinger();
  void armTimer(int64_t ms);
  void wake();
  void peerGone();
  std::string dateHeader();
  evbuffer* out() const;
  bool pump();
  void noteTlsFailure(const char* why);

  ConnHost& host_;
  bufferevent* bev_;
  SSL* ssl_ = nullptr;           // TLS: the bufferevent's SSL object
  evbuffer* pending_ = nullptr;  // TLS: response bytes not yet copied to the bufferevent
  bool copyFailed_ = false;      // TLS: a file segment could not be read
  bool tlsReported_ = false;     // onTlsFailure was called
  policy::Reason refusal_ = policy::Reason::None;
  event* timer_;
  event* wake_;
  std::string peer_;
  ConnOptions opts_;
  const Clock& clock_;
  RequestParser parser_;
  State state_ = State::Reading;
  ResponseHandler* handler_ = nullptr;
  int64_t startNs_ = 0;          // first byte of the request being read
  bool headerDeadline_ = false;  // the timer is the header deadline (not idle)
  bool closeAfter_ = false;      // current response ends the connection
  bool shutdownIdle_ = false;    // draining: no new requests after this one
  bool peerEof_ = false;
  // the response being written
  bool isHead_ = false;
  bool bodyless_ = false;
  bool chunked_ = false;
  bool lengthKnown_ = false;
  uint64_t remaining_ = 0;
  int versionMinor_ = 1;
  bool keepAlive_ = false;
  std::function<void()> flushed_;  // whenFlushed
};

}  // namespace slip::http
