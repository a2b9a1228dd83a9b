// The front end's pieces for TLS and the status page that need no socket:
// UserCopier (file segments through user space, for OpenSSL) and
// SpeedMeter (a client's speed from loop-sampled counters).
#include <event2/buffer.h>
#include <fcntl.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <string>

#include "src/exchange.h"
#include "src/http_conn.h"

using slip::SpeedMeter;
using slip::http::UserCopier;

namespace {

std::string pattern(size_t n, unsigned seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; i++) {
    seed = seed * 1103515245u + 12345u;
    s[i] = static_cast<char>(seed >> 16);
  }
  return s;
}

struct TempFile {
  std::string path;
  int fd = -1;
  explicit TempFile(const std::string& data) {
    char tmpl[] = "/tmp/slip-copy-test-XXXXXX";
    fd = mkstemp(tmpl);
    path = tmpl;
    REQUIRE(write(fd, data.data(), data.size()) == static_cast<ssize_t>(data.size()));
  }
  ~TempFile() { unlink(path.c_str()); }
  /// A new descriptor for a segment (the segment closes it).
  int reopen() const { return open(path.c_str(), O_RDONLY | O_CLOEXEC); }
};

std::string drain(evbuffer* b) {
  std::string out(evbuffer_get_length(b), '\0');
  evbuffer_remove(b, out.data(), out.size());
  return out;
}

}  // namespace

TEST_CASE("UserCopier moves memory and sendfile chains in bounded steps", "[front]") {
  std::string data = pattern(3 * 1024 * 1024 + 7, 5);
  TempFile f(data);
  evbuffer* src = evbuffer_new();
  evbuffer* dst = evbuffer_new();
  // As the jobs queue them: sendfile chains (the bytes stay in the file).
  evbuffer_set_flags(src, EVBUFFER_FLAG_DRAINS_TO_FD);
  evbuffer_file_segment* seg = evbuffer_file_segment_new(
      f.reopen(), 0, static_cast<ev_off_t>(data.size()), EVBUF_FS_CLOSE_ON_FREE);
  REQUIRE(seg);
  evbuffer_add(src, "HEAD", 4);
  evbuffer_add_file_segment(src, seg, 1000, 2 * 1024 * 1024);
  evbuffer_add(src, "MID", 3);
  evbuffer_add_file_segment(src, seg, 0, 10);
  evbuffer_add_file_segment(src, seg, static_cast<ev_off_t>(data.size()) - 5, 5);
  evbuffer_file_segment_free(seg);  // the chains hold it
  std::string want = "HEAD" + data.substr(1000, 2 * 1024 * 1024) + "MID" + data.substr(0, 10) +
                     data.substr(data.size() - 5);

  UserCopier c;
  REQUIRE(c.pipeSize() >= 4096);
  int steps = 0;
  while (evbuffer_get_length(src) > 0) {
    std::string err;
    size_t before = evbuffer_get_length(dst);
    ssize_t n = c.move(src, dst, 100'000, &err);
    REQUIRE(n > 0);
    CHECK(static_cast<size_t>(n) <= c.pipeSize());  // bounded by the pipe
    CHECK(evbuffer_get_length(dst) - before == static_cast<size_t>(n));
    steps++;
  }
  CHECK(steps >= static_cast<int>(want.size() / c.pipeSize()));
  CHECK(drain(dst) == want);
  std::string err;
  CHECK(c.move(src, dst, 100, &err) == 0);  // nothing left
  evbuffer_free(src);
  evbuffer_free(dst);
}

TEST_CASE("UserCopier reports a file shorter than its segment and stays usable", "[front]") {
  std::string data = pattern(200'000, 9);
  TempFile f(data);
  evbuffer* src = evbuffer_new();
  evbuffer* dst = evbuffer_new();
  evbuffer_set_flags(src, EVBUFFER_FLAG_DRAINS_TO_FD);
  evbuffer_file_segment* seg =
      evbuffer_file_segment_new(f.reopen(), 0, 200'000, EVBUF_FS_CLOSE_ON_FREE);
  REQUIRE(seg);
  evbuffer_add_file_segment(src, seg, 0, 200'000);
  evbuffer_file_segment_free(seg);
  REQUIRE(truncate(f.path.c_str(), 50'000) == 0);  // the file shrank under us

  UserCopier c;
  std::string err;
  size_t moved = 0;
  ssize_t n = 0;
  while ((n = c.move(src, dst, 1 << 20, &err)) > 0) moved += static_cast<size_t>(n);
  CHECK(n == -1);
  CHECK(err == "file segment ends early");
  CHECK(moved == 50'000);  // never bytes that are not in the file
  CHECK(drain(dst) == data.substr(0, 50'000));

  // The pipe is empty again: the next connection's bytes are its own.
  evbuffer* other = evbuffer_new();
  evbuffer_add(other, "next", 4);
  CHECK(c.move(other, dst, 100, &err) == 4);
  CHECK(drain(dst) == "next");
  evbuffer_free(other);
  evbuffer_free(src);
  evbuffer_free(dst);
}

TEST_CASE("SpeedMeter: bytes over the sampled window", "[front]") {
  SpeedMeter m;
  CHECK(m.bytesPerSecond() == 0);
  m.sample(1'000'000'000, 0);
  CHECK(m.bytesPerSecond() == 0);  // one sample says nothing
  m.sample(1'500'000'000, 500'000);
  CHECK(m.bytesPerSecond() == Approx(1'000'000));
  // A stall: the window (7 samples, 3 s at 500 ms) keeps the old bytes
  // until they slide out.
  for (int i = 2; i <= 6; i++) m.sample(1'000'000'000 + i * 500'000'000LL, 500'000);
  CHECK(m.bytesPerSecond() == Approx(500'000.0 / 3.0));  // t = 1.0 .. 4.0 s
  m.sample(4'500'000'000, 500'000);
  CHECK(m.bytesPerSecond() == 0);  // t = 1.5 .. 4.5 s: nothing moved
  m.sample(5'000'000'000, 2'000'000);
  CHECK(m.bytesPerSecond() == Approx(1'500'000.0 / 3.0));
}
