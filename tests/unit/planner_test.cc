// The fill planner, row by row: a sequential reader, two readers far apart,
// a seek, a full pool, fair shares across files, read-ahead capped by
// max_size/4, a block already in flight, links, whole-body streams, caps.
#include <catch2/catch.hpp>
#include <set>
#include <sstream>

#include "proxy/fetch/planner.h"

using namespace slip::proxy::plan;
using K = Action::Kind;

namespace {

constexpr uint64_t MiB = 1 << 20;

Object object(uint64_t size = 10 * MiB) {
  Object o;
  o.size = size;
  o.blockSize = MiB;
  o.pool = 0;
  o.defaultConnections = 16;
  o.readAhead = 4 * MiB;
  o.ready = true;
  o.linkUsable = true;
  return o;
}

Reader reader(uint64_t pos, uint64_t end, int connections = 16) {
  Reader r;
  r.pos = pos;
  r.end = end;
  r.connections = connections;
  r.stalled = true;
  return r;
}

Input input(std::vector<Object> objs, int poolLimit = 32, int poolFree = 32) {
  Input in;
  in.objects = std::move(objs);
  in.pools[0] = Pool{poolLimit, poolFree};
  in.fillLimit = 64;
  return in;
}

/// "new_block 0* start_piece 0.0 ..." (* = urgent), for readable failures.
std::string show(const Plan& p) {
  std::ostringstream s;
  for (const Action& a : p.actions) {
    s << actionKindName(a.kind) << " " << a.object << ":" << a.block;
    if (a.kind == K::StartPiece) s << "." << a.piece;
    if (a.urgentPos) s << "*";
    s << "; ";
  }
  return s.str();
}

std::vector<uint32_t> newBlocks(const Plan& p, int obj = -1) {
  std::vector<uint32_t> v;
  for (const Action& a : p.actions)
    if (a.kind == K::NewBlock && (obj < 0 || a.object == obj)) v.push_back(a.block);
  return v;
}

int count(const Plan& p, K k, int obj = -1) {
  int n = 0;
  for (const Action& a : p.actions)
    if (a.kind == k && (obj < 0 || a.object == obj)) n++;
  return n;
}

const Action* first(const Plan& p, K k, uint32_t block) {
  for (const Action& a : p.actions)
    if (a.kind == k && a.block == block) return &a;
  return nullptr;
}

}  // namespace

TEST_CASE("planner: a sequential reader gets its block in parallel pieces, then read-ahead", "[planner]") {
  Object o = object();
  o.readers = {reader(0, 10 * MiB)};
  Plan p = planFill(input({o}));
  INFO(show(p));
  CHECK(newBlocks(p) == std::vector<uint32_t>{0, 1, 2, 3});  // read_ahead 4 MiB
  const Action* b0 = first(p, K::NewBlock, 0);
  REQUIRE(b0);
  CHECK(b0->urgentPos == 0u);
  CHECK(b0->pieces.size() == 4);  // 1 MiB in 256 KiB pieces
  CHECK_FALSE(first(p, K::NewBlock, 1)->urgentPos);
  CHECK(count(p, K::StartPiece) == 16);  // connections = 16
  CHECK(count(p, K::Cancel) == 0);
}

TEST_CASE("planner: a reader in the middle of a block: pieces from its page, the head last", "[planner]") {
  Object o = object();
  o.readers = {reader(MiB + 300 * 1024, 2 * MiB, 16)};
  Plan p = planFill(input({o}));
  INFO(show(p));
  const Action* b1 = first(p, K::NewBlock, 1);
  REQUIRE(b1);
  REQUIRE(b1->pieces.size() >= 2);
  CHECK(b1->pieces.front().begin == MiB + 256 * 1024);  // the page holding the reader
  CHECK(b1->pieces.back() == slip::policy::ByteRange{MiB, MiB + 256 * 1024});  // the head, last
  CHECK(newBlocks(p) == std::vector<uint32_t>{1});  // a closed range: no read-ahead past its end
}

TEST_CASE("planner: two readers far apart each get their block first", "[planner]") {
  Object o = object(64 * MiB);
  o.readers = {reader(0, 64 * MiB), reader(40 * MiB + 5, 64 * MiB)};
  Plan p = planFill(input({o}));
  INFO(show(p));
  std::vector<uint32_t> nb = newBlocks(p);
  REQUIRE(nb.size() >= 2);
  CHECK(nb[0] == 0);
  CHECK(nb[1] == 40);
  CHECK(first(p, K::NewBlock, 0)->urgentPos);
  CHECK(first(p, K::NewBlock, 40)->urgentPos);
  CHECK(count(p, K::StartPiece) == 16);
}

TEST_CASE("planner: a seek cancels queued read-ahead, keeps what runs, serves the new position first",
          "[planner]") {
  Object o = object(64 * MiB);
  o.readers = {reader(30 * MiB, 64 * MiB)};
  Block queued;  // read-ahead for the old position, not started
  queued.idx = 2;
  queued.pieces = {{PieceState::Queued, 2 * MiB, 3 * MiB, 0}};
  Block running;  // started: paid for, it finishes
  running.idx = 3;
  running.pieces = {{PieceState::Running, 3 * MiB, 4 * MiB, 1000}, {PieceState::Queued, 0, 0, 0}};
  running.pieces[1] = {PieceState::Queued, 3 * MiB + 512 * 1024, 4 * MiB, 0};
  o.blocks = {queued, running};
  o.running = 1;
  Plan p = planFill(input({o}, 32, 31));
  INFO(show(p));
  REQUIRE(!p.actions.empty());
  CHECK(count(p, K::Cancel) == 1);
  CHECK(first(p, K::Cancel, 2));
  CHECK_FALSE(first(p, K::Cancel, 3));
  const Action* nb = first(p, K::NewBlock, 30);
  REQUIRE(nb);
  CHECK(nb->urgentPos == 30 * MiB);
}

TEST_CASE("planner: a full pool starts nothing", "[planner]") {
  Object o = object();
  o.readers = {reader(0, 10 * MiB)};
  Plan p = planFill(input({o}, 3, 0));
  INFO(show(p));
  CHECK(p.actions.empty());
  // Slots promised to transfers waiting in the pool count as taken.
  p = planFill(input({o}, 3, -2));
  CHECK(p.actions.empty());
}

TEST_CASE("planner: the fill's own cap (upstream_connections) holds across objects", "[planner]") {
  Object a = object(), b = object();
  a.readers = {reader(0, 10 * MiB)};
  b.readers = {reader(0, 10 * MiB)};
  Input in = input({a, b});
  in.fillLimit = 5;
  in.fillRunning = 2;
  Plan p = planFill(in);
  INFO(show(p));
  CHECK(count(p, K::StartPiece) == 3);
}

TEST_CASE("planner: objects sharing a pool get fair shares, the one served longest ago first", "[planner]") {
  Object a = object(), b = object();
  a.readers = {reader(0, 10 * MiB)};
  b.readers = {reader(0, 10 * MiB)};
  a.servedTick = 1;
  b.servedTick = 2;
  Plan p = planFill(input({a, b}, 3, 3));  // an account allowing three connections
  INFO(show(p));
  CHECK(count(p, K::StartPiece, 0) == 2);  // ceil(3 / 2)
  CHECK(count(p, K::StartPiece, 1) == 1);
  // Served the other way round, the other object goes first.
  a.servedTick = 5;
  p = planFill(input({a, b}, 3, 3));
  CHECK(count(p, K::StartPiece, 0) == 1);
  CHECK(count(p, K::StartPiece, 1) == 2);
}

TEST_CASE("planner: slots a fair share leaves idle go to whoever can use them", "[planner]") {
  Object a = object(), b = object();
  a.readers = {reader(0, 10 * MiB)};
  b.readers = {reader(0, 10 * MiB, 1)};  // this request may use one connection
  Plan p = planFill(input({a, b}, 4, 4));
  INFO(show(p));
  CHECK(count(p, K::StartPiece, 1) == 1);
  CHECK(count(p, K::StartPiece, 0) == 3);  // 2 as its share, 1 more in the second pass
}

TEST_CASE("planner: a stalled reader's object goes before read-ahead of others", "[planner]") {
  Object a = object(), b = object();
  a.readers = {reader(0, 10 * MiB)};
  a.readers[0].stalled = false;  // reading ahead
  a.blocks = {{0, true, {{PieceState::Running, 0, MiB, 10}}}};
  a.running = 1;
  a.servedTick = 0;
  b.readers = {reader(0, 10 * MiB)};  // blocked
  b.servedTick = 9;
  Plan p = planFill(input({a, b}, 2, 1));
  INFO(show(p));
  REQUIRE(!p.actions.empty());
  CHECK(p.actions[0].object == 1);
}

TEST_CASE("planner: read-ahead is capped at a quarter of max_size", "[planner]") {
  Object o = object(100 * MiB);
  o.readAhead = 64 * MiB;
  o.readers = {reader(0, 100 * MiB)};
  Input in = input({o});
  in.cacheMaxSize = 8 * MiB;
  Plan p = planFill(in);
  INFO(show(p));
  CHECK(newBlocks(p) == std::vector<uint32_t>{0, 1});
  CHECK(readAheadOf(o, 8 * MiB) == 2 * MiB);
  CHECK(readAheadOf(o, 1ULL << 40) == 64 * MiB);
}

TEST_CASE("planner: a block already in flight is not fetched twice; its queued pieces start", "[planner]") {
  Object o = object();
  o.readers = {reader(0, 10 * MiB)};
  o.readers[0].stalled = false;
  Block b;
  b.idx = 0;
  b.waitedOn = true;
  b.pieces = {{PieceState::Running, 0, 256 * 1024, 5},
              {PieceState::Queued, 256 * 1024, 512 * 1024, 0},
              {PieceState::Backoff, 512 * 1024, 768 * 1024, 0},
              {PieceState::Queued, 768 * 1024, MiB, 0}};
  o.blocks = {b};
  o.running = 1;
  Plan p = planFill(input({o}, 32, 31));
  INFO(show(p));
  CHECK_FALSE(first(p, K::NewBlock, 0));
  REQUIRE(p.actions.size() >= 2);
  CHECK(p.actions[0].kind == K::StartPiece);
  CHECK(p.actions[0].piece == 1);
  CHECK(p.actions[1].piece == 3);
  CHECK(newBlocks(p) == std::vector<uint32_t>{1, 2, 3});
}

TEST_CASE("planner: stored blocks are skipped", "[planner]") {
  Object o = object();
  std::set<uint32_t> stored{0, 1, 3};
  o.stored = [&](uint32_t i) { return stored.count(i) > 0; };
  o.readers = {reader(0, 10 * MiB)};
  Plan p = planFill(input({o}));
  INFO(show(p));
  CHECK(newBlocks(p) == std::vector<uint32_t>{2});
  CHECK_FALSE(first(p, K::NewBlock, 2)->urgentPos);  // the reader's own block is stored
}

TEST_CASE("planner: without a usable link work waits for one", "[planner]") {
  Object o = object();
  o.linkUsable = false;
  o.readers = {reader(5 * MiB, 10 * MiB)};
  o.blocks = {{1, false, {{PieceState::Queued, MiB, 2 * MiB, 0}}},   // read-ahead left behind
              {5, true, {{PieceState::Queued, 5 * MiB, 6 * MiB, 0}}}};
  Plan p = planFill(input({o}));
  INFO(show(p));
  CHECK(count(p, K::StartPiece) == 0);
  CHECK(count(p, K::NewBlock) == 0);
  CHECK(first(p, K::Cancel, 1));  // still cancelled
  CHECK(count(p, K::NeedLink) == 1);
}

TEST_CASE("planner: objects not ready (probing, dead) get nothing", "[planner]") {
  Object o = object();
  o.ready = false;
  o.readers = {reader(0, 10 * MiB)};
  CHECK(planFill(input({o})).actions.empty());
}

TEST_CASE("planner: an upstream that ignores Range gets one whole-body stream", "[planner]") {
  Object o = object();
  o.noRanges = true;
  o.readers = {reader(0, 10 * MiB)};
  Plan p = planFill(input({o}));
  INFO(show(p));
  CHECK(count(p, K::StartWhole) == 1);
  CHECK(count(p, K::NewBlock) == 0);
  o.wholeRunning = true;  // already streaming
  CHECK(planFill(input({o})).actions.empty());
  o.wholeRunning = false;
  o.wholeBackoff = true;  // failed, waiting before the next attempt
  CHECK(planFill(input({o})).actions.empty());
  o.wholeBackoff = false;
  o.stored = [](uint32_t) { return true; };  // everything stored: nothing to stream
  CHECK(planFill(input({o})).actions.empty());
  o.stored = nullptr;
  o.linkUsable = false;
  CHECK(count(planFill(input({o})), K::NeedLink) == 1);
}

TEST_CASE("planner: a piece with nothing left completes without a connection", "[planner]") {
  Object o = object(MiB);
  o.readers = {reader(0, MiB, 1)};
  o.readers[0].stalled = false;
  o.blocks = {{0, true, {{PieceState::Queued, 0, MiB, MiB}, {PieceState::Queued, 0, MiB, 0}}}};
  Plan p = planFill(input({o}));
  INFO(show(p));
  CHECK(count(p, K::StartPiece) == 2);  // the first takes no slot: the second still fits in 1
}

TEST_CASE("planner: a background (prefetch) reader never makes a block urgent and yields", "[planner]") {
  Object play = object(), pre = object();
  play.readers = {reader(0, 10 * MiB)};
  play.servedTick = 9;
  pre.readers = {reader(8 * MiB, 10 * MiB)};
  pre.readers[0].priority = Priority::Background;
  pre.readers[0].stalled = false;
  pre.servedTick = 1;
  Plan p = planFill(input({pre, play}, 32, 32));
  INFO(show(p));
  REQUIRE(!p.actions.empty());
  CHECK(p.actions[0].object == 1);  // the playing object first, although served later
  const Action* nb = nullptr;
  for (const Action& a : p.actions)
    if (a.object == 0 && a.kind == K::NewBlock) nb = nb ? nb : &a;
  REQUIRE(nb);
  CHECK_FALSE(nb->urgentPos);
}

TEST_CASE("planner: a background object takes no fair share and no slot a playing one can use", "[planner]") {
  Object play = object(), pre = object();
  play.readers = {reader(0, 10 * MiB, 4)};
  play.servedTick = 9;
  pre.readers = {reader(0, 10 * MiB, 4)};
  pre.readers[0].priority = Priority::Background;
  pre.servedTick = 1;  // stalled and served long ago: it would go first were it playing
  Plan p = planFill(input({pre, play}, 4, 4));
  INFO(show(p));
  CHECK(count(p, K::StartPiece, 1) == 4);  // every slot: no fair half for the prefetch
  CHECK(count(p, K::StartPiece, 0) == 0);
  CHECK(count(p, K::Preempt) == 0);
  // Slots the playing object cannot use (its connections) go to the prefetch.
  play.readers[0].connections = 1;
  Plan q = planFill(input({pre, play}, 4, 4));
  INFO(show(q));
  CHECK(count(q, K::StartPiece, 1) == 1);
  CHECK(count(q, K::StartPiece, 0) == 3);
}

TEST_CASE("planner: a playing reader waiting on a full pool preempts one running background piece",
          "[planner]") {
  Object play = object(), pre = object();
  play.readers = {reader(0, 10 * MiB, 4)};  // stalled: nothing fetches its block
  pre.readers = {reader(0, 10 * MiB, 2)};
  pre.readers[0].priority = Priority::Background;
  pre.readers[0].stalled = false;
  pre.running = 2;
  pre.blocks = {{0, true, {{PieceState::Running, 0, MiB, 100}}}, {1, false, {{PieceState::Running, MiB, 2 * MiB, 0}}}};
  Plan p = planFill(input({pre, play}, 2, 0));
  INFO(show(p));
  CHECK(count(p, K::Preempt) == 1);
  CHECK(count(p, K::Preempt, 0) == 1);
  CHECK(count(p, K::NewBlock) == 0);  // the slot frees later: the next plan uses it
  // Another pool's background work is left alone; so is it when nobody plays.
  Object other = pre;
  other.pool = 1;
  Input in = input({other, play}, 2, 0);
  in.pools[1] = Pool{2, 0};
  CHECK(count(planFill(in), K::Preempt) == 0);
  CHECK(count(planFill(input({pre}, 2, 0)), K::Preempt) == 0);
  // A playing reader that is not waiting (its block is being fetched) preempts nothing.
  play.readers[0].stalled = false;
  play.blocks = {{0, true, {{PieceState::Running, 0, MiB, 0}}}};
  play.running = 1;
  CHECK(count(planFill(input({pre, play}, 2, 0)), K::Preempt) == 0);
  // A playing reader whose object's probe waits for a slot waits too; not
  // while a slot preempted earlier is still on its way.
  Object opening = object();
  opening.ready = false;
  opening.probeWaiting = true;
  CHECK(count(planFill(input({pre, opening}, 2, -1)), K::Preempt) == 1);
  Input held = input({pre, opening}, 2, -1);
  held.pools[0].freeing = true;
  CHECK(count(planFill(held), K::Preempt) == 0);
}

TEST_CASE("planner: per-host connection target caps an object", "[planner]") {
  Object o = object();
  o.hostCap = 3;
  o.readers = {reader(0, 10 * MiB)};
  CHECK(count(planFill(input({o})), K::StartPiece) == 3);
}

TEST_CASE("planner: windows and block splits", "[planner]") {
  Object o = object();
  struct Row {
    uint64_t pos, end, ra;
    uint32_t first, last;
  } rows[] = {
      {0, 10 * MiB, 4 * MiB, 0, 4},
      {MiB / 2, 10 * MiB, 0, 0, 1},             // no read-ahead: its own block
      {MiB / 2, 10 * MiB, MiB, 0, 2},           // up to pos + read_ahead
      {0, MiB + 1, 64 * MiB, 0, 2},             // never past the range's end
      {9 * MiB, 10 * MiB, 4 * MiB, 9, 10},
      {5, 5, 4 * MiB, 0, 0},                    // done: no window
  };
  for (const auto& r : rows) {
    INFO(r.pos << ".." << r.end << " ra " << r.ra);
    Reader rd = reader(r.pos, r.end);
    CHECK(windowOf(rd, o, r.ra) == std::make_pair(r.first, r.last));
  }
  using slip::policy::ByteRange;
  CHECK(splitBlock(0, MiB, std::nullopt, 1) == std::vector<ByteRange>{{0, MiB}});
  CHECK(splitBlock(0, MiB, std::nullopt, 2) == std::vector<ByteRange>{{0, MiB / 2}, {MiB / 2, MiB}});
  CHECK(splitBlock(0, MiB, 0, 64).size() == 4);  // pieces of at least 256 KiB
  CHECK(splitBlock(0, 100, 0, 8) == std::vector<ByteRange>{{0, 100}});  // a short last block
  // Urgent at 700 KiB: from its page (640 KiB), then the head.
  CHECK(splitBlock(0, MiB, 700 * 1024, 2) == std::vector<ByteRange>{{640 * 1024, MiB}, {0, 640 * 1024}});
}
