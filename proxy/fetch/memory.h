// The fill's memory-first decisions (issue 14: cold fills that never wait
// for the disk). Pure functions of plain inputs, table-tested in
// tests/unit/fill_memory_test.cc; the fill (runner.cc, reader.cc,
// schedule.cc) feeds them its counters.
//
// A block in flight may own a memory buffer of its length. Its bytes are
// copied there as they arrive from upstream and readers are served from it
// at once; the store's disk thread writes, checksums and syncs the same
// bytes behind them (the write operations reference the buffer, no second
// copy), and the block is listed only after its bytes are durable. When the
// disk falls behind (the bytes of cached blocks that arrived and are not
// listed yet pass half the budget, or the store's queue is full) a new
// block is not cached at all: it is fetched into memory, served, and freed
// once no playing reader still needs it (a later reader misses and fetches
// it again, like any block that is not stored).
#pragma once

#include <cstdint>
#include <vector>

namespace slip::proxy::fillmem {

/// How a new block is filled.
enum class BlockMode {
  Cached,      // buffered: served from memory, written and synced behind, listed when durable
  MemoryOnly,  // buffered, not cached (the disk is behind): a dropped block
  Disk,        // no buffer: bytes go to the disk and are read back once written (paced by the disk)
  Wait,        // not now: read-ahead that would not fit the budget (tried again when memory frees)
};
const char* blockModeName(BlockMode m);

struct BlockAsk {
  uint64_t length = 0;          // the block's bytes
  bool urgent = false;          // a reader is blocked on it (never Wait: Disk at worst)
  bool playing = false;         // a playing client reads the object (background fills pace on the disk)
  bool stream = false;          // fed by a whole-body stream (paced by the disk, as before)
  uint64_t limit = 0;           // fill_memory: all buffers of all objects (0 = off)
  uint64_t used = 0;            // bytes of buffers alive now
  uint64_t objectUsed = 0;      // this object's buffered blocks still arriving (or not cached)
  uint64_t caching = 0;         // bytes of cached buffered blocks that arrived and are not listed yet
  uint64_t diskQueued = 0;      // bytes queued for the store's disk thread
  uint64_t diskQueueLimit = 0;  // the store's bound on that queue
};

/// Rules, in order:
///  1. off (limit 0), background-only objects, whole-body streams, and
///     blocks larger than half the budget: Disk;
///  2. the buffer does not fit (all buffers ≤ limit, one object's ≤ limit/2):
///     Disk when a reader is blocked on it or the disk keeps up (rule 3's
///     test false: a fast disk is not held to the budget), else Wait;
///  3. the disk is behind (buffered bytes waiting for the disk + this block
///     > limit/2, or the store's queue at its bound): MemoryOnly;
///  4. Cached.
BlockMode chooseBlockMode(const BlockAsk& a);

/// One piece of a block in flight: object offsets [begin, end), `received`
/// bytes arrived from its start.
struct PieceSpan {
  uint64_t begin = 0, end = 0, received = 0;
};

/// Bytes a reader at `at` may read from a buffered block now: those that
/// arrived contiguously from `at` inside the piece that covers it (0: wait).
uint64_t memoryReadable(const std::vector<PieceSpan>& pieces, uint64_t at);

/// A playing reader of the object: where it reads and where its range ends.
struct ReaderSpan {
  uint64_t pos = 0, end = 0;
};

/// Whether a complete MemoryOnly block [begin, end) must stay: some playing
/// reader has not passed it yet and its range reaches it.
bool keepMemoryBlock(uint64_t begin, uint64_t end, const std::vector<ReaderSpan>& readers);

}  // namespace slip::proxy::fillmem
