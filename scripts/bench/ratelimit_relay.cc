// ratelimit_relay: a loopback TCP relay that caps EACH TCP connection, in the
// origin->client direction, at a fixed rate with a token bucket -- the way a
// cloud drive caps each download connection. Keep-alive requests on one
// connection share that connection's bucket (unlike nginx's per-request
// limit_rate). The client->origin direction is not throttled.
//
//   ratelimit_relay --upstream PORT [--listen PORT] [--rate BYTES] [--burst BYTES]
//                   [--stats-port PORT] [--log FILE]
//
// Sizes take K, M or G (binary). Defaults: --rate 16M (bytes/s), --burst 64K,
// --listen 0 and --stats-port 0 (free ports). On start it prints
//   port N
//   stats M
// on stdout. Every connection to the stats port gets one line and is closed:
//   down=BYTES up=BYTES accepted=CONNS active=CONNS
// (down = bytes the relay wrote to clients, i.e. what the "origin" sent over
// the capped link; up = client->origin bytes). With --log, one line per
// relayed connection is appended when it ends:
//   conn=ID down=BYTES up=BYTES secs=DURATION
//
// Model: one thread per direction per connection, a 64 KiB buffer, and
// absolute-deadline clock_nanosleep pacing (splice(2) was tried: no cheaper on
// loopback). Plain libc + libstdc++.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace {

constexpr size_t kBuf = 64 * 1024;

std::atomic<uint64_t> g_down{0}, g_up{0}, g_accepted{0}, g_active{0};
double g_rate = 16.0 * 1024 * 1024;  // bytes per second, per connection
double g_burst = 64.0 * 1024;        // bucket depth in bytes
uint16_t g_upstream = 0;
FILE* g_log = nullptr;
std::mutex g_log_mu;

int64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

void sleep_until_ns(int64_t t) {
  timespec ts{time_t(t / 1000000000), long(t % 1000000000)};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
  }
}

bool parse_size(const char* s, double* out) {
  char* end = nullptr;
  double v = strtod(s, &end);
  if (end == s || v < 0) return false;
  std::string suf(end);
  if (suf == "" || suf == "B") {
  } else if (suf == "K" || suf == "k" || suf == "KiB") {
    v *= 1024;
  } else if (suf == "M" || suf == "m" || suf == "MiB") {
    v *= 1024 * 1024;
  } else if (suf == "G" || suf == "g" || suf == "GiB") {
    v *= 1024.0 * 1024 * 1024;
  } else {
    return false;
  }
  *out = v;
  return true;
}

bool write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= size_t(w);
  }
  return true;
}

int listen_on(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0 || listen(fd, 4096) < 0) {
    close(fd);
    return -1;
  }
  return fd;
}

uint16_t port_of(int fd) {
  sockaddr_in a{};
  socklen_t l = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &l);
  return ntohs(a.sin_port);
}

struct Conn {
  uint64_t id = 0;
  int client = -1, up = -1;
  int64_t start = 0;
  std::atomic<uint64_t> down{0}, upb{0};
  ~Conn() {
    if (g_log) {
      std::lock_guard<std::mutex> lk(g_log_mu);
      fprintf(g_log, "conn=%llu down=%llu up=%llu secs=%.3f\n", (unsigned long long)id,
              (unsigned long long)down.load(), (unsigned long long)upb.load(),
              double(now_ns() - start) / 1e9);
      fflush(g_log);
    }
    close(client);
    close(up);
    g_active--;
  }
  void kill() {
    shutdown(client, SHUT_RDWR);
    shutdown(up, SHUT_RDWR);
  }
};

// origin -> client, paced by the connection's token bucket.
void pump_down(std::shared_ptr<Conn> c) {
  std::unique_ptr<char[]> buf(new char[kBuf]);
  const double ns_per_byte = 1e9 / g_rate;
  const int64_t burst_ns = int64_t(g_burst * ns_per_byte);
  int64_t t_next = now_ns();  // when the bucket's debt is paid off
  for (;;) {
    ssize_t n = recv(c->up, buf.get(), kBuf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (n == 0) {
        shutdown(c->client, SHUT_WR);  // pass the origin's FIN on
      } else {
        c->kill();
      }
      return;
    }
    int64_t now = now_ns();
    if (t_next < now - burst_ns) t_next = now - burst_ns;  // bucket full: no more credit
    t_next += int64_t(double(n) * ns_per_byte);
    if (t_next > now) sleep_until_ns(t_next);
    if (!write_all(c->client, buf.get(), size_t(n))) {
      c->kill();
      return;
    }
    c->down += uint64_t(n);
    g_down += uint64_t(n);
  }
}

// client -> origin, unthrottled.
void pump_up(std::shared_ptr<Conn> c) {
  std::unique_ptr<char[]> buf(new char[kBuf]);
  for (;;) {
    ssize_t n = recv(c->client, buf.get(), kBuf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (n == 0) {
        shutdown(c->up, SHUT_WR);
      } else {
        c->kill();
      }
      return;
    }
    if (!write_all(c->up, buf.get(), size_t(n))) {
      c->kill();
      return;
    }
    c->upb += uint64_t(n);
    g_up += uint64_t(n);
  }
}

int connect_upstream() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(g_upstream);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0) {
    close(fd);
    return -1;
  }
  return fd;
}

void stats_loop(int lfd) {
  for (;;) {
    int fd = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      perror("ratelimit_relay: accept (stats)");
      return;
    }
    char line[200];
    int n = snprintf(line, sizeof line, "down=%llu up=%llu accepted=%llu active=%llu\n",
                     (unsigned long long)g_down.load(), (unsigned long long)g_up.load(),
                     (unsigned long long)g_accepted.load(), (unsigned long long)g_active.load());
    write_all(fd, line, size_t(n));
    close(fd);
  }
}

void usage() {
  fprintf(stderr,
          "usage: ratelimit_relay --upstream PORT [--listen PORT] [--rate BYTES/s] [--burst BYTES]\n"
          "                       [--stats-port PORT] [--log FILE]\n"
          "  sizes take K, M, G (binary); defaults --rate 16M --burst 64K, ports 0 = free port\n");
}

}  // namespace

int main(int argc, char** argv) {
  unsigned listen_port = 0, stats_port = 0;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    auto val = [&]() -> const char* {
      if (i + 1 >= argc) {
        usage();
        exit(2);
      }
      return argv[++i];
    };
    // Ports: digits only, 0..65535 (strtoul, not atoi: garbage is an error).
    auto port = [&](unsigned* out) {
      const char* v = val();
      char* end = nullptr;
      unsigned long p = strtoul(v, &end, 10);
      if (!*v || *end || p > 65535) {
        usage();
        exit(2);
      }
      *out = unsigned(p);
    };
    if (a == "--upstream") {
      unsigned p = 0;
      port(&p);
      g_upstream = uint16_t(p);
    } else if (a == "--listen") {
      port(&listen_port);
    } else if (a == "--stats-port") {
      port(&stats_port);
    } else if (a == "--rate") {
      if (!parse_size(val(), &g_rate) || g_rate < 1) {
        usage();
        return 2;
      }
    } else if (a == "--burst") {
      if (!parse_size(val(), &g_burst)) {
        usage();
        return 2;
      }
    } else if (a == "--log") {
      const char* p = val();
      g_log = fopen(p, "a");
      if (!g_log) {
        perror(p);
        return 2;
      }
    } else {
      usage();
      return 2;
    }
  }
  if (g_upstream == 0 || listen_port > 65535 || stats_port > 65535) {
    usage();
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  int lfd = listen_on(uint16_t(listen_port));
  int sfd = listen_on(uint16_t(stats_port));
  if (lfd < 0 || sfd < 0) {
    perror("ratelimit_relay: listen");
    return 1;
  }
  printf("port %u\nstats %u\n", port_of(lfd), port_of(sfd));
  fflush(stdout);
  std::thread(stats_loop, sfd).detach();

  for (;;) {
    int cfd = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    if (cfd < 0) {
      if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE || errno == ENFILE) {
        if (errno == EMFILE || errno == ENFILE) usleep(10000);
        continue;
      }
      perror("ratelimit_relay: accept");
      return 1;
    }
    int ufd = connect_upstream();
    if (ufd < 0) {
      perror("ratelimit_relay: connect upstream");
      close(cfd);
      continue;
    }
    int one = 1;
    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(ufd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    auto c = std::make_shared<Conn>();
    c->id = ++g_accepted;
    c->client = cfd;
    c->up = ufd;
    c->start = now_ns();
    g_active++;
    try {
      std::thread(pump_down, c).detach();
      std::thread(pump_up, c).detach();
    } catch (const std::system_error& e) {
      fprintf(stderr, "ratelimit_relay: thread: %s\n", e.what());
      c->kill();
    }
  }
}
