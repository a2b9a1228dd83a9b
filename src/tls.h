// tls — the server side of HTTPS on the listen addresses marked `tls`.
//
// A Context owns one SSL_CTX built from [server] tls_cert / tls_key: the PEM
// certificate and its chain, a private key that must match it, TLS 1.2 and
// 1.3 only, forward-secret AEAD ciphers for 1.2, no renegotiation, no
// compression, and ALPN that selects http/1.1 (a client offering only other
// protocols gets a no_application_protocol alert, as RFC 7301 asks).
//
// Reloading (SIGHUP, a renewed Let's Encrypt certificate) builds a whole new
// Context from the files; only when that succeeds does it replace the old
// one. Connections hold their own reference to the SSL_CTX they were
// accepted with (SSL_new takes one), so replacing or destroying a Context
// never disturbs a handshake or a transfer already running.
//
// How the front end uses it: keep one Tls per process; on accept on a tls
// listener call `wrapAccepted(base, fd, tls.current())` and use the returned
// bufferevent like a plain socket one (read/write/event callbacks). A plain-
// HTTP request on the TLS port or a bad handshake shows up as BEV_EVENT_ERROR
// on that bufferevent only; log it (`handshakeError`) and free it.
#pragma once

#include <event2/bufferevent.h>
#include <event2/event.h>

#include <memory>
#include <optional>
#include <string>

#include "conf/conf.h"

typedef struct ssl_ctx_st SSL_CTX;

namespace slip::tls {

/// RAII owner of one SSL_CTX*: non-copyable, movable.
class Context {
 public:
  Context() = default;
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  Context(Context&& o) noexcept : ctx_(o.ctx_) { o.ctx_ = nullptr; }
  Context& operator=(Context&& o) noexcept;

  /// Builds a server context from PEM files. On failure returns nullopt and
  /// sets *err to one line saying which file and what is wrong (missing,
  /// unreadable, not PEM, key does not match, certificate expired).
  /// `nowUnix` decides expiry (passed in so tests need no clock games).
  static std::optional<Context> fromFiles(const std::string& certFile, const std::string& keyFile,
                                          int64_t nowUnix, std::string* err);

  SSL_CTX* get() const { return ctx_; }
  /// Subject and expiry of the leaf certificate, for the log:
  /// `subject="CN=nas.example" not_after=2026-05-01T12:00:00Z`.
  std::string describe() const;

 private:
  explicit Context(SSL_CTX* c) : ctx_(c) {}
  SSL_CTX* ctx_ = nullptr;
};

/// The process's current TLS context: loaded at start, replaced on reload.
class Tls {
 public:
  /// Loads [server] tls_cert / tls_key. On failure *err is
  /// "FILE:LINE: [server] tls_cert: what is wrong" and nothing changes (the
  /// previous context, if any, stays in use).
  bool load(const conf::Config& cfg, int64_t nowUnix, std::string* err);
  /// The context new connections use; nullptr before a successful load.
  SSL_CTX* current() const { return ctx_ ? ctx_->get() : nullptr; }
  const Context* context() const { return ctx_.get(); }
  /// How many successful loads so far (1 after start, +1 per reload).
  int generation() const { return generation_; }

 private:
  std::unique_ptr<Context> ctx_;
  int generation_ = 0;
};

/// Loads the configured certificate only to validate it (`slipstream check`
/// and start-up): a conf::Error naming the line of tls_cert or tls_key.
std::optional<conf::Error> checkFiles(const conf::Config& cfg, int64_t nowUnix);

/// Wraps an accepted socket into a server-side TLS bufferevent (handshake
/// starts at once; BEV_OPT_CLOSE_ON_FREE is always set, so freeing it closes
/// fd). `options` are other BEV_OPT_* flags (e.g. BEV_OPT_DEFER_CALLBACKS).
/// nullptr when the SSL object cannot be made (fd is then closed).
bufferevent* wrapAccepted(event_base* base, evutil_socket_t fd, SSL_CTX* ctx, int options = 0);

/// The OpenSSL error behind a failed TLS bufferevent, for one log field:
/// "wrong_version_number", "unsupported_protocol", "http_request", ...
std::string handshakeError(bufferevent* bev);

}  // namespace slip::tls
