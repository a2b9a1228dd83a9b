// Store conformance against a temporary directory and a real disk thread:
// create, fill (write, read back while filling, commit), verified reads,
// a corrupt page dropped, abandon, invalidate, eviction by value, and what a
// reopen (after a crash too) finds.
#include <event2/buffer.h>
#include <event2/thread.h>
#include <fcntl.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <random>

#include "conf/clock.h"
#include "store/store.h"

using namespace slip;
using namespace slip::store;

namespace {

constexpr uint32_t kBlock = 1 << 20;

std::string tempDir() {
  static int n = 0;
  auto d = std::filesystem::temp_directory_path() /
           ("slip-store-test-" + std::to_string(getpid()) + "-" + std::to_string(++n));
  std::filesystem::remove_all(d);
  return d.string();
}

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

struct Fixture {
  ManualClock clock;
  conf::Cache cfg;
  event_base* base;
  std::unique_ptr<Store> store;

  Fixture() {
    evthread_use_pthreads();  // the disk thread activates a loop event
    base = event_base_new();
    conf::Log::setLevel(conf::LogLevel::Error);
    cfg.dir = tempDir();
    cfg.minFree = 0;
    cfg.maxSize = 64LL << 20;
    cfg.blockSize = kBlock;
    open();
  }
  ~Fixture() {
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
  /// Runs the loop until `done` (each completion is one event).
  template <typename F>
  void until(F done) {
    for (int i = 0; i < 1000 && !done(); i++) event_base_loop(base, EVLOOP_ONCE);
    REQUIRE(done());
  }

  ObjectMeta create(const Key& k, uint64_t size, const std::string& etag = "\"e\"") {
    ObjectMeta m;
    m.size = size;
    m.etag = etag;
    m.blockSize = kBlock;
    m.validatedMs = clock.wallMs();
    m.mount = "m";
    m.path = "/f";
    return store->create(k, m);
  }

  /// Fills block `idx` with `data` in `pieces` page-aligned writes and commits it.
  bool fill(const Key& k, const ObjectMeta& m, uint32_t idx, const std::string& data, int pieces = 3) {
    REQUIRE(store->reserve(data.size(), false));
    Store::Writer* w = store->beginBlock(k, m, idx);
    REQUIRE(w);
    uint64_t step = (data.size() / pieces + kPageSize - 1) / kPageSize * kPageSize;
    int written = 0, writes = 0;
    for (uint64_t off = 0; off < data.size(); off += step) {
      size_t n = std::min<uint64_t>(step, data.size() - off);
      writes++;
      store->write(w, off, data.data() + off, n, [&](bool ok) { written += ok; });
    }
    until([&] { return written == writes; });
    std::optional<bool> committed;
    store->commit(w, 1, [&](bool ok) { committed = ok; });
    until([&] { return committed.has_value(); });
    return *committed;
  }

  std::string read(const Key& k, const ObjectMeta& m, uint32_t idx, uint64_t off, uint64_t len,
                   ReadResult* rr) {
    evbuffer* b = evbuffer_new();
    *rr = store->read(k, m, idx, off, len, b);
    std::string s = drain(b);
    evbuffer_free(b);
    return s;
  }
};

}  // namespace

TEST_CASE("store: create, fill, read back verified, count", "[store]") {
  Fixture f;
  Key k = objectKey("m", "/a.mkv");
  CHECK_FALSE(f.store->lookup(k));
  ObjectMeta m = f.create(k, 2 * kBlock + 1000);
  CHECK(m.generation > 0);
  REQUIRE(f.store->lookup(k));
  CHECK(f.store->lookup(k)->size == 2 * kBlock + 1000);
  CHECK(m.blockCount() == 3);

  std::string b0 = bytes(kBlock, 1), b2 = bytes(1000, 3);
  CHECK(f.fill(k, m, 0, b0));
  CHECK(f.fill(k, m, 2, b2, 1));
  CHECK(f.store->present(k, m.generation, 0));
  CHECK_FALSE(f.store->present(k, m.generation, 1));
  CHECK(f.store->present(k, m.generation, 2));
  CHECK(f.store->countPresent(k, m.generation, 0, 2) == 2);
  CHECK_FALSE(f.store->present(k, m.generation + 1, 0));  // other versions are never served

  ReadResult rr;
  CHECK(f.read(k, m, 0, 0, kBlock, &rr) == b0);
  CHECK(rr == ReadResult::Ok);
  // Across a page boundary, and again (now from verified pages).
  for (int i = 0; i < 2; i++) {
    CHECK(f.read(k, m, 0, kPageSize - 10, 20, &rr) == b0.substr(kPageSize - 10, 20));
    CHECK(rr == ReadResult::Ok);
  }
  CHECK(f.read(k, m, 2, 0, 1000, &rr) == b2);
  f.read(k, m, 1, 0, 10, &rr);
  CHECK(rr == ReadResult::Missing);
  f.read(k, m, 2, 900, 200, &rr);  // past the block's end
  CHECK(rr == ReadResult::IoError);

  Usage u = f.store->usage();
  CHECK(u.objects == 1);
  CHECK(u.blocks == 2);
  CHECK(u.bytes == kBlock + 1000);
  CHECK(u.reserved == 0);
}

TEST_CASE("store: bytes of a block being filled are readable before the commit", "[store]") {
  Fixture f;
  Key k = objectKey("m", "/b");
  ObjectMeta m = f.create(k, kBlock);
  std::string data = bytes(kBlock, 7);
  REQUIRE(f.store->reserve(kBlock, false));
  Store::Writer* w = f.store->beginBlock(k, m, 0);
  bool done = false;
  f.store->write(w, 0, data.data(), 2 * kPageSize, [&](bool ok) { done = ok; });
  f.until([&] { return done; });
  evbuffer* b = evbuffer_new();
  CHECK(f.store->readRaw(w, 100, kPageSize, b) == ReadResult::Ok);
  CHECK(drain(b) == data.substr(100, kPageSize));
  evbuffer_free(b);
  CHECK_FALSE(f.store->present(k, m.generation, 0));  // not listed until committed
  // A commit of an incomplete block does not list it.
  std::optional<bool> committed;
  f.store->commit(w, 1, [&](bool ok) { committed = ok; });
  f.until([&] { return committed.has_value(); });
  CHECK_FALSE(*committed);
  CHECK_FALSE(f.store->present(k, m.generation, 0));
  CHECK(f.store->usage().reserved == 0);
}

TEST_CASE("store: abandon forgets the bytes and the reservation", "[store]") {
  Fixture f;
  Key k = objectKey("m", "/c");
  ObjectMeta m = f.create(k, kBlock);
  REQUIRE(f.store->reserve(kBlock, false));
  CHECK(f.store->usage().reserved == kBlock);
  Store::Writer* w = f.store->beginBlock(k, m, 0);
  std::string data = bytes(kPageSize, 9);
  bool done = false;
  f.store->write(w, 0, data.data(), data.size(), [&](bool) { done = true; });
  f.until([&] { return done; });
  f.store->abandon(w);
  CHECK(f.store->usage().reserved == 0);
  CHECK_FALSE(f.store->present(k, m.generation, 0));
  // Filled again afterwards, it is served.
  CHECK(f.fill(k, m, 0, bytes(kBlock, 10)));
  CHECK(f.store->present(k, m.generation, 0));
}

TEST_CASE("store: a page changed on disk is caught, dropped and never served", "[store]") {
  Fixture f;
  Key k = objectKey("m", "/d");
  ObjectMeta m = f.create(k, kBlock);
  std::string data = bytes(kBlock, 11);
  REQUIRE(f.fill(k, m, 0, data));
  ReadResult rr;
  CHECK(f.read(k, m, 0, 0, 100, &rr) == data.substr(0, 100));
  // Someone else writes into the data file (a new ctime: verify again).
  std::string path;
  for (auto& e : std::filesystem::recursive_directory_iterator(f.cfg.dir + "/data"))
    if (e.is_regular_file()) path = e.path();
  REQUIRE(!path.empty());
  int fd = ::open(path.c_str(), O_WRONLY);
  REQUIRE(fd >= 0);
  REQUIRE(pwrite(fd, "XXXX", 4, 4096 + 3 * kPageSize + 5) == 4);
  close(fd);
  f.clock.advanceMs(100);  // past the file-change check interval
  std::string got = f.read(k, m, 0, 3 * kPageSize, 100, &rr);
  CHECK(rr == ReadResult::Corrupt);
  CHECK(got.empty());
  CHECK_FALSE(f.store->present(k, m.generation, 0));
  CHECK(f.store->usage().droppedCorrupt == 1);
  CHECK(f.store->usage().blocks == 0);
  // Pages of the block that were fine are not served either: it is gone.
  f.read(k, m, 0, 0, 100, &rr);
  CHECK(rr == ReadResult::Missing);
}

TEST_CASE("store: invalidate drops the version and its blocks", "[store]") {
  Fixture f;
  Key k = objectKey("m", "/e");
  ObjectMeta m = f.create(k, kBlock);
  REQUIRE(f.fill(k, m, 0, bytes(kBlock, 12)));
  f.store->invalidate(k, m.generation + 1);  // not the current version: nothing happens
  CHECK(f.store->lookup(k));
  f.store->invalidate(k, m.generation);
  CHECK_FALSE(f.store->lookup(k));
  f.until([&] { return f.store->usage().blocks == 0; });
  CHECK_FALSE(f.store->present(k, m.generation, 0));
  // A new version of the same path starts empty, with a new generation.
  ObjectMeta m2 = f.create(k, kBlock, "\"e2\"");
  CHECK(m2.generation > m.generation);
  CHECK_FALSE(f.store->present(k, m2.generation, 0));
}

TEST_CASE("store: eviction takes the least valuable block, never a pinned one", "[store]") {
  Fixture f;
  f.cfg.maxSize = 4 * kBlock;
  f.store.reset();
  f.open();
  Key k = objectKey("m", "/big");
  ObjectMeta m = f.create(k, 4 * kBlock);
  for (uint32_t i = 0; i < 3; i++) {
    REQUIRE(f.fill(k, m, i, bytes(kBlock, 20 + i)));
    f.clock.advanceMs(1000);  // later blocks rank higher
  }
  f.store->pin(k, 0);  // block 0 is being read: not evictable
  // Room for block 3 means the index and file overhead push one block out:
  // the oldest unpinned one, block 1.
  REQUIRE(f.store->reserve(kBlock, false));
  CHECK(f.store->present(k, m.generation, 0));
  CHECK_FALSE(f.store->present(k, m.generation, 1));
  CHECK(f.store->present(k, m.generation, 2));
  CHECK(f.store->usage().evictedBlocks == 1);
  f.store->release(kBlock);
  f.store->unpin(k, 0);
}

TEST_CASE("store: a reopen finds committed blocks and reclaims unlisted bytes", "[store]") {
  Fixture f;
  Key k = objectKey("m", "/r");
  ObjectMeta m = f.create(k, 2 * kBlock);
  std::string b0 = bytes(kBlock, 30);
  REQUIRE(f.fill(k, m, 0, b0));
  // Block 1 written but never committed: what a crash mid-fill leaves.
  REQUIRE(f.store->reserve(kBlock, false));
  Store::Writer* w = f.store->beginBlock(k, m, 1);
  std::string b1 = bytes(kBlock, 31);
  bool done = false;
  f.store->write(w, 0, b1.data(), b1.size(), [&](bool) { done = true; });
  f.until([&] { return done; });
  f.store.reset();  // the writer goes with the store; its bytes stay in the file
  f.open();
  auto back = f.store->lookup(k);
  REQUIRE(back);
  CHECK(back->generation == m.generation);
  CHECK(back->etag == m.etag);
  CHECK(f.store->present(k, m.generation, 0));
  CHECK_FALSE(f.store->present(k, m.generation, 1));
  ReadResult rr;
  CHECK(f.read(k, *back, 0, 0, kBlock, &rr) == b0);
  CHECK(rr == ReadResult::Ok);
  CHECK(f.store->usage().blocks == 1);
  CHECK(f.store->usage().objects == 1);
  // The unlisted block's bytes were punched out of the data file.
  std::string path;
  for (auto& e : std::filesystem::recursive_directory_iterator(f.cfg.dir + "/data"))
    if (e.is_regular_file()) path = e.path();
  int fd = ::open(path.c_str(), O_RDONLY);
  REQUIRE(fd >= 0);
  std::string region(kBlock, 'x');
  CHECK(pread(fd, region.data(), kBlock, 4096 + kBlock) == kBlock);
  close(fd);
  CHECK(region == std::string(kBlock, '\0'));
}

TEST_CASE("store: an object without a committed block is gone after a reopen", "[store]") {
  Fixture f;
  Key k = objectKey("m", "/nothing");
  f.create(k, kBlock);
  f.until([&] { return true; });
  f.store.reset();
  f.open();
  CHECK_FALSE(f.store->lookup(k));
  CHECK(f.store->usage().objects == 0);
}

TEST_CASE("store: drained listeners hear when the disk queue empties", "[store]") {
  Fixture f;
  Key k = objectKey("m", "/q");
  ObjectMeta m = f.create(k, 20 * kBlock);
  int heardA = 0, heardB = 0;
  Subscription a = f.store->onDrained([&] { heardA++; });
  Subscription b = f.store->onDrained([&] { heardB++; });
  std::string data = bytes(kBlock, 40);
  std::vector<Store::Writer*> ws;
  for (uint32_t i = 0; i < 20; i++) {  // 20 MiB queued: over the 16 MiB limit
    REQUIRE(f.store->reserve(kBlock, false));
    ws.push_back(f.store->beginBlock(k, m, i));
    f.store->write(ws.back(), 0, data.data(), data.size(), [](bool) {});
  }
  f.until([&] { return f.store->queuedBytes() == 0; });
  CHECK(heardA == 1);
  CHECK(heardB == 1);
  for (auto* w : ws) f.store->abandon(w);
}
