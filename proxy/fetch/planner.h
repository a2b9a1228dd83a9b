// The fill planner: a pure function from what the fill knows now to the
// upstream work to start (and the queued read-ahead to cancel). No I/O, no
// clock, no store: every fact arrives in the Input, so each scheduling rule
// is a row in tests/unit/planner_test.cc.
//
// Rules (in the order they apply):
//  1. Objects with a reader stalled on a block nobody fetches go first, then
//     the object served longest ago (fair turns between files).
//  2. When more objects want transfers than their pool has slots, each gets
//     ceil(limit / contenders) first; a second pass hands slots nobody could
//     use to whoever can (work-conserving).
//  3. Inside an object: queued pieces of blocks a reader waits on first;
//     queued read-ahead no reader's window wants any more is cancelled.
//  4. Then missing blocks: first a block a reader is blocked on (urgent: cut
//     from the reader's position into up to the free slots' worth of
//     page-aligned pieces of at least 256 KiB, the head last), then the
//     nearest missing block in some reader's window (slots shared out among
//     the missing blocks).
//  5. Caps: the object's `connections` (largest of its readers'), its fair
//     share, its pool's free slots, and the fill's `upstream_connections`.
//  6. An upstream that ignores Range gets one whole-body stream while some
//     reader needs a block that is not stored.
//  7. Background readers (prefetch) come after every playing one: an object
//     only they read takes no fair share and starts work only once playing
//     objects took what they can use; a stalled background reader does not
//     put its object first. When a playing reader waits for a block and its
//     pool has no slot, running pieces of objects only background readers
//     read are preempted (stopped; they resume from the byte reached later),
//     one at a time per pool (none while a preempted slot is still on its
//     way). A playing reader whose object's probe waits for a slot counts
//     as waiting.
//
// Inputs kept for the next rules (issue 11): reader priority (a Background
// reader — prefetch — never makes a block urgent and its object yields to
// objects with playing readers), piece progress (`received`), and a
// per-upstream-host connection target (`hostCap`).
#pragma once

#include <climits>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <vector>

#include "policy/policy.h"

namespace slip::proxy::plan {

/// Smallest piece a waited-on block is split into.
inline constexpr uint64_t kMinPiece = 256 * 1024;
/// Piece boundaries are multiples of this (the store's checksum page).
inline constexpr uint64_t kPage = 64 * 1024;

enum class Priority { Playing, Background };

struct Reader {
  uint64_t pos = 0;      // next byte the client needs
  uint64_t end = 0;      // end of its range (exclusive)
  int connections = 1;   // per-object parallelism this request may use
  Priority priority = Priority::Playing;
  bool stalled = false;  // waits for the block at pos and no fetch exists for it
};

enum class PieceState { Queued, Running, Backoff, Done };
const char* pieceStateName(PieceState s);

struct Piece {
  PieceState state = PieceState::Queued;
  uint64_t begin = 0, end = 0;  // object offsets
  uint64_t received = 0;        // bytes already taken from upstream
};

struct Block {
  uint32_t idx = 0;
  bool waitedOn = false;  // a reader waits for its bytes
  std::vector<Piece> pieces;
};

struct Object {
  uint64_t size = 0;
  uint64_t blockSize = 0;
  int pool = 0;
  int defaultConnections = 1;  // the mount's, when no reader says
  uint64_t readAhead = 0;      // the mount's read_ahead (capped by the planner)
  bool ready = false;          // metadata known and fresh; no probe; not dead
  bool noRanges = false;       // the upstream ignores Range
  bool wholeRunning = false;   // its whole-body stream runs
  bool wholeBackoff = false;   // ... failed and waits before the next attempt
  bool linkUsable = false;
  int running = 0;             // its upstream transfers now
  uint64_t servedTick = 0;     // when a transfer last started for it
  int hostCap = INT_MAX;       // transfers its upstream host should see at most
  bool probeWaiting = false;   // its probe waits for a pool slot while a playing reader opens it
  std::vector<Reader> readers;
  std::vector<Block> blocks;   // in flight, ascending idx
  std::function<bool(uint32_t)> stored;  // the store lists this block
};

struct Pool {
  int limit = 0;
  int free = 0;          // slots neither taken nor promised (may be <= 0)
  bool freeing = false;  // a preempted piece's slot is on its way (the admission's cut-off grace)
};

struct Input {
  std::vector<Object> objects;
  std::map<int, Pool> pools;  // by pool id
  int fillRunning = 0;        // the fill's transfers now, all objects
  int fillLimit = 0;          // upstream_connections
  uint64_t cacheMaxSize = UINT64_MAX;
  uint64_t tick = 0;          // last servedTick handed out
};

struct Action {
  enum class Kind {
    Cancel,      // drop queued block `block` (read-ahead nobody wants)
    NewBlock,    // create block `block` with `pieces` (nothing started yet)
    StartPiece,  // start piece `piece` of block `block`
    StartWhole,  // start the object's whole-body stream
    NeedLink,    // resolve the object's link (work waits for it)
    Preempt,     // stop running piece `piece` of block `block` (background work; it is queued again)
  };
  Kind kind = Kind::StartPiece;
  int object = 0;  // index into Input::objects
  uint32_t block = 0;
  int piece = 0;
  std::optional<uint64_t> urgentPos;      // NewBlock: a reader is blocked at this byte
  std::vector<policy::ByteRange> pieces;  // NewBlock
};
const char* actionKindName(Action::Kind k);

struct Plan {
  std::vector<Action> actions;
};

Plan planFill(const Input& in);

/// read_ahead as the planner applies it: at most a quarter of max_size.
uint64_t readAheadOf(const Object& o, uint64_t cacheMaxSize);
/// Blocks [first, last) in reader r's window: from its block through its
/// read-ahead, at least its own block, never past its range's end.
std::pair<uint32_t, uint32_t> windowOf(const Reader& r, const Object& o, uint64_t readAhead);
/// The pieces of block [begin, end): up to `share` page-aligned ranges of at
/// least kMinPiece, starting at the page of `urgentPos` (the head before it
/// comes last), in start order.
std::vector<policy::ByteRange> splitBlock(uint64_t begin, uint64_t end, std::optional<uint64_t> urgentPos,
                                          int share);

}  // namespace slip::proxy::plan
