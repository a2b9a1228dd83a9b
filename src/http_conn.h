// One client connection: a bufferevent (plain socket today; an OpenSSL
// filter can be slotted in for TLS listeners), the request parser, the
// connection's timers and the response framing (Content-Length, chunked or
// close-delimited, HEAD, keep-alive, Connection: close). See src/DESIGN.md
// for the state machine and the lifetimes.
#pragma once

#include <event2/bufferevent.h>
#include <event2/event.h>

#include <cstdint>
#include <memory>
#include <string>

#include "proxy/proxy.h"
#include "src/http_parser.h"

namespace slip {
class Clock;
}

namespace slip::http {

class Conn;

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
};

struct ConnOptions {
  Limits limits;
  int64_t headerTimeoutMs = 10'000;
  int64_t idleTimeoutMs = 60'000;
  int64_t sendTimeoutMs = 600'000;
  int64_t lingerMs = 2'000;  // after our close: discard what the client still sends
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

  /// Takes ownership of `bev` (a socket bufferevent; BEV_OPT_CLOSE_ON_FREE).
  Conn(ConnHost& host, event_base* base, bufferevent* bev, std::string peer, const ConnOptions& o,
       const Clock& clock);
  ~Conn();
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;

  /// Starts reading (and the header timer).
  void start();
  /// Answers at once with `r`'s error status without reading a request
  /// (over max_connections), then closes.
  void refuse(policy::Reason r);

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
  /// Bytes queued towards the client.
  size_t queued() const;
  /// Closes an idle connection (drain); a busy one closes after its response.
  void shutdownWhenIdle();
  /// Closes now (no more callbacks; the host's onClosed follows).
  void close();

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

  ConnHost& host_;
  bufferevent* bev_;
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
};

}  // namespace slip::http
