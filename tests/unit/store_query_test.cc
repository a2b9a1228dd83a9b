// store: listObjects — the admin API's view of the cache (objects sorted by
// mount and path, filters, pages, block maps of the current version only).
#include <event2/event.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>

#include "src/admin_api.h"
#include "store/store.h"

using namespace slip;

namespace {

struct Cache {
  std::filesystem::path dir = std::filesystem::temp_directory_path() /
                              ("slip-query-test-" + std::to_string(getpid()) + "-" +
                               std::to_string(rand()));
  event_base* base = event_base_new();
  ManualClock clock;
  std::unique_ptr<store::Store> st;
  int pending = 0;

  Cache() {
    conf::Cache cfg;
    cfg.dir = dir.string();
    cfg.maxSize = 64 << 20;
    cfg.minFree = 0;
    cfg.blockSize = 64 << 10;
    std::string err;
    st = store::Store::open(cfg, base, clock, &err);
    REQUIRE(st);
  }
  ~Cache() {
    st.reset();
    event_base_free(base);
    std::filesystem::remove_all(dir);
  }

  store::ObjectMeta object(const std::string& mount, const std::string& path, uint64_t size) {
    store::ObjectMeta m;
    m.size = size;
    m.blockSize = 64 << 10;
    m.mount = mount;
    m.path = path;
    m.etag = "\"v1\"";
    return st->create(store::objectKey(mount, path), m);
  }

  // Writes and commits block idx (filled with one byte value).
  void block(const store::ObjectMeta& m, uint32_t idx) {
    store::Key k = store::objectKey(m.mount, m.path);
    std::string data(m.blockLength(idx), static_cast<char>('a' + idx));
    REQUIRE(st->reserve(data.size(), true));
    store::Store::Writer* w = st->beginBlock(k, m, idx);
    REQUIRE(w);
    pending++;
    st->write(w, 0, data.data(), data.size(), [](bool ok) { CHECK(ok); });
    st->commit(w, 1, [this](bool ok) {
      CHECK(ok);
      pending--;
    });
  }

  void settle() {
    for (int i = 0; i < 10000 && pending > 0; i++) event_base_loop(base, EVLOOP_ONCE);
    REQUIRE(pending == 0);
  }
};

std::string map(const store::StoredObject& o) {
  std::string s;
  for (bool b : o.present) s += b ? 'S' : '-';
  return s;
}

}  // namespace

TEST_CASE("store: listObjects lists objects with their block maps", "[store][admin]") {
  Cache c;
  auto a = c.object("movies", "/b/film.mkv", 4 * (64 << 10) + 100);  // 5 blocks
  auto b = c.object("movies", "/a.mkv", 64 << 10);                   // 1 block
  auto d = c.object("tv", "/s01/e01.mkv", 3 * (64 << 10));
  c.block(a, 0);
  c.block(a, 2);
  c.block(a, 4);  // the short last block
  c.block(b, 0);
  c.block(d, 1);
  c.settle();

  store::ObjectListing all = c.st->listObjects({});
  REQUIRE(all.objects.size() == 3);
  CHECK(all.next.empty());
  CHECK(all.objects[0].meta.path == "/a.mkv");
  CHECK(all.objects[1].meta.path == "/b/film.mkv");
  CHECK(all.objects[2].meta.mount == "tv");
  CHECK(map(all.objects[1]) == "S-S-S");
  CHECK(all.objects[1].presentBlocks == 3);
  CHECK(all.objects[1].presentBytes == 2 * (64 << 10) + 100);
  CHECK(all.objects[1].meta.etag == "\"v1\"");
  CHECK(map(all.objects[0]) == "S");
  CHECK(map(all.objects[2]) == "-S-");

  CHECK(c.st->listObjects({.mount = "tv"}).objects.size() == 1);
  CHECK(c.st->listObjects({.mount = "nope"}).objects.empty());
  auto under = c.st->listObjects({.mount = "movies", .prefix = "/b/"});
  REQUIRE(under.objects.size() == 1);
  CHECK(under.objects[0].meta.path == "/b/film.mkv");

  // Pages of two: the cursor continues after the last one listed.
  auto p1 = c.st->listObjects({.limit = 2});
  REQUIRE(p1.objects.size() == 2);
  CHECK(p1.next == "movies:/b/film.mkv");
  auto p2 = c.st->listObjects({.after = p1.next, .limit = 2});
  REQUIRE(p2.objects.size() == 1);
  CHECK(p2.objects[0].meta.path == "/s01/e01.mkv");
  CHECK(p2.next.empty());
  auto exact = c.st->listObjects({.limit = 3});
  CHECK(exact.next.empty());  // nothing after the third

  // A new version of a path: the old version's blocks are not in its map.
  auto a2 = c.object("movies", "/b/film.mkv", 2 * (64 << 10));
  c.block(a2, 1);
  c.settle();
  auto again = c.st->listObjects({.mount = "movies", .prefix = "/b/"});
  REQUIRE(again.objects.size() == 1);
  CHECK(again.objects[0].meta.generation == a2.generation);
  CHECK(map(again.objects[0]) == "-S");
}

TEST_CASE("admin api: objects come from the store with virtual paths", "[store][admin]") {
  Cache c;
  auto a = c.object("movies", "/a.mkv", 3 * (64 << 10));
  auto g = c.object("gone", "/x.bin", 64 << 10);
  c.block(a, 2);
  c.block(g, 0);
  c.settle();
  std::vector<conf::Mount> mounts(2);
  mounts[0].name = "movies";
  mounts[0].prefix = "/films";
  mounts[1].name = "root";
  mounts[1].prefix = "/";
  auto page = admin::objectsFromStore(c.st.get(), mounts, {});
  REQUIRE(page.value);
  REQUIRE(page.value->objects.size() == 2);
  const admin::ObjectInfo& gone = page.value->objects[0];
  CHECK(gone.mount == "gone");
  CHECK(gone.virtualPath.empty());
  const admin::ObjectInfo& film = page.value->objects[1];
  CHECK(film.virtualPath == "/films/a.mkv");
  CHECK(film.blocks.states == "--S");
  CHECK(film.blocks.size == 3 * (64 << 10));
  CHECK(film.blocksPresent == 1);

  auto unknown = admin::objectsFromStore(c.st.get(), mounts, {.mount = "nope"});
  CHECK_FALSE(unknown.value);
  CHECK(unknown.error.reason == policy::Reason::UnknownMount);
  auto off = admin::objectsFromStore(nullptr, mounts, {});
  CHECK(off.error.reason == policy::Reason::CacheDisabled);
}
