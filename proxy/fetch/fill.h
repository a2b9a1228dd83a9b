// Private to proxy/fetch/: the fill's parts.
//
//   Fill (fetcher.cc)   the object table: lifecycle of each object version,
//                       opening, links, readers, kill and release
//   probe.cc            the 1-byte probe that learns size and validators
//   schedule.cc         snapshot → planner (planner.h, pure) → execute
//   runner.cc           pieces and whole-body streams into the store
//   reader.cc           BlockReader: what a client response reads
//
// Invariants:
//  - At most one Block (fetch) exists per (object version, block index):
//    any number of readers waiting on it cause one upstream fetch.
//  - A buffered Block's bytes (memory.h: Cached, MemoryOnly) are readable
//    from its buffer as soon as they arrive; an unbuffered one's (Disk) once
//    the store confirms them written. A block is listed (served verified)
//    only after its commit, which syncs it; a MemoryOnly block never is.
//  - Block buffers are bounded by [cache] fill_memory (all of them, counted
//    until the last queued disk write that references one is done); a
//    reader never holds more than the client high-water mark of bytes in
//    memory; fetches never wait for a reader.
//  - Fetches in flight when their readers leave are finished and stored.
//  - Nothing is freed under a caller: objects are freed by the table's sweep
//    (its own loop callback) once idle; blocks, pieces, transfers and
//    streams that leave go to the fill's Graveyard. Callbacks that can come
//    after a block left (disk completions) check the block's Lifeline.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "proxy/fetch/fetcher.h"
#include "proxy/fetch/memory.h"
#include "proxy/fetch/tuner.h"

namespace slip::proxy {

struct Block;

/// The bytes of one block in flight (fillmem::BlockMode Cached or
/// MemoryOnly), in their own anonymous mapping so that freeing one gives the
/// memory back to the system at once. Shared by the block and the store's
/// queued writes of it; `used` counts every live buffer (any thread may
/// drop the last reference).
struct BlockBuffer {
  BlockBuffer(size_t n, std::shared_ptr<std::atomic<uint64_t>> counter);
  ~BlockBuffer();
  BlockBuffer(const BlockBuffer&) = delete;
  BlockBuffer& operator=(const BlockBuffer&) = delete;
  char* bytes = nullptr;  // null when the mapping failed
  size_t length = 0;
  std::shared_ptr<std::atomic<uint64_t>> used;
};

/// Where an object version is in its life.
enum class ObjectState {
  Opening,  // no usable metadata yet (new, or the probe failed)
  Probing,  // the 1-byte probe transfer is out
  Ready,    // metadata known and fresh enough: blocks are fetched and read
  Dead,     // the version was dropped (changed, gone, failed); callbacks drain
};
const char* objectStateName(ObjectState s);

/// Media-aware prefetch of an object (media.cc).
enum class MediaState {
  Unknown,   // not decided: waiting for a reader and the head's first bytes
  Fetching,  // indexRange is being fetched (an index reader for the planner)
  Off,       // not a media file, nothing to fetch, turned off, or done
};

// One upstream range request filling [begin, end) of a block.
struct Piece final : Transfer::Handler {
  Piece(Fill& f, Block& b, uint64_t from, uint64_t to) : fill(f), blk(b), begin(from), end(to) {}
  Fill& fill;
  Block& blk;
  uint64_t begin, end;    // object offsets
  uint64_t received = 0;  // bytes accepted from upstream (queued to disk)
  uint64_t written = 0;   // bytes confirmed in the data file
  plan::PieceState state = plan::PieceState::Queued;
  int attempts = 0;
  uint64_t linkSerial = 0;
  int host = -1;  // the upstream host its transfer went to (ConnectionTuner id)
  std::unique_ptr<Transfer> xfer;
  std::unique_ptr<Timer> retry;
  uint64_t receivedAtStart = 0;  // `received` when the current attempt started
  int64_t firstFailMs = 0;       // monotonic: first failure since the piece last made progress
  // What onHeaders found, acted on in onDone (outside curl).
  std::optional<policy::UpstreamVerdict> verdict;
  std::string detail;
  std::optional<policy::FetchFailure> failure;  // a verdict that is retried or fails the block

  bool onHeaders(Transfer& t) override;
  size_t onData(Transfer& t, const char* p, size_t n) override;
  void onDone(Transfer& t, const TransferResult& r) override;
};

// One block being fetched: its pieces, its store writer, who waits on it.
struct Block {
  Object* obj = nullptr;
  uint32_t idx = 0;
  uint64_t begin = 0, end = 0;  // object offsets
  store::Store::Writer* writer = nullptr;  // the store's; null once committing or abandoned
  std::vector<std::unique_ptr<Piece>> pieces;
  std::set<BlockReader*> waiters;
  BlockReader* initiator = nullptr;  // pays for it in the access log
  uint64_t requestId = 0;
  bool committing = false;
  bool fedByStream = false;  // filled by the object's whole-body stream
  std::shared_ptr<BlockBuffer> mem;  // Cached / MemoryOnly: readers read here as bytes arrive
  bool uncached = false;     // MemoryOnly: no writer, never listed (the disk was behind)
  bool complete = false;     // MemoryOnly: every byte arrived; freed when no playing reader needs it
  bool wakeQueued = false;   // its readers are woken from the loop soon (bytes arrived inside curl)
  bool keep = false;         // a reader that left was reading it: never cancelled (planner rule 9)
  Lifeline life;             // disk completions check it

  /// Every byte arrived from upstream (a buffered, cached block then only
  /// waits for its disk write, sync and listing).
  bool arrived() const {
    for (const auto& p : pieces)
      if (p->state != plan::PieceState::Done || p->received != p->end - p->begin) return false;
    return true;
  }
};

// For an upstream that ignores Range: one request for the whole body, whose
// bytes fill every block they pass that is not stored yet.
struct WholeStream final : Transfer::Handler {
  WholeStream(Fill& f, Object& o) : fill(f), obj(o) {}
  Fill& fill;
  Object& obj;
  std::unique_ptr<Transfer> xfer;
  int host = -1;             // ConnectionTuner id
  uint64_t offset = 0;       // object offset of the next byte from upstream
  bool changed = false;      // the upstream's length or ETag differ from the object's
  bool cacheFailed = false;  // a block could not be opened in the store
  std::optional<policy::FetchFailure> failure;  // another verdict that is not ok
  std::string detail;

  bool onHeaders(Transfer& t) override;
  size_t onData(Transfer& t, const char* p, size_t n) override;
  void onDone(Transfer& t, const TransferResult& r) override;
};

// The probe of an object: `bytes=0-0`, or — opening a version the index
// does not know (issue 11 item 5) — the block the first reader needs, whose
// Content-Range gives the size and whose body becomes that block's piece.
struct ProbeCall final : Transfer::Handler {
  ProbeCall(Fill& f, Object& o) : fill(f), obj(o) {}
  Fill& fill;
  Object& obj;
  std::unique_ptr<Transfer> xfer;
  uint64_t linkSerial = 0;
  std::optional<policy::ByteRange> fused;  // the block asked for (fused probe)
  bool adopt = false;                      // onHeaders: the body is that block's: a piece takes it
  std::unique_ptr<Trigger> adoptSoon;      // runs Fill::adoptProbe from the loop
  // What onHeaders found.
  bool ok = false;
  bool denied = false;
  bool gone = false;
  bool uncacheable = false;
  std::optional<policy::FetchFailure> failure;  // busy, server error, bad status or answer
  std::string detail;
  store::ObjectMeta meta;

  bool onHeaders(Transfer& t) override;
  size_t onData(Transfer& t, const char* p, size_t n) override;
  void onDone(Transfer& t, const TransferResult& r) override;
};

// The in-memory state of one object version that readers are using.
struct Object {
  store::Key key;
  int mount = -1;                // run->id (links are cached by it)
  std::shared_ptr<MountRun> run; // the settings new fetches use: the newest a reader opened it with
  std::string rest, path;
  ClientInfo client;
  store::ObjectMeta meta;
  bool hasMeta = false;  // the index has this version (meta may be stale)
  ObjectState state = ObjectState::Opening;
  ObjectState afterProbe = ObjectState::Opening;  // where a failed probe leaves it
  std::vector<BlockReader*> opening;  // waiting for the open result
  std::vector<BlockReader*> readers;  // attached, in attach order
  std::set<BlockReader*> stalled;     // waiting for a block no fetch exists for yet
  std::map<uint32_t, std::unique_ptr<Block>> blocks;  // in flight
  int running = 0;          // its upstream transfers now
  uint64_t servedTick = 0;  // when a transfer last started for it (fair turns)
  int commitFailures = 0;
  // link
  Link link;
  bool haveLink = false;
  bool resolving = false;
  uint64_t reResolvedFrom = 0;  // serial of the link the upstream refused, once re-resolved
  // probe
  std::unique_ptr<ProbeCall> probe;
  int probeAttempts = 0;
  int64_t probeFirstFailMs = 0;  // monotonic: the first of the failed attempts in a row
  std::optional<uint64_t> fuseAt;  // a cold open: where the first reader starts (fused probe)
  // media-aware prefetch (media.cc)
  MediaState media = MediaState::Unknown;
  std::optional<policy::ByteRange> indexRange;
  std::unique_ptr<Timer> probeTimer;
  // whole-body stream (upstream ignores Range)
  std::unique_ptr<WholeStream> whole;
  int wholeAttempts = 0;
  int64_t wholeFirstFailMs = 0;  // monotonic: first failure since the stream last made progress
  uint64_t wholeOffsetAtStart = 0;  // the furthest a whole stream got (progress restarts the bound)
  int64_t wholeRetryAtMs = 0;  // monotonic
  Lifeline life;               // link resolutions check it

  /// Nothing uses it any more: the table may free it.
  bool idle() const {
    return readers.empty() && opening.empty() && blocks.empty() && !probe && !whole && !resolving &&
           !(probeTimer && probeTimer->pending()) && media != MediaState::Fetching;
  }
};

class Fill {
 public:
  explicit Fill(Context& c);
  ~Fill();
  Fill(const Fill&) = delete;
  Fill& operator=(const Fill&) = delete;

  Context& ctx;
  store::Store& store;
  ConnectionTuner tuner;  // adaptive transfers per upstream host

  // ---- object table (fetcher.cc)
  /// The current version of `k`, or null.
  const Object* find(const store::Key& k) const {
    auto it = objects_.find(k);
    return it == objects_.end() ? nullptr : it->second.get();
  }
  void open(BlockReader* r, const Request& req);
  void detach(BlockReader* r);
  void finishOpen(Object* o, const OpenResult& res);
  /// The upstream has a new version: `o` dies, a new object takes its key.
  Object* replace(Object* o);
  void kill(Object* o, policy::Reason r, const std::string& detail);
  /// Kills the objects of `mount` at or below `rest` and drops their stored
  /// versions (Engine::purge).
  std::vector<Purged> purge(const std::string& mount, const std::string& rest, bool folder);
  /// Moves o to state s (a debug log line shows each object's trail).
  void setState(Object* o, ObjectState s);
  /// Forgets reader r everywhere in o (readers, waiters, initiators).
  void unlink(Object* o, BlockReader* r);
  /// Frees idle objects soon (from the sweep's own loop callback).
  void sweepSoon() { sweep_.fire(); }
  void ensureLink(Object* o);
  bool linkUsable(const Object* o) const;
  bool linkDenied(Object* o, uint64_t serial);
  /// The transfer on link `serial` failed in a way that blames the link
  /// itself (policy::transportBlamesLink): forget it, so the next request
  /// resolves the path again instead of failing the same way.
  void linkFailed(Object* o, uint64_t serial);
  void waitFor(BlockReader* r, uint32_t idx);
  void wakeBlock(Block* b);
  void wakeStalled(Object* o);
  const conf::Mount& mountOf(const Object* o) const { return *o->run->m; }
  int poolOf(const Object* o) const { return o->run->pool; }
  /// Cancels and frees later (it may be the transfer whose callback runs).
  void retire(std::unique_ptr<Transfer> t);

  // ---- media-aware prefetch (media.cc)
  /// Decides (once) whether o is a media file whose index to fetch with its head.
  void considerMedia(Object* o);
  std::optional<std::string> headOf(Object* o, uint64_t n);

  // ---- probe (probe.cc)
  void startProbe(Object* o);
  void probeFinished(Object* o, const TransferResult& r);
  /// A fused probe's answer is the block it asked for: the object takes the
  /// version, the transfer goes on as that block's piece.
  void adoptProbe(Object* o);

  // ---- scheduling (schedule.cc)
  void kick() { sched_.fire(); }
  /// Kicks the scheduler at `atMs` (monotonic) unless it is due earlier.
  void kickAt(int64_t atMs);
  void schedule();

  // ---- runner (runner.cc)
  /// A new fetch of block idx cut into `pieces`; null when the store has no
  /// room (or cannot open the data file: *cacheFailed, the object must die).
  Block* createBlock(Object* o, uint32_t idx, std::optional<uint64_t> urgentPos,
                     const std::vector<policy::ByteRange>& pieces, bool forceRoom, bool* cacheFailed,
                     bool stream = false);
  void startPiece(Piece* p);
  void pieceFinished(Piece* p, const TransferResult& r);
  void stopPiece(Piece* p);
  void retryPiece(Piece* p, int64_t delayMs);
  void storeBytes(Piece* p, const char* data, size_t n);
  /// How a new block of o is filled (memory.h's rules on the fill's counters).
  fillmem::BlockMode blockMode(Object* o, uint32_t idx, bool urgent, bool stream);
  /// Appends up to `max` bytes of in-flight block b at object offset `at`
  /// to `out` if they can be read now (from its buffer, or from its data
  /// file once written). 0: wait; -1: the store failed to read.
  int64_t readInFlight(Block* b, uint64_t at, uint64_t max, evbuffer* out);
  /// Frees complete MemoryOnly blocks no playing reader needs any more.
  void releaseMemoryBlocks();
  /// Wakes the readers of blocks whose buffers got bytes (memWake_).
  void wakeMemoryReaders();
  /// Bytes of block buffers alive now (the fill_memory gauge).
  uint64_t memoryBytes() const { return memUsed_->load(); }
  void maybeCommit(Block* b);
  /// Stops b's pieces, gives its writer back and takes it out of its object
  /// (freed from the graveyard). Returns the readers that waited on it.
  std::vector<BlockReader*> removeBlock(Block* b);
  void dropBlock(Block* b);
  /// The planner cancelled b (rule 9: nobody wants it; running pieces are cut).
  void cancelBlock(Block* b);
  void failBlock(Block* b, policy::Reason r, const std::string& detail);
  void startWhole(Object* o);
  void wholeFinished(Object* o, const TransferResult& r);
  /// Counts an upstream transfer of `o` to `host` starting (+1) or ending (-1).
  void counted(Object* o, int host, int delta) {
    o->running += delta;
    running_ += delta;
    if (delta > 0) o->servedTick = ++tick_;
    if (delta > 0) tuner.started(host);
    else tuner.ended(host);
  }
  /// The ConnectionTuner id of o's link's host (-1 without a link).
  int hostOf(const Object* o);
  /// Resumes transfers paused on the store's queue.
  void resumePaused();
  std::set<Piece*> paused;  // waiting for the store's queue to drain

 private:
  void sweep();
  /// The probe said `fresh`: the same version is revalidated, another one
  /// replaces o (returned). The opening readers are not told yet.
  Object* takeVersion(Object* o, store::ObjectMeta fresh);
  bool pieceVerdict(Piece* p, const std::string& detail);
  void noRanges(Object* o);
  plan::Input snapshot(std::vector<Object*>* objs);
  void execute(const plan::Plan& plan, const std::vector<Object*>& objs);

  std::map<store::Key, std::unique_ptr<Object>> objects_;  // the current version per key
  std::vector<std::unique_ptr<Object>> retired_;          // dead versions still in use
  int running_ = 0;   // the fill's upstream transfers, all objects
  uint64_t readerSeq_ = 0;  // attach order of readers (planner rule 8)
  uint64_t tick_ = 0; // counts transfer starts, for servedTick
  Trigger sched_;
  Trigger sweep_;
  Timer retryTimer_;  // kicks the scheduler after a backoff
  int64_t retryAtMs_ = 0;
  std::map<int, int64_t> preemptedUntil_;  // pool → monotonic end of a preempted slot's grace
  Subscription drained_;  // the store's queue fell below half
  std::shared_ptr<std::atomic<uint64_t>> memUsed_ = std::make_shared<std::atomic<uint64_t>>(0);
  std::vector<std::pair<Watch, Block*>> memWakes_;  // blocks whose buffers got bytes inside curl
  Trigger memWake_;       // wakes their readers from the loop
  Subscription spare_;    // a pool slot freed that nobody queued took
  Graveyard graveyard_;   // last: swept first when the fill goes
};

}  // namespace slip::proxy
