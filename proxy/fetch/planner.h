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
//     share, its pool's free slots, its upstream host's free slots (the
//     adaptive target, proxy/fetch/tuner.h), and the fill's
//     `upstream_connections`.
//  6. An upstream that ignores Range gets one whole-body stream while some
//     reader needs a block that is not stored.
//
// Fetch like a player reads (issue 11):
//  7. Read-ahead grows with what a reader has read: its window is its own
//     block plus min(read_ahead, max(block_size, pos - start)) — a player's
//     seek that reads 2 MiB and leaves costs a few blocks, a download ramps
//     up to the full read_ahead after reading that much.
//  8. A reader is stale when a newer reader of the same client (address and
//     User-Agent) on the object reads far from it (outside its window, or
//     more than a block behind it): a seek. A stale reader gets no
//     read-ahead, and its own block goes after the fresh readers' blocks.
//  9. In-flight blocks no reader's window wants any more (the reader left,
//     or went stale) are cancelled at once, their running pieces included —
//     unless more than half of the block is already fetched (it finishes and
//     is stored), a reader waits on it, a reader that left was reading it
//     (`keep`: the client has part of it and may come back for the rest), or
//     the whole-body stream feeds it.
//     Cancelled transfers give their object's slots back at once, so the
//     block at the new position starts with all free connections, and the
//     object never has more than `connections` transfers.
// 10. A media index region (the MP4 `moov`, the Matroska `Cues`) is an
//     `index` reader: its window is exactly its range, it is never urgent,
//     and its blocks come right after the urgent ones.
//
// Background work (issue 12):
// 11. Background readers (prefetch) come after every playing one: an object
//     only they read takes no fair share and starts work only once playing
//     objects took what they can use; a stalled background reader does not
//     put its object first. When a playing reader waits for a block and its
//     pool has no slot, running pieces of objects only background readers
//     read are preempted (stopped; they resume from the byte reached later),
//     one at a time per pool (none while a preempted slot is still on its
//     way). A playing reader whose object's probe waits for a slot counts
//     as waiting.
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
  uint64_t start = 0;    // where its range began: read-ahead grows with pos - start
  uint64_t client = 0;   // who asks (address + User-Agent); 0 = nobody to compare with
  uint64_t seq = 0;      // attach order on its object: larger is newer
  bool index = false;    // a media index region, not a client: window = [pos, end)
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
  bool stream = false;    // fed by the whole-body stream (never cancelled here)
  bool keep = false;      // a reader that left was reading it: it finishes
  uint64_t length = 0;    // its bytes (0: the sum of its pieces)
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
  int host = -1;               // its upstream host (Input::hosts); -1 = not known
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

/// An upstream host: the adaptive connection target and the fill's
/// transfers to it now.
struct Host {
  int target = INT_MAX;
  int running = 0;
};

struct Input {
  std::vector<Object> objects;
  std::map<int, Pool> pools;  // by pool id
  std::map<int, Host> hosts;  // by host id
  int fillRunning = 0;        // the fill's transfers now, all objects
  int fillLimit = 0;          // upstream_connections
  uint64_t cacheMaxSize = UINT64_MAX;
  uint64_t tick = 0;          // last servedTick handed out
};

struct Action {
  enum class Kind {
    Cancel,      // drop block `block` (read-ahead nobody wants; running pieces are cut)
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
/// Read-ahead of reader r (rule 7): min(readAhead, max(block, pos - start)).
uint64_t rampOf(const Reader& r, const Object& o, uint64_t readAhead);
/// Blocks [first, last) in reader r's window: from its block through its
/// read-ahead (rampOf), at least its own block, never past its range's end.
/// An index reader's window is its whole range; a stale one's its own block.
std::pair<uint32_t, uint32_t> windowOf(const Reader& r, const Object& o, uint64_t readAhead,
                                       bool stale = false);
/// Rule 8: whether reader `i` of `o` was left behind by a newer reader of the
/// same client reading far from it.
bool staleReader(const Object& o, size_t i, uint64_t readAhead);
/// The pieces of block [begin, end): up to `share` page-aligned ranges of at
/// least kMinPiece, starting at the page of `urgentPos` (the head before it
/// comes last), in start order.
std::vector<policy::ByteRange> splitBlock(uint64_t begin, uint64_t end, std::optional<uint64_t> urgentPos,
                                          int share);

}  // namespace slip::proxy::plan
