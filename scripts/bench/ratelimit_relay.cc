// ratelimit_relay: a loopback TCP relay that caps EACH TCP connection, in the
// origin->client direction, at a fixed rate with a token bucket -- the way a
// cloud drive caps each download connection. Keep-alive requests on one
// connection share that connection's bucket (unlike nginx's per-request
// limit_rate). The client->origin direction is not throttled.
//
//   ratelimit_relay --upstream PORT [--listen PORT] [--rate BYTES] [--burst BYTES]
//                   [--delay-ms N] [--stats-port PORT] [--log FILE]
//
// Sizes take K, M or G (binary). Defaults: --rate 16M (bytes/s; 0 = no cap),
// --burst 64K, --delay-ms 0, --listen 0 and --stats-port 0 (free ports).
//
// --delay-ms N models an origin N ms away (a round trip): every time the
// client speaks after the origin has answered (a request on a new or a
// kept-alive connection, a TLS handshake flight), the origin's next bytes are
// held until N ms after the client's bytes reached the relay. Loopback has no
// latency; a real CDN has 20-80 ms.
//
// Requests: the relay reads the request line of plain HTTP/1.1 connections
// (method and path, query dropped) and the response's status line and
// Content-Length, so it knows when each response ends. A request is "in
// flight" from its first byte at the relay until its response's last byte
// left the relay (or the connection closed). Connections that do not start
// with an HTTP method (TLS) are relayed opaquely and only counted as
// connections.
//
// On start it prints
//   port N
//   stats M
// on stdout. A client of the stats port sends one command line and gets the
// answer, then the relay closes:
//   stats  -> down=BYTES up=BYTES accepted=CONNS active=CONNS requests=N
//             inflight=N max_active=N max_inflight=N
//   paths  -> one line per path seen: path=P requests=N inflight=N
//             max_inflight=N down=BYTES, then "end"
//   reset  -> "ok": the max_* peaks restart from the current values
// (down = bytes the relay wrote to clients, i.e. what the "origin" sent over
// the capped link, headers included; up = client->origin bytes; max_active =
// most connections open at once; max_inflight = most requests in flight at
// once, over all paths and, in `paths`, per path). With --log, one line per
// relayed connection is appended when it ends:
//   conn=ID down=BYTES up=BYTES secs=DURATION requests=N
//
// Model: one thread per direction per connection, a 64 KiB buffer, and
// absolute-deadline clock_nanosleep pacing (splice(2) was tried: no cheaper on
// loopback). Plain libc + libstdc++. Pipelined requests are not modelled: a
// new request on a connection ends the previous one.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace {

constexpr size_t kBuf = 64 * 1024;
constexpr size_t kMaxHead = 16 * 1024;  // request/response header bytes looked at

std::atomic<uint64_t> g_down{0}, g_up{0}, g_accepted{0};
double g_rate = 16.0 * 1024 * 1024;  // bytes per second, per connection; 0 = no cap
double g_burst = 64.0 * 1024;        // bucket depth in bytes
int64_t g_delay_ns = 0;              // round trip held before each answer
uint16_t g_upstream = 0;
FILE* g_log = nullptr;
std::mutex g_log_mu;

// Request and connection counts, all under g_mu.
struct PathStats {
  uint64_t requests = 0, inflight = 0, max_inflight = 0, down = 0;
};
std::mutex g_mu;
std::map<std::string, PathStats> g_paths;
uint64_t g_active = 0, g_max_active = 0, g_requests = 0, g_inflight = 0, g_max_inflight = 0;

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

// Case-insensitive search for a header line "name:" in a header block; its
// value as a number, or -1.
int64_t header_number(const std::string& head, const char* name) {
  size_t nl = strlen(name);
  for (size_t pos = head.find("\r\n"); pos != std::string::npos && pos + 2 < head.size();
       pos = head.find("\r\n", pos + 2)) {
    size_t b = pos + 2;
    if (head.size() - b > nl && strncasecmp(head.c_str() + b, name, nl) == 0 && head[b + nl] == ':') {
      char* end = nullptr;
      long long v = strtoll(head.c_str() + b + nl + 1, &end, 10);
      return v >= 0 ? int64_t(v) : -1;
    }
  }
  return -1;
}

// One relayed connection. The HTTP view (kind, request, response framing) is
// under mu: pump_up starts requests, pump_down ends them.
struct Conn {
  uint64_t id = 0;
  int client = -1, up = -1;
  int64_t start = 0;
  std::atomic<uint64_t> down{0}, upb{0};

  std::mutex mu;
  enum class Kind { unknown, http, opaque } kind = Kind::unknown;
  bool await_reply = false;  // the client spoke; the origin's next bytes wait for the round trip
  int64_t asked_ns = 0;
  bool in_req_head = false;  // collecting a request's header block
  std::string req_head;
  bool in_flight = false;  // a request whose response has not ended
  std::string path;
  bool head_method = false;
  bool resp_head_done = false;
  std::string resp_head;
  int64_t body_left = -1;  // -1: unknown length, ends with the connection or the next request
  uint64_t requests = 0;

  ~Conn() {
    {
      std::lock_guard<std::mutex> lk(mu);
      end_request();
    }
    if (g_log) {
      std::lock_guard<std::mutex> lk(g_log_mu);
      fprintf(g_log, "conn=%llu down=%llu up=%llu secs=%.3f requests=%llu\n", (unsigned long long)id,
              (unsigned long long)down.load(), (unsigned long long)upb.load(),
              double(now_ns() - start) / 1e9, (unsigned long long)requests);
      fflush(g_log);
    }
    close(client);
    close(up);
    std::lock_guard<std::mutex> lk(g_mu);
    g_active--;
  }
  void kill() {
    shutdown(client, SHUT_RDWR);
    shutdown(up, SHUT_RDWR);
  }

  // Under mu.
  void end_request() {
    if (!in_flight) return;
    in_flight = false;
    std::lock_guard<std::mutex> lk(g_mu);
    g_paths[path].inflight--;
    g_inflight--;
  }

  // Under mu: the request line is complete.
  void begin_request() {
    end_request();
    size_t eol = req_head.find("\r\n");
    std::string line = req_head.substr(0, eol);
    size_t sp1 = line.find(' ');
    size_t sp2 = sp1 == std::string::npos ? sp1 : line.find(' ', sp1 + 1);
    if (sp1 == std::string::npos || sp2 == std::string::npos) return;
    std::string target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    path = target.substr(0, target.find('?'));
    head_method = line.compare(0, sp1, "HEAD") == 0;
    in_flight = true;
    resp_head_done = false;
    resp_head.clear();
    body_left = -1;
    requests++;
    std::lock_guard<std::mutex> lk(g_mu);
    PathStats& ps = g_paths[path];
    ps.requests++;
    ps.max_inflight = std::max(ps.max_inflight, ++ps.inflight);
    g_requests++;
    g_max_inflight = std::max(g_max_inflight, ++g_inflight);
  }

  // Under mu: client bytes.
  void on_request_bytes(const char* p, size_t n) {
    if (kind == Kind::unknown) kind = isupper(static_cast<unsigned char>(p[0])) ? Kind::http : Kind::opaque;
    if (kind != Kind::http) return;
    if (!in_req_head) {
      in_req_head = true;
      req_head.clear();
    }
    bool had_line = req_head.find("\r\n") != std::string::npos;
    req_head.append(p, std::min(n, kMaxHead - std::min(kMaxHead, req_head.size())));
    if (!had_line && req_head.find("\r\n") != std::string::npos) begin_request();
    if (req_head.find("\r\n\r\n") != std::string::npos || req_head.size() >= kMaxHead) in_req_head = false;
  }

  // Under mu: origin bytes that have just been passed to the client.
  void on_response_bytes(const char* p, size_t n) {
    if (kind != Kind::http || !in_flight) return;
    {
      std::lock_guard<std::mutex> lk(g_mu);
      g_paths[path].down += n;
    }
    size_t body = n;
    if (!resp_head_done) {
      resp_head.append(p, n);
      size_t end = resp_head.find("\r\n\r\n");
      if (end == std::string::npos) {
        if (resp_head.size() > kMaxHead) resp_head_done = true;  // not HTTP as we know it: length unknown
        return;
      }
      resp_head_done = true;
      body = resp_head.size() - (end + 4);
      int status = 0;
      if (resp_head.size() > 12) status = int(strtol(resp_head.c_str() + 9, nullptr, 10));
      if (head_method || status == 204 || status == 304 || (status >= 100 && status < 200)) {
        body_left = 0;
      } else {
        body_left = header_number(resp_head.substr(0, end + 2), "Content-Length");
      }
      resp_head.clear();
    }
    if (body_left >= 0) {
      body_left -= std::min<int64_t>(body_left, int64_t(body));
      if (body_left == 0) end_request();
    }
  }
};

// origin -> client, held for the round trip, paced by the connection's token bucket.
void pump_down(std::shared_ptr<Conn> c) {
  std::unique_ptr<char[]> buf(new char[kBuf]);
  const double ns_per_byte = g_rate > 0 ? 1e9 / g_rate : 0.0;
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
    int64_t hold = 0;
    {
      std::lock_guard<std::mutex> lk(c->mu);
      if (c->await_reply) {
        c->await_reply = false;
        hold = c->asked_ns + g_delay_ns;
      }
    }
    if (g_delay_ns > 0 && hold > now_ns()) sleep_until_ns(hold);
    if (g_rate > 0) {
      int64_t now = now_ns();
      if (t_next < now - burst_ns) t_next = now - burst_ns;  // bucket full: no more credit
      t_next += int64_t(double(n) * ns_per_byte);
      if (t_next > now) sleep_until_ns(t_next);
    }
    if (!write_all(c->client, buf.get(), size_t(n))) {
      c->kill();
      return;
    }
    c->down += uint64_t(n);
    g_down += uint64_t(n);
    std::lock_guard<std::mutex> lk(c->mu);
    c->on_response_bytes(buf.get(), size_t(n));
  }
}

// client -> origin, unthrottled; marks where requests start.
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
    {
      std::lock_guard<std::mutex> lk(c->mu);
      if (!c->await_reply) {
        c->await_reply = true;
        c->asked_ns = now_ns();
      }
      c->on_request_bytes(buf.get(), size_t(n));
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

std::string stats_answer(const std::string& cmd) {
  char line[400];
  std::lock_guard<std::mutex> lk(g_mu);
  if (cmd == "reset") {
    g_max_active = g_active;
    g_max_inflight = g_inflight;
    for (auto& [path, ps] : g_paths) ps.max_inflight = ps.inflight;
    return "ok\n";
  }
  if (cmd == "paths") {
    std::string out;
    for (const auto& [path, ps] : g_paths) {
      snprintf(line, sizeof line, " requests=%llu inflight=%llu max_inflight=%llu down=%llu\n",
               (unsigned long long)ps.requests, (unsigned long long)ps.inflight,
               (unsigned long long)ps.max_inflight, (unsigned long long)ps.down);
      out += "path=" + path + line;
    }
    return out + "end\n";
  }
  snprintf(line, sizeof line,
           "down=%llu up=%llu accepted=%llu active=%llu requests=%llu inflight=%llu max_active=%llu "
           "max_inflight=%llu\n",
           (unsigned long long)g_down.load(), (unsigned long long)g_up.load(), (unsigned long long)g_accepted.load(),
           (unsigned long long)g_active, (unsigned long long)g_requests, (unsigned long long)g_inflight,
           (unsigned long long)g_max_active, (unsigned long long)g_max_inflight);
  return line;
}

void stats_loop(int lfd) {
  for (;;) {
    int fd = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      perror("ratelimit_relay: accept (stats)");
      return;
    }
    timeval tv{2, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    std::string cmd;
    char ch = 0;
    while (cmd.size() < 64 && recv(fd, &ch, 1, 0) == 1 && ch != '\n') cmd += ch;
    while (!cmd.empty() && (cmd.back() == '\r' || cmd.back() == ' ')) cmd.pop_back();
    std::string out = stats_answer(cmd);
    write_all(fd, out.data(), out.size());
    close(fd);
  }
}

void usage() {
  fprintf(stderr,
          "usage: ratelimit_relay --upstream PORT [--listen PORT] [--rate BYTES/s] [--burst BYTES]\n"
          "                       [--delay-ms N] [--stats-port PORT] [--log FILE]\n"
          "  sizes take K, M, G (binary); defaults --rate 16M (0 = no cap) --burst 64K --delay-ms 0,\n"
          "  ports 0 = free port\n");
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
    } else if (a == "--delay-ms") {
      const char* v = val();
      char* end = nullptr;
      unsigned long ms = strtoul(v, &end, 10);
      if (!*v || *end || ms > 60000) {
        usage();
        return 2;
      }
      g_delay_ns = int64_t(ms) * 1000000;
    } else if (a == "--rate") {
      if (!parse_size(val(), &g_rate) || (g_rate > 0 && g_rate < 1)) {
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
    {
      std::lock_guard<std::mutex> lk(g_mu);
      g_max_active = std::max(g_max_active, ++g_active);
    }
    try {
      std::thread(pump_down, c).detach();
      std::thread(pump_up, c).detach();
    } catch (const std::system_error& e) {
      fprintf(stderr, "ratelimit_relay: thread: %s\n", e.what());
      c->kill();
    }
  }
}
