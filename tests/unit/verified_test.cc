// The record of verified pages shared by the loop and the front-end worker
// threads (issue 14, store/internal.h FileWatch): a page verified by one
// thread is not checksummed again by another; a new epoch (a foreign change
// of the file), a forgotten block and a stale ticket never count as
// verified; and through the Store, a page that fails its checksum on a
// worker is never served.
#include <event2/buffer.h>
#include <event2/thread.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <random>
#include <thread>

#include "conf/clock.h"
#include "store/internal.h"
#include "store/store.h"

using namespace slip;
using namespace slip::store;

namespace {

std::string tempFile() {
  static int n = 0;
  return (std::filesystem::temp_directory_path() /
          ("slip-verified-test-" + std::to_string(getpid()) + "-" + std::to_string(++n)))
      .string();
}

}  // namespace

TEST_CASE("verified pages: marks count across readers, stale tickets and forgotten blocks do not",
          "[store]") {
  std::string path = tempFile();
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
  REQUIRE(fd >= 0);
  FileWatch w;
  REQUIRE(w.check(fd, 0, true));
  FileWatch::Look a = w.look(0, 16, 0, 3);
  CHECK_FALSE(a.verified);
  w.mark(0, a.ticket, 0, 3);
  CHECK(w.look(0, 16, 0, 3).verified);  // another reader sees them
  CHECK(w.look(0, 16, 2, 2).verified);
  CHECK_FALSE(w.look(0, 16, 3, 4).verified);
  CHECK_FALSE(w.look(0, 16, 15, 16).verified);  // past the block: never

  // A read that began before the block was forgotten cannot mark it.
  FileWatch::Look b = w.look(0, 16, 4, 5);
  w.forget(0);
  w.mark(0, b.ticket, 4, 5);
  CHECK_FALSE(w.look(0, 16, 0, 0).verified);
  CHECK_FALSE(w.look(0, 16, 4, 5).verified);

  // A foreign change of the file (not the disk thread's): a new epoch, and
  // a read that began in the old one cannot mark either.
  FileWatch::Look c = w.look(1, 16, 0, 0);
  w.mark(1, c.ticket, 0, 0);
  FileWatch::Look d = w.look(1, 16, 1, 1);
  uint64_t e0 = w.epoch();
  REQUIRE(pwrite(fd, "x", 1, 0) == 1);
  REQUIRE(w.check(fd, 1'000, false));  // within the check interval: not compared yet
  CHECK(w.epoch() == e0);
  REQUIRE(w.check(fd, kCtimeCheckNs + 1'000, false));
  CHECK(w.epoch() == e0 + 1);
  w.mark(1, d.ticket, 1, 1);
  CHECK_FALSE(w.look(1, 16, 0, 0).verified);
  CHECK_FALSE(w.look(1, 16, 1, 1).verified);

  // The disk thread's own write (its ctime recorded): no new epoch.
  FileWatch::Look f = w.look(2, 16, 0, 0);
  w.mark(2, f.ticket, 0, 0);
  REQUIRE(pwrite(fd, "y", 1, 0) == 1);
  w.ourCtimeNs.store(ctimeOf(fd));
  REQUIRE(w.check(fd, 2 * kCtimeCheckNs + 2'000, false));
  CHECK(w.epoch() == e0 + 1);
  CHECK(w.look(2, 16, 0, 0).verified);
  // A fill listed in this epoch counts at once; one begun in an older does not.
  w.trustFill(3, 16, w.epoch(), ctimeOf(fd));
  CHECK(w.look(3, 16, 0, 15).verified);
  w.trustFill(4, 16, e0, ctimeOf(fd));
  CHECK_FALSE(w.look(4, 16, 0, 0).verified);
  close(fd);
  unlink(path.c_str());
}

TEST_CASE("verified pages: concurrent readers share one record", "[store]") {
  FileWatch w;
  constexpr int kThreads = 4;
  constexpr uint32_t kBlocks = 8, kPages = 16;
  std::atomic<int> firstChecks{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; t++) {
    ts.emplace_back([&, t] {
      std::mt19937 rng(static_cast<uint32_t>(t));
      for (int i = 0; i < 20000; i++) {
        uint32_t idx = rng() % kBlocks, p = rng() % kPages;
        FileWatch::Look l = w.look(idx, kPages, p, p);
        if (l.verified) continue;
        firstChecks++;
        w.mark(idx, l.ticket, p, p);
        if (i % 5000 == 4999 && t == 0) w.forget(kBlocks - 1);  // an invalidation meanwhile
      }
    });
  }
  for (auto& t : ts) t.join();
  // Each page is checked about once (a few twice, when two threads looked
  // before either marked; the forgotten block again), not once per thread.
  CHECK(firstChecks.load() <
        kThreads * static_cast<int>(kBlocks * kPages) / 2 + 4 * static_cast<int>(kPages));
  for (uint32_t idx = 0; idx + 1 < kBlocks; idx++)
    CHECK(w.look(idx, kPages, 0, kPages - 1).verified);
}

namespace {

constexpr uint32_t kBlock = 1 << 20;

std::string bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

std::string drain(evbuffer* b) {
  std::string s(evbuffer_get_length(b), '\0');
  evbuffer_remove(b, s.data(), s.size());
  return s;
}

struct StoreFixture {
  ManualClock clock;
  conf::Cache cfg;
  event_base* base;
  std::unique_ptr<Store> store;
  Key k = objectKey("m", "/v");
  ObjectMeta m;
  std::string data = bytes(kBlock, 5);

  StoreFixture() {
    evthread_use_pthreads();
    base = event_base_new();
    conf::Log::setLevel(conf::LogLevel::Error);
    cfg.dir = tempFile();
    cfg.minFree = 0;
    cfg.maxSize = 64LL << 20;
    cfg.blockSize = kBlock;
    open();
    ObjectMeta want;
    want.size = kBlock;
    want.etag = "\"e\"";
    want.blockSize = kBlock;
    want.validatedMs = clock.wallMs();
    want.mount = "m";
    want.path = "/v";
    m = store->create(k, want);
    REQUIRE(store->reserve(kBlock, false));
    Store::Writer* w = store->beginBlock(k, m, 0);
    REQUIRE(w);
    int written = 0;
    store->write(w, 0, data.data(), data.size(), [&](bool ok) { written += ok; });
    until([&] { return written == 1; });
    std::optional<bool> committed;
    store->commit(w, 1, [&](bool ok) { committed = ok; });
    until([&] { return committed.has_value(); });
    REQUIRE(*committed);
    // A new process: nothing is verified yet.
    store.reset();
    open();
  }
  ~StoreFixture() {
    store.reset();
    event_base_free(base);
    std::filesystem::remove_all(cfg.dir);
  }
  void open() {
    std::string err;
    store = Store::open(cfg, base, clock, &err);
    INFO(err);
    REQUIRE(store);
  }
  template <typename F>
  void until(F done) {
    for (int i = 0; i < 1000 && !done(); i++) event_base_loop(base, EVLOOP_ONCE);
    REQUIRE(done());
  }
  std::string loopRead(uint64_t off, uint64_t len, ReadResult* rr) {
    evbuffer* b = evbuffer_new();
    *rr = store->read(k, m, 0, off, len, b);
    std::string s = drain(b);
    evbuffer_free(b);
    return s;
  }
  /// A read on a thread of its own, through a WarmReader (as a worker's).
  std::string workerRead(WarmReader& rd, uint64_t off, uint64_t len, ReadResult* rr) {
    std::string s;
    std::thread t([&] {
      evbuffer* b = evbuffer_new();
      *rr = rd.read(k, m, 0, off, len, b);
      s = drain(b);
      evbuffer_free(b);
    });
    t.join();
    return s;
  }
  uint64_t checked() const { return store->usage().pagesChecked; }
};

}  // namespace

TEST_CASE("verified pages: a page verified on one thread is not checksummed again on another",
          "[store]") {
  StoreFixture f;
  auto rd1 = f.store->warmReader();
  auto rd2 = f.store->warmReader();
  ReadResult rr;
  CHECK(f.checked() == 0);
  CHECK(f.loopRead(0, 4 * kPageSize, &rr) == f.data.substr(0, 4 * kPageSize));
  CHECK(f.checked() == 4);
  CHECK(f.workerRead(*rd1, 0, 4 * kPageSize, &rr) == f.data.substr(0, 4 * kPageSize));
  CHECK(rr == ReadResult::Ok);
  CHECK(f.checked() == 4);  // the loop's verification counts on the worker
  CHECK(f.workerRead(*rd1, 4 * kPageSize, 4 * kPageSize, &rr) ==
        f.data.substr(4 * kPageSize, 4 * kPageSize));
  CHECK(f.checked() == 8);
  CHECK(f.workerRead(*rd2, 2 * kPageSize, 6 * kPageSize, &rr) ==
        f.data.substr(2 * kPageSize, 6 * kPageSize));
  CHECK(f.checked() == 8);  // and the first worker's on the second
  CHECK(f.loopRead(4 * kPageSize, 4 * kPageSize, &rr) ==
        f.data.substr(4 * kPageSize, 4 * kPageSize));
  CHECK(f.checked() == 8);  // and a worker's on the loop

  // Concurrent readers of the rest: every byte right, each page about once.
  std::vector<std::unique_ptr<WarmReader>> rds;
  for (int i = 0; i < 4; i++) rds.push_back(f.store->warmReader());
  std::vector<std::string> got(rds.size());
  std::vector<ReadResult> res(rds.size());
  std::vector<std::thread> ts;
  for (size_t i = 0; i < rds.size(); i++) {
    ts.emplace_back([&, i] {
      for (uint32_t p = 8; p < 16; p++) {
        evbuffer* b = evbuffer_new();
        ReadResult r = rds[i]->read(f.k, f.m, 0, p * uint64_t{kPageSize}, kPageSize, b);
        got[i] += drain(b);
        evbuffer_free(b);
        if (r != ReadResult::Ok) res[i] = r;
      }
    });
  }
  for (auto& t : ts) t.join();
  for (size_t i = 0; i < rds.size(); i++) {
    CHECK(res[i] == ReadResult::Ok);
    CHECK(got[i] == f.data.substr(8 * kPageSize));
  }
  CHECK(f.checked() >= 16);
  CHECK(f.checked() < 8 + 8 * rds.size());
  uint64_t before = f.checked();
  CHECK(f.loopRead(0, kBlock, &rr) == f.data);
  CHECK(f.workerRead(*rd2, 0, kBlock, &rr) == f.data);
  CHECK(f.checked() == before);
}

TEST_CASE(
    "verified pages: a foreign change is verified again on every thread, a bad page never served",
    "[store]") {
  StoreFixture f;
  auto rd = f.store->warmReader();
  ReadResult rr;
  CHECK(f.loopRead(0, kBlock, &rr) == f.data);
  CHECK(f.checked() == 16);
  std::string path;
  for (auto& e : std::filesystem::recursive_directory_iterator(f.cfg.dir + "/data"))
    if (e.is_regular_file()) path = e.path();
  REQUIRE(!path.empty());
  // A change of the file's ctime that is not ours (same bytes): verified again.
  REQUIRE(chmod(path.c_str(), 0600) == 0);
  f.clock.advanceMs(100);
  CHECK(f.workerRead(*rd, 0, kPageSize, &rr) == f.data.substr(0, kPageSize));
  CHECK(f.checked() == 17);
  CHECK(f.loopRead(0, kPageSize, &rr) == f.data.substr(0, kPageSize));
  CHECK(f.checked() == 17);  // the worker's new verification counts on the loop

  // Bytes changed on disk: the worker's read fails, serves nothing, and the
  // loop drops the block.
  int fd = ::open(path.c_str(), O_WRONLY);
  REQUIRE(fd >= 0);
  REQUIRE(pwrite(fd, "XXXX", 4, 4096 + 3 * kPageSize + 5) == 4);
  close(fd);
  f.clock.advanceMs(100);
  std::string got = f.workerRead(*rd, 3 * kPageSize, 100, &rr);
  CHECK(rr == ReadResult::Corrupt);
  CHECK(got.empty());
  f.until([&] { return !f.store->present(f.k, f.m.generation, 0); });
  CHECK(f.store->usage().droppedCorrupt == 1);
  f.loopRead(0, 100, &rr);
  CHECK(rr == ReadResult::Missing);
  f.workerRead(*rd, 0, 100, &rr);
  CHECK(rr == ReadResult::Missing);
}
