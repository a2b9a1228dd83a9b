// The fill planner, row by row: a sequential reader, two readers far apart,
// a seek, a full pool, fair shares across files, read-ahead capped by
// max_size/4, a block already in flight, links, whole-body streams, caps;
// issue 11: read-ahead that grows with the reader, seeks (stale readers and
// cancelled read-ahead, a half-done block finishing), a client gone, media
// index regions.
#include <catch2/catch.hpp>
#include <algorithm>
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
  // Fresh: its own block only (rule 7), in parallel pieces.
  CHECK(newBlocks(p) == std::vector<uint32_t>{0});
  const Action* b0 = first(p, K::NewBlock, 0);
  REQUIRE(b0);
  CHECK(b0->urgentPos == 0u);
  CHECK(b0->pieces.size() == 4);  // 1 MiB in 256 KiB pieces
  CHECK(count(p, K::StartPiece) == 4);
  CHECK(count(p, K::Cancel) == 0);
  // Having read 6 MiB, the full read_ahead (4 MiB) beyond its position.
  o.readers = {reader(6 * MiB, 10 * MiB)};
  p = planFill(input({o}));
  INFO(show(p));
  CHECK(newBlocks(p) == std::vector<uint32_t>{6, 7, 8, 9});
  CHECK(first(p, K::NewBlock, 6)->urgentPos);
  CHECK_FALSE(first(p, K::NewBlock, 7)->urgentPos);
  CHECK(count(p, K::StartPiece) == 16);  // connections = 16
}

TEST_CASE("planner: read-ahead grows with what the reader has read (rule 7)", "[planner]") {
  Object o = object(64 * MiB);
  struct Row {
    uint64_t start, pos, ra;
    uint64_t ramp;
    uint32_t first, last;
  } rows[] = {
      {0, 0, 4 * MiB, MiB, 0, 1},                   // fresh at a block start: its own block
      {0, MiB / 2, 4 * MiB, MiB, 0, 2},             // half a block read: one block beyond its position
      {10 * MiB, 10 * MiB + 100, 64 * MiB, MiB, 10, 12},
      {10 * MiB, 13 * MiB, 64 * MiB, 3 * MiB, 13, 16},  // read 3 MiB: 3 MiB ahead
      {0, 20 * MiB, 4 * MiB, 4 * MiB, 20, 24},      // never more than read_ahead
      {0, 20 * MiB, 0, 0, 20, 21},                  // read_ahead 0: its own block
      {30 * MiB, 10 * MiB, 4 * MiB, MiB, 10, 11},   // pos before start (never): a block
  };
  for (const auto& r : rows) {
    INFO("start " << r.start << " pos " << r.pos << " ra " << r.ra);
    Reader rd = reader(r.pos, 64 * MiB);
    rd.start = r.start;
    CHECK(rampOf(rd, o, r.ra) == r.ramp);
    CHECK(windowOf(rd, o, r.ra) == std::make_pair(r.first, r.last));
  }
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

TEST_CASE("planner: read-ahead the old position wanted is cancelled, the new position goes first",
          "[planner]") {
  Object o = object(64 * MiB);
  o.readers = {reader(30 * MiB, 64 * MiB)};
  Block queued;  // read-ahead for the old position, not started
  queued.idx = 2;
  queued.pieces = {{PieceState::Queued, 2 * MiB, 3 * MiB, 0}};
  Block running;  // started, a little fetched: cut (rule 9)
  running.idx = 3;
  running.pieces = {{PieceState::Running, 3 * MiB, 3 * MiB + 512 * 1024, 1000},
                    {PieceState::Queued, 3 * MiB + 512 * 1024, 4 * MiB, 0}};
  Block most;  // more than half fetched: it finishes (its queued piece starts too)
  most.idx = 4;
  most.pieces = {{PieceState::Done, 4 * MiB, 4 * MiB + 512 * 1024, 512 * 1024},
                 {PieceState::Running, 4 * MiB + 512 * 1024, 4 * MiB + 768 * 1024, 1},
                 {PieceState::Queued, 4 * MiB + 768 * 1024, 5 * MiB, 0}};
  Block half;  // exactly half: not more than half, cut
  half.idx = 5;
  half.pieces = {{PieceState::Running, 5 * MiB, 6 * MiB, MiB / 2}};
  o.blocks = {queued, running, most, half};
  o.running = 3;
  Plan p = planFill(input({o}, 32, 29));
  INFO(show(p));
  REQUIRE(!p.actions.empty());
  CHECK(count(p, K::Cancel) == 3);
  CHECK(first(p, K::Cancel, 2));
  CHECK(first(p, K::Cancel, 3));
  CHECK(first(p, K::Cancel, 5));
  CHECK_FALSE(first(p, K::Cancel, 4));
  const Action* sp = first(p, K::StartPiece, 4);
  REQUIRE(sp);
  CHECK(sp->piece == 2);
  const Action* nb = first(p, K::NewBlock, 30);
  REQUIRE(nb);
  CHECK(nb->urgentPos == 30 * MiB);
  // The cut transfers' slots are the object's again: 16 connections, 1 kept (block 4).
  CHECK(count(p, K::StartPiece) == 15);
}

TEST_CASE("planner: a reader gone: its running read-ahead is cut, blocks more than half done finish",
          "[planner]") {
  Object o = object(64 * MiB);
  o.readers = {};  // the client went away
  o.blocks = {{7, false, {{PieceState::Running, 7 * MiB, 8 * MiB, 100}}},
              {8, false, {{PieceState::Running, 8 * MiB, 9 * MiB, 600 * 1024}}},
              {9, false, {{PieceState::Done, 9 * MiB, 10 * MiB, MiB}}},  // committing
              {10, false, {{PieceState::Running, 10 * MiB, 11 * MiB, 0}}, true}};  // the whole stream's
  o.running = 3;
  Plan p = planFill(input({o}, 32, 29));
  INFO(show(p));
  CHECK(count(p, K::Cancel) == 1);
  CHECK(first(p, K::Cancel, 7));
  CHECK(count(p, K::NewBlock) == 0);
  // The block the reader was reading when it left finishes.
  o.blocks[0].keep = true;
  CHECK(count(planFill(input({o}, 32, 29)), K::Cancel) == 0);
}

TEST_CASE("planner: a seek by the same client makes the old reader stale (rule 8)", "[planner]") {
  Object o = object(64 * MiB);
  o.defaultConnections = 4;
  Reader old = reader(8 * MiB, 64 * MiB, 4);  // has read 8 MiB: 4 MiB read-ahead
  old.client = 7;
  old.seq = 1;
  old.stalled = false;
  Reader seek = reader(40 * MiB, 64 * MiB, 4);
  seek.start = 40 * MiB;
  seek.client = 7;
  seek.seq = 2;
  o.blocks = {{8, true, {{PieceState::Running, 8 * MiB, 9 * MiB, 10}}},  // the old reader waits on it
              {9, false, {{PieceState::Running, 9 * MiB, 10 * MiB, 10}}},
              {10, false, {{PieceState::Running, 10 * MiB, 11 * MiB, 10}}},
              {11, false, {{PieceState::Running, 11 * MiB, 12 * MiB, 10}}}};
  o.running = 4;
  o.readers = {old, seek};
  Plan p = planFill(input({o}, 32, 28));
  INFO(show(p));
  CHECK(count(p, K::Cancel) == 3);
  CHECK_FALSE(first(p, K::Cancel, 8));
  const Action* nb = first(p, K::NewBlock, 40);
  REQUIRE(nb);
  CHECK(nb->urgentPos == 40 * MiB);
  CHECK(nb->pieces.size() == 3);  // every connection the cuts freed
  CHECK(count(p, K::StartPiece) == 3);  // never more than connections (4) with block 8's
  CHECK(newBlocks(p) == std::vector<uint32_t>{40});

  // Another client far away is not a seek: its reader keeps its read-ahead.
  o.readers[1].client = 8;
  p = planFill(input({o}, 32, 28));
  INFO(show(p));
  CHECK(count(p, K::Cancel) == 0);
  // The same client again, but inside the old reader's window: not a seek either.
  o.readers[1].client = 7;
  o.readers[1].pos = o.readers[1].start = 10 * MiB;
  p = planFill(input({o}, 32, 28));
  INFO(show(p));
  CHECK(count(p, K::Cancel) == 0);
  // ... more than a block behind it is one.
  o.readers[1].pos = o.readers[1].start = 6 * MiB;
  CHECK(count(planFill(input({o}, 32, 28)), K::Cancel) == 3);
  // The newer reader is the one that counts: the old one seeking is no one's seek.
  o.readers[1].seq = 0;
  CHECK(count(planFill(input({o}, 32, 28)), K::Cancel) == 0);

  CHECK(staleReader(o, 0, 4 * MiB) == false);  // reader 0 is the newer one now
  CHECK(staleReader(o, 1, 4 * MiB) == true);
  o.readers[1].seq = 2;
  CHECK(staleReader(o, 0, 4 * MiB) == true);
  CHECK(staleReader(o, 1, 4 * MiB) == false);
}

TEST_CASE("planner: both blocked, the newer position of a client goes first", "[planner]") {
  Object o = object(64 * MiB);
  Reader old = reader(8 * MiB, 64 * MiB);
  old.client = 3;
  old.seq = 1;
  Reader seek = reader(40 * MiB, 64 * MiB);
  seek.start = 40 * MiB;
  seek.client = 3;
  seek.seq = 2;
  o.readers = {old, seek};
  Plan p = planFill(input({o}));
  INFO(show(p));
  std::vector<uint32_t> nb = newBlocks(p);
  REQUIRE(nb.size() >= 2);
  CHECK(nb[0] == 40);
  CHECK(nb[1] == 8);  // the stale reader still gets its own block, after
  CHECK(first(p, K::NewBlock, 40)->pieces.size() == 4);
  CHECK(std::count(nb.begin(), nb.end(), 9u) == 0);  // but no read-ahead
}

TEST_CASE("planner: a media index region comes right after the urgent block (rule 10)", "[planner]") {
  Object o = object(64 * MiB);
  Reader head = reader(0, 64 * MiB);
  Reader index = reader(61 * MiB + 5, 63 * MiB + 7);
  index.index = true;
  index.stalled = false;
  index.client = 0;
  o.readers = {head, index};
  Plan p = planFill(input({o}));
  INFO(show(p));
  CHECK(newBlocks(p) == std::vector<uint32_t>{0, 61, 62, 63});
  CHECK(first(p, K::NewBlock, 0)->urgentPos);
  CHECK_FALSE(first(p, K::NewBlock, 61)->urgentPos);
  CHECK_FALSE(first(p, K::NewBlock, 63)->urgentPos);
  Reader r = index;
  CHECK(windowOf(r, o, 0) == std::make_pair(61u, 64u));  // its range, whatever read_ahead says
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
  a.readers = {reader(4 * MiB, 10 * MiB)};  // has read 4 MiB: blocks 4..7 in its window
  b.readers = {reader(0, 10 * MiB, 1)};     // this request may use one connection
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
  o.readers = {reader(10 * MiB, 100 * MiB)};  // has read 10 MiB
  Input in = input({o});
  in.cacheMaxSize = 8 * MiB;
  Plan p = planFill(in);
  INFO(show(p));
  CHECK(newBlocks(p) == std::vector<uint32_t>{10, 11});
  CHECK(readAheadOf(o, 8 * MiB) == 2 * MiB);
  CHECK(readAheadOf(o, 1ULL << 40) == 64 * MiB);
}

TEST_CASE("planner: a block already in flight is not fetched twice; its queued pieces start", "[planner]") {
  Object o = object(16 * MiB);
  o.readers = {reader(8 * MiB, 16 * MiB)};  // has read 8 MiB: read_ahead 4 MiB
  o.readers[0].stalled = false;
  const uint64_t at = 8 * MiB;
  Block b;
  b.idx = 8;
  b.waitedOn = true;
  b.pieces = {{PieceState::Running, at, at + 256 * 1024, 5},
              {PieceState::Queued, at + 256 * 1024, at + 512 * 1024, 0},
              {PieceState::Backoff, at + 512 * 1024, at + 768 * 1024, 0},
              {PieceState::Queued, at + 768 * 1024, at + MiB, 0}};
  o.blocks = {b};
  o.running = 1;
  Plan p = planFill(input({o}, 32, 31));
  INFO(show(p));
  CHECK_FALSE(first(p, K::NewBlock, 8));
  REQUIRE(p.actions.size() >= 2);
  CHECK(p.actions[0].kind == K::StartPiece);
  CHECK(p.actions[0].piece == 1);
  CHECK(p.actions[1].piece == 3);
  CHECK(newBlocks(p) == std::vector<uint32_t>{9, 10, 11});
}

TEST_CASE("planner: stored blocks are skipped", "[planner]") {
  Object o = object();
  std::set<uint32_t> stored{4, 5, 7};
  o.stored = [&](uint32_t i) { return stored.count(i) > 0; };
  o.readers = {reader(4 * MiB, 10 * MiB)};  // has read 4 MiB: blocks 4..7 in its window
  Plan p = planFill(input({o}));
  INFO(show(p));
  REQUIRE(newBlocks(p) == std::vector<uint32_t>{6});
  CHECK_FALSE(first(p, K::NewBlock, 6)->urgentPos);  // the reader's own block is stored
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

TEST_CASE("planner: an upstream host's adaptive target caps its objects together", "[planner]") {
  Object o = object();
  o.host = 0;
  o.readers = {reader(4 * MiB, 10 * MiB)};
  Input in = input({o});
  in.hosts[0] = {3, 0};
  CHECK(count(planFill(in), K::StartPiece) == 3);
  // Two objects on one host share its slots; another host is not counted.
  Object a = o, b = o, c = o;
  c.host = 1;
  in = input({a, b, c});
  in.hosts[0] = {5, 1};
  in.hosts[1] = {2, 0};
  Plan p = planFill(in);
  INFO(show(p));
  CHECK(count(p, K::StartPiece, 0) + count(p, K::StartPiece, 1) == 4);
  CHECK(count(p, K::StartPiece, 2) == 2);
  // Cutting stale read-ahead frees the host's slots at once (rule 9).
  Object s = o;
  s.readers = {};
  s.blocks = {{7, false, {{PieceState::Running, 7 * MiB, 8 * MiB, 0}}}};
  s.running = 1;
  in = input({s, o});
  in.hosts[0] = {3, 3};
  p = planFill(in);
  INFO(show(p));
  CHECK(count(p, K::Cancel, 0) == 1);
  CHECK(count(p, K::StartPiece, 1) == 1);
}

TEST_CASE("planner: windows and block splits", "[planner]") {
  Object o = object();
  struct Row {
    uint64_t pos, end, ra;
    uint32_t first, last;
  } rows[] = {
      {0, 10 * MiB, 4 * MiB, 0, 1},             // fresh: its own block (rule 7)
      {4 * MiB, 10 * MiB, 4 * MiB, 4, 8},       // has read 4 MiB: read_ahead
      {MiB / 2, 10 * MiB, 0, 0, 1},             // no read-ahead: its own block
      {MiB / 2, 10 * MiB, MiB, 0, 2},           // up to pos + read_ahead
      {5 * MiB, 6 * MiB + 1, 64 * MiB, 5, 7},   // never past the range's end
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
