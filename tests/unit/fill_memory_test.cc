// The fill's memory-first decisions (proxy/fetch/memory.h), row by row:
// the mode a new block is given (cached behind memory, not cached because the
// disk is behind, through the disk, or not now), what a reader may read
// from a block's buffer, and when a complete block that was not cached may
// be freed.
#include <catch2/catch.hpp>

#include "proxy/fetch/memory.h"

using namespace slip::proxy::fillmem;

namespace {
constexpr uint64_t MiB = 1 << 20;

BlockAsk ask() {
  BlockAsk a;
  a.length = MiB;
  a.urgent = false;
  a.playing = true;
  a.limit = 32 * MiB;
  a.diskQueueLimit = 16 * MiB;
  return a;
}
}  // namespace

TEST_CASE("chooseBlockMode: one row per rule") {
  struct Row {
    const char* name;
    BlockAsk a;
    BlockMode want;
  };
  std::vector<Row> rows;
  auto row = [&rows](const char* name, auto change, BlockMode want) {
    BlockAsk a = ask();
    change(a);
    rows.push_back({name, a, want});
  };
  row("idle fill, fast disk: cached behind memory", [](BlockAsk&) {}, BlockMode::Cached);
  row("fill_memory = 0: through the disk", [](BlockAsk& a) { a.limit = 0; }, BlockMode::Disk);
  row("background readers only: paced by the disk", [](BlockAsk& a) { a.playing = false; }, BlockMode::Disk);
  row("whole-body stream: paced by the disk", [](BlockAsk& a) { a.stream = true; }, BlockMode::Disk);
  row("block bigger than half the budget", [](BlockAsk& a) { a.length = 17 * MiB; }, BlockMode::Disk);
  row("block exactly half the budget fits", [](BlockAsk& a) { a.length = 16 * MiB; }, BlockMode::Cached);
  row("budget spent, read-ahead, disk keeping up: through the disk", [](BlockAsk& a) { a.used = 32 * MiB; },
      BlockMode::Disk);
  row("budget spent, read-ahead, disk behind: not now",
      [](BlockAsk& a) { a.used = 32 * MiB; a.caching = 16 * MiB; }, BlockMode::Wait);
  row("budget spent, read-ahead, store queue full: not now",
      [](BlockAsk& a) { a.used = 32 * MiB; a.diskQueued = 16 * MiB; }, BlockMode::Wait);
  row("budget spent, a reader blocked on it: through the disk",
      [](BlockAsk& a) { a.used = 32 * MiB; a.urgent = true; }, BlockMode::Disk);
  row("budget has exactly this block left", [](BlockAsk& a) { a.used = 31 * MiB; }, BlockMode::Cached);
  row("object holds half the budget, disk keeping up: through the disk",
      [](BlockAsk& a) { a.used = 16 * MiB; a.objectUsed = 16 * MiB; }, BlockMode::Disk);
  row("object holds half the budget, disk behind: not now",
      [](BlockAsk& a) { a.used = 16 * MiB; a.objectUsed = 16 * MiB; a.caching = 16 * MiB; }, BlockMode::Wait);
  row("object holds half, blocked reader: through the disk",
      [](BlockAsk& a) { a.objectUsed = 16 * MiB; a.used = 16 * MiB; a.urgent = true; }, BlockMode::Disk);
  row("disk behind (half the budget waits for it): not cached",
      [](BlockAsk& a) { a.caching = 16 * MiB; a.used = 16 * MiB; }, BlockMode::MemoryOnly);
  row("disk behind, urgent block: still not cached (never waits)",
      [](BlockAsk& a) { a.caching = 16 * MiB; a.used = 16 * MiB; a.urgent = true; }, BlockMode::MemoryOnly);
  row("disk just keeping up: cached", [](BlockAsk& a) { a.caching = 15 * MiB; a.used = 15 * MiB; },
      BlockMode::Cached);
  row("store queue at its bound: not cached", [](BlockAsk& a) { a.diskQueued = 16 * MiB; },
      BlockMode::MemoryOnly);
  row("store queue below its bound: cached", [](BlockAsk& a) { a.diskQueued = 16 * MiB - 1; }, BlockMode::Cached);
  row("empty block: nothing to buffer", [](BlockAsk& a) { a.length = 0; }, BlockMode::Disk);
  for (const Row& r : rows) {
    INFO(r.name);
    CHECK(blockModeName(chooseBlockMode(r.a)) == std::string(blockModeName(r.want)));
  }
}

TEST_CASE("memoryReadable: only bytes that arrived, inside the piece that covers the position") {
  // One block [0, 1 MiB) in two pieces: [0, 512K) has 100 KiB, [512K, 1M) has 0.
  const uint64_t K = 1024;
  std::vector<PieceSpan> ps = {{0, 512 * K, 100 * K}, {512 * K, 1024 * K, 0}};
  struct Row {
    uint64_t at, want;
  };
  for (Row r : std::vector<Row>{{0, 100 * K},
                                {99 * K, 1 * K},
                                {100 * K, 0},        // the next byte has not arrived
                                {300 * K, 0},        // far ahead in the first piece
                                {512 * K, 0},        // the second piece has nothing yet
                                {2048 * K, 0}}) {    // outside every piece
    INFO("at " << r.at);
    CHECK(memoryReadable(ps, r.at) == r.want);
  }
  ps[1].received = 512 * K;  // the second piece complete
  CHECK(memoryReadable(ps, 512 * K) == 512 * K);
  CHECK(memoryReadable(ps, 1023 * K) == 1 * K);
  ps[0].received = 600 * K;  // never past the piece's end, even if counted so
  CHECK(memoryReadable(ps, 500 * K) == 12 * K);
}

TEST_CASE("keepMemoryBlock: freed once every playing reader passed it or does not reach it") {
  const uint64_t b = 4 * MiB, e = 5 * MiB;  // the block
  struct Row {
    const char* name;
    std::vector<ReaderSpan> readers;
    bool keep;
  };
  for (const Row& r : std::vector<Row>{
           {"nobody reads the object", {}, false},
           {"a reader inside it", {{b + 10, 100 * MiB}}, true},
           {"a reader before it whose range reaches it", {{MiB, 100 * MiB}}, true},
           {"a reader before it whose range ends before it", {{MiB, b}}, false},
           {"a reader past it", {{e, 100 * MiB}}, false},
           {"one past, one before it", {{e + 1, 100 * MiB}, {0, 100 * MiB}}, true},
           {"a reader at its last byte", {{e - 1, e}}, true},
       }) {
    INFO(r.name);
    CHECK(keepMemoryBlock(b, e, r.readers) == r.keep);
  }
}
