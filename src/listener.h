// A listening socket and its accept loop. Accepting is ours (not libevent's)
// so that every accepted connection is counted by its owner, and so that
// running out of descriptors pauses accepting instead of spinning: on
// EMFILE/ENFILE (or a kernel out of buffers) the listener stops watching the
// socket, logs once per episode, and tries again after a short delay (or as
// soon as a connection closes: kick()).
#pragma once

#include <event2/event.h>
#include <sys/socket.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>

#include "conf/conf.h"

namespace slip {

class Listener {
 public:
  /// Called for each accepted socket (non-blocking, close-on-exec, owned by
  /// the callee from then on) with the peer's address.
  using AcceptFn = std::function<void(int fd, const sockaddr_storage& peer, Listener& from)>;

  struct Options {
    conf::ListenAddr addr;
    /// SO_REUSEPORT: several loops (issue 14: one per worker thread) each
    /// bind the same address and the kernel spreads connections over them.
    bool reusePort = false;
    int64_t pauseMs = 250;  // retry accepting this long after EMFILE/ENFILE
    /// Also counts pause episodes here (a worker's listener: read by the main loop).
    std::atomic<uint64_t>* pauseCount = nullptr;
  };

  Listener(event_base* base, Options o, AcceptFn fn);
  ~Listener();
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  /// Binds and listens. False with a message when it cannot.
  bool open(std::string* err);
  /// Stops accepting and closes the socket.
  void close();
  /// A descriptor was freed: retry now if accepting is paused.
  void kick();

  /// "127.0.0.1:8690" as bound (port 0 resolved).
  const std::string& name() const { return name_; }
  /// Marked `tls`: the server wraps what it accepts in TLS (with the
  /// certificate current at accept time, so a reload needs no new listener).
  bool tls() const { return opts_.addr.tls; }
  /// The address as configured (port 0 stays 0).
  const conf::ListenAddr& addr() const { return opts_.addr; }
  /// The port as bound (port 0 resolved); 0 before open().
  uint16_t boundPort() const { return port_; }
  bool paused() const { return paused_; }
  /// Pause episodes so far (for /-/metrics).
  uint64_t pauses() const { return pauses_; }

 private:
  static void onAccept(evutil_socket_t fd, short, void* arg);
  static void onResume(evutil_socket_t, short, void* arg);
  void pause(int err);

  event_base* base_;
  Options opts_;
  AcceptFn fn_;
  int fd_ = -1;
  event* ev_ = nullptr;
  event* resume_ = nullptr;
  std::string name_;
  uint16_t port_ = 0;
  bool paused_ = false;    // waiting for the resume timer
  bool episode_ = false;   // out of descriptors since the accept queue was last empty
  uint64_t pauses_ = 0;
};

}  // namespace slip
