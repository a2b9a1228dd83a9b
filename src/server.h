// The front end: an HTTP/1.1 server of our own on libevent bufferevents and
// llhttp (TLS on the listeners marked `tls`). Accepts and counts
// connections, parses and limits requests, normalises the path, routes (/d/,
// /p/, edge, /-/health, /-/metrics, /-/status, /-/api/),
// checks signatures and the admin protection, asks policy for the delivery
// and hands the request to the proxy Engine with an Exchange as the Sink.
// One access-log line per request. Design: src/DESIGN.md.
#pragma once

#include <event2/event.h>

#include <cstdio>
#include <functional>
#include <memory>
#include <string>

#include "conf/conf.h"
#include "policy/policy.h"
#include "proxy/proxy.h"

namespace slip {

class Clock;

class Server {
 public:
  /// Nothing is owned; all of it must outlive the Server. `store` is null
  /// when no mount caches (it feeds the admin API's block maps and objects).
  Server(event_base* base, std::shared_ptr<const conf::Config> cfg, policy::RuleSet rules,
         proxy::Engine& engine, store::Store* store, const Clock& clock);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  /// Loads the TLS certificate when a listener is marked tls, binds every
  /// `listen` address and logs it (port 0 → the kernel's choice). False
  /// with a message when a certificate cannot be loaded or an address bound.
  bool start(std::string* err);

  /// SIGHUP: reads the configuration file again. With errors, each is
  /// logged as `file:line: [section] key: what is wrong` and the running
  /// configuration stays (its TLS certificate is still re-read). Valid: keys
  /// that need a restart keep their running values (named in one log line);
  /// listen addresses that appeared are opened (one that cannot be bound
  /// fails the reload, changing nothing), those that went are closed; the
  /// engine gets the new mounts, accounts and limits; new requests and
  /// connections use the new configuration while running ones finish on
  /// theirs. The outcome is in /-/api/v1/stats (`config`).
  void reloadConfig();

  /// SIGHUP: reads tls_cert/tls_key again. New connections get the new
  /// certificate; on an error (logged as `file:line: key: …`) the old one
  /// stays. Open connections keep the context they started with.
  void reloadTls();

  /// Stops accepting and closes idle connections; new requests on open
  /// connections get 503. Calls `done` once no request is running and their
  /// bytes are written, or when `graceMs` has passed.
  void drain(int64_t graceMs, std::function<void()> done);

  size_t activeRequests() const;
  /// shutdown_grace of the current configuration.
  int64_t shutdownGraceMs() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace slip
