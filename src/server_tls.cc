// TLS on the listeners marked `tls` (issue 12). Invariants:
//  - A socket accepted on a tls listener is in `sniffing` until its first
//    byte arrives (or header_timeout passes, or the server drains); it
//    counts against max_connections like a Conn.
//  - Its first byte decides: a TLS record (0x16) or an SSLv2-style hello
//    (high bit set) becomes an OpenSSL bufferevent over the context current
//    *now*; anything else is plain HTTP, answered with a plain-text 400
//    `http_on_tls_port` (nginx's rule and answer) after its request head is
//    read, then closed.
//  - A reload replaces the context for new connections only: every SSL
//    holds its own reference to the SSL_CTX it was made with.
#include <event2/bufferevent_ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include "conf/clock.h"
#include "src/front.h"

namespace slip {

void Server::Impl::onTlsAccept(int fd, std::string peer) {
  accepted++;
  tlsAccepted++;
  if (static_cast<int64_t>(conns.size() + sniffing.size()) >= cfg().server.maxConnections) {
    // No plain-text 503 on a TLS port, and a handshake only to refuse would
    // cost more than the refusal saves: close at once.
    refusedConns++;
    close(fd);
    return;
  }
  auto owned = std::make_unique<Sniff>(Sniff{this, fd, nullptr, std::move(peer), clock.monoNs()});
  Sniff* sn = owned.get();
  sn->ev = event_new(
      base, fd, EV_READ,
      [](evutil_socket_t, short what, void* arg) {
        auto* s = static_cast<Sniff*>(arg);
        s->s->sniffed(s, what);
      },
      sn);
  sniffing.emplace(sn, std::move(owned));
  timeval tv = msToTimeval(cfg().server.headerTimeoutMs);
  event_add(sn->ev, &tv);
}

void Server::Impl::dropSniff(Sniff* sn) {
  auto it = sniffing.find(sn);
  if (it == sniffing.end()) return;
  event_free(sn->ev);
  if (sn->fd >= 0) close(sn->fd);
  sniffing.erase(it);  // frees sn
  for (auto& l : listeners) l->kick();
}

void Server::Impl::sniffed(Sniff* sn, short what) {
  int64_t spentMs = (clock.monoNs() - sn->acceptedNs) / 1'000'000;
  int64_t leftMs = cfg().server.headerTimeoutMs - spentMs;
  if ((what & EV_TIMEOUT) || leftMs <= 0) return dropSniff(sn);  // nothing came: as on a plain port
  unsigned char first = 0;
  ssize_t n = recv(sn->fd, &first, 1, MSG_PEEK);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
    timeval tv = msToTimeval(leftMs);
    event_add(sn->ev, &tv);
    return;
  }
  if (n <= 0) return dropSniff(sn);  // closed or reset before a byte
  int fd = sn->fd;
  sn->fd = -1;  // the bufferevent owns it from here
  std::string peer = sn->peer;
  dropSniff(sn);
  bool handshake = first == 0x16 || (first & 0x80);
  bufferevent* bev = handshake ? tls::wrapAccepted(base, fd, tls.current(), BEV_OPT_DEFER_CALLBACKS)
                               : bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
  if (!bev) {
    if (!handshake) close(fd);  // wrapAccepted closes it itself
    return;
  }
  auto conn = std::make_unique<http::Conn>(*this, base, bev, peer, connOpts, clock);
  http::Conn* c = conn.get();
  conns.emplace(c, std::move(conn));
  if (!handshake) {
    tlsPlainHttp++;
    c->refuseRequests(policy::Reason::HttpOnTlsPort);
  }
  c->start(leftMs);
}

void Server::Impl::onTlsFailure(http::Conn& c, const std::string& reason) {
  // OpenSSL's reason strings are a fixed vocabulary; keep the label tame.
  std::string label;
  for (char ch : reason.substr(0, 64)) {
    bool ok = (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_';
    label += ok ? ch : (ch >= 'A' && ch <= 'Z') ? static_cast<char>(ch - 'A' + 'a') : '_';
  }
  if (label.empty()) label = "unknown";
  tlsFailures[label]++;
  conf::Log::write(conf::LogLevel::Info, "tls_handshake_failed",
                   "peer=" + c.peer() + " reason=" + label);
}

bool Server::Impl::loadTls(std::string* err) {
  if (!tls.load(cfg(), clock.wallSeconds(), err)) return false;
  conf::Log::write(conf::LogLevel::Info, "tls_loaded", tls.context()->describe());
  return true;
}

void Server::Impl::reloadTls() {
  if (!cfg().server.anyTls()) return;
  std::string err;
  if (!tls.load(cfg(), clock.wallSeconds(), &err)) {
    tlsReloadFailures++;
    // The whole `file:line: [server] key: what` as one field, and the
    // context in use stays.
    conf::Log::write(
        conf::LogLevel::Error, "tls_reload_failed",
        "error=" + conf::logValue(err) + " kept=" + conf::logValue(tls.context()->describe()));
    return;
  }
  tlsReloads++;
  conf::Log::write(conf::LogLevel::Info, "tls_reloaded",
                   tls.context()->describe() + " generation=" + std::to_string(tls.generation()));
}

std::string Server::Impl::tlsMetrics() const {
  if (!cfg().server.anyTls()) return "";
  std::string o;
  auto metric = [&o](const char* name, const char* type, const char* help, uint64_t v) {
    o += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n" +
         name + " " + std::to_string(v) + "\n";
  };
  metric("slipstream_tls_connections_total", "counter", "Connections accepted on tls listeners.",
         tlsAccepted);
  metric("slipstream_tls_plain_http_total", "counter",
         "Plain-HTTP connections on a tls listener (answered 400 http_on_tls_port).", tlsPlainHttp);
  o += "# HELP slipstream_tls_handshake_failures_total TLS connections that ended before their "
       "handshake finished, by OpenSSL's reason (closed, timeout, unsupported_protocol, ...).\n"
       "# TYPE slipstream_tls_handshake_failures_total counter\n";
  for (const auto& [reason, n] : tlsFailures)
    o += "slipstream_tls_handshake_failures_total{reason=\"" + reason + "\"} " + std::to_string(n) +
         "\n";
  metric("slipstream_tls_reloads_total", "counter", "Certificates loaded again on SIGHUP.",
         tlsReloads);
  metric("slipstream_tls_reload_failures_total", "counter",
         "SIGHUP certificate loads that failed (the previous certificate stayed).",
         tlsReloadFailures);
  return o;
}

}  // namespace slip
