// store — the block cache on disk: an LMDB index and one sparse data file per
// object version. See store/DESIGN.md for the format, the crash-safety
// argument and the eviction policy.
//
// Threads: every method is called on the event-loop thread. Writes, fsyncs,
// index commits, evictions and hole punching run on one disk thread owned by
// the Store; their completions come back to the loop as callbacks. Reads
// (index lookups, block reads from the page cache) happen on the loop.
#pragma once

#include <event2/event.h>

#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "conf/clock.h"
#include "conf/conf.h"
#include "conf/loop.h"

struct evbuffer;

namespace slip::store {

/// XXH3-128 of (mount, path): the identity of a cached path.
struct Key {
  uint8_t b[16] = {};
  std::string hex() const;
  auto operator<=>(const Key&) const = default;
};
Key objectKey(std::string_view mount, std::string_view path);

/// What the index knows about one version of an object.
struct ObjectMeta {
  uint64_t size = 0;
  std::string etag;
  std::string lastModified;
  std::string contentType;
  uint32_t blockSize = 0;
  uint64_t generation = 0;   // this version; blocks of other versions are never served
  int64_t validatedMs = 0;   // wall clock of the last check against the upstream
  bool noRanges = false;     // the upstream ignores Range
  std::string mount;
  std::string path;

  uint32_t blockCount() const {
    return blockSize ? static_cast<uint32_t>((size + blockSize - 1) / blockSize) : 0;
  }
  uint64_t blockBegin(uint32_t idx) const { return static_cast<uint64_t>(idx) * blockSize; }
  uint64_t blockLength(uint32_t idx) const {
    uint64_t b = blockBegin(idx);
    return b >= size ? 0 : std::min<uint64_t>(blockSize, size - b);
  }
};

/// Checksum granularity inside a block: a read verifies only the pages it
/// touches, so a 64 KiB range read does not hash a whole block.
inline constexpr uint32_t kPageSize = 64 * 1024;

enum class ReadResult { Ok, Missing, Corrupt, IoError };

struct Usage {
  uint64_t objects = 0;
  uint64_t blocks = 0;
  uint64_t bytes = 0;        // block bytes listed in the index
  uint64_t reserved = 0;     // block bytes being fetched
  uint64_t maxBytes = 0;
  uint64_t evictedBlocks = 0;
  uint64_t droppedCorrupt = 0;
  uint64_t pagesChecked = 0;  // pages read and hashed by reads, any thread (verified once per epoch)
};

/// Which cached objects to list (Store::listObjects).
struct ObjectFilter {
  std::string mount;    // "" = all mounts
  std::string prefix;   // path inside the mount must start with it; "" = all
  std::string after;    // "mount:path" of the last object of the previous page
  size_t limit = 100;
};

/// One cached object version and which of its blocks are present.
struct StoredObject {
  ObjectMeta meta;
  std::vector<bool> present;  // one per block
  uint32_t presentBlocks = 0;
  uint64_t presentBytes = 0;
};

struct ObjectListing {
  std::vector<StoredObject> objects;  // sorted by (mount, path)
  std::string next;                   // `after` for the next page; "" = no more
};

/// The lock on a cache directory (`<dir>/slipstream.lock`, flock): a gateway
/// holds it for as long as it runs, so a second one on the same directory
/// refuses to start; `cache reset` and `cache verify --repair` need it too.
/// The holder's pid is written into the file for the messages of others.
class DirLock {
 public:
  DirLock() = default;
  ~DirLock();  // releases the lock
  DirLock(const DirLock&) = delete;
  DirLock& operator=(const DirLock&) = delete;
  DirLock(DirLock&& o) noexcept;
  /// Takes the lock on the existing directory `dir`. False with *err naming
  /// the directory and the holder's pid when another process holds it.
  bool acquire(const std::string& dir, std::string* err);
  /// Who holds `dir`'s lock without taking it: 0 nobody, -1 someone whose
  /// pid is unknown, else that pid.
  static long holder(const std::string& dir);

 private:
  int fd_ = -1;
};

class Store {
 public:
  /// Opens (creating if needed) the cache under cfg.dir for the gateway:
  /// checks the format version, reconciles the data files with the index
  /// (reclaims what a crash left unlisted) and starts the disk thread.
  /// `clock` (not owned) is the only time the store reads, on the loop
  /// thread only: the disk thread gets the time with each operation.
  static std::unique_ptr<Store> open(const conf::Cache& cfg, event_base* base, const Clock& clock,
                                     std::string* err);
  ~Store();  // finishes queued disk work, then stops the thread
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // ---- objects

  std::optional<ObjectMeta> lookup(const Key& k);
  /// Starts a new version of `k` (dropping any older one and its blocks).
  /// Assigns meta.generation and returns the stored meta.
  ObjectMeta create(const Key& k, ObjectMeta meta);
  /// Records that the upstream still matches (revalidated at `nowMs`).
  void markValidated(const Key& k, const ObjectMeta& meta, int64_t nowMs);
  /// Drops this version: it is never served again and its bytes are reclaimed.
  void invalidate(const Key& k, uint64_t generation);

  // ---- stored blocks

  bool present(const Key& k, uint64_t gen, uint32_t idx);
  /// Number of present blocks in [first, last].
  uint32_t countPresent(const Key& k, uint64_t gen, uint32_t first, uint32_t last);
  /// Appends [off, off+len) of block `idx` (offsets inside the block) to
  /// `out`, verifying every page it touches. Corrupt: the block was dropped
  /// (never served) and must be fetched again.
  ReadResult read(const Key& k, const ObjectMeta& m, uint32_t idx, uint64_t off, uint64_t len,
                  evbuffer* out);
  /// Notes a read for eviction ranking (batched to the index).
  void touch(const Key& k, uint64_t gen, uint32_t idx, uint64_t requestId);
  /// Pinned blocks are never evicted.
  void pin(const Key& k, uint32_t idx);
  void unpin(const Key& k, uint32_t idx);

  // ---- filling blocks

  /// Makes room for `bytes` more (evicting least valuable blocks). With
  /// force, succeeds even when nothing more can be evicted (the caller needs
  /// the block now); otherwise false when the cache is full of pinned data.
  bool reserve(uint64_t bytes, bool force);
  void release(uint64_t bytes);  // a reservation that will not be filled

  class Writer;  // one block being filled; owned by the Store
  Writer* beginBlock(const Key& k, const ObjectMeta& m, uint32_t idx);
  /// Queues n bytes at `off` inside the block. Each page must be written
  /// front to back by one caller (pieces are page-aligned). `done(ok)` runs
  /// on the loop once the bytes are in the file (readable with readRaw).
  /// Without `hold` the bytes are copied; with it they are written from
  /// where they are, and `hold` (the buffer that owns them, which the
  /// caller no longer changes there) is kept until they are written.
  void write(Writer* w, uint64_t off, const char* data, size_t n, std::function<void(bool)> done,
             std::shared_ptr<const void> hold = nullptr);
  /// All bytes written: fsync, then list the block in the index. `done(ok)`
  /// runs on the loop after the index commit; the Writer is freed.
  void commit(Writer* w, uint64_t requestId, std::function<void(bool)> done);
  /// The fetch failed for good: forget the bytes (never listed) and free it.
  void abandon(Writer* w);
  /// Reads bytes of a block still being filled (already written, not yet
  /// verified by a listing) — for clients streaming while the fetch runs.
  ReadResult readRaw(Writer* w, uint64_t off, uint64_t len, evbuffer* out);

  /// Bytes handed to the disk thread and not yet written (backpressure).
  size_t queuedBytes() const;
  /// Calls `fn` on the loop whenever queued bytes fell below half the limit
  /// after reaching it, while the subscription lives. Any number of listeners.
  [[nodiscard]] Subscription onDrained(std::function<void()> fn);
  static constexpr size_t kQueueLimit = 16 << 20;

  Usage usage() const;

  /// True when `min_free` is not below the size of the cache's file system
  /// (minFreeProblem at open): nothing could ever be stored, so requests
  /// bypass the cache (streamed as with `cache = off`) instead of failing.
  bool off() const;

  /// Objects listed in the index (committed ones: an object created in the
  /// last moments may show up on the next call), sorted by mount and path,
  /// with their block maps. A read-only walk; the disk thread is not blocked.
  ObjectListing listObjects(const ObjectFilter& f);
  /// One object's current version (committed or being created) and which
  /// of its blocks are listed: the status page's block map of a transfer.
  /// nullopt when the index does not know the object.
  std::optional<StoredObject> storedObject(const Key& k);

  // ---- command line (no event loop, no disk thread)

  /// `slipstream cache stats`: prints objects, blocks, bytes. Exit code.
  static int printStats(const conf::Cache& cfg, FILE* out, bool verbose);
  /// `slipstream cache verify`: checks every listed block, reports bad ones
  /// (bad checksums, data files shorter than their listed blocks, missing
  /// files). With `repair`, unlists the bad blocks (they are fetched again);
  /// that needs the directory lock. Returns the exit code (1 when any block
  /// was bad, even if repaired).
  static int verify(const conf::Cache& cfg, FILE* out, bool repair = false);
  /// `slipstream cache reset`: removes the index and the data files (only
  /// files the cache made), under the directory lock: refused while a
  /// gateway runs on it. Exit code.
  static int reset(const conf::Cache& cfg, FILE* out);
  /// A warning when min_free is at least the size of the file system that
  /// holds (or will hold) the cache: then nothing can ever be stored.
  static std::optional<std::string> minFreeProblem(const conf::Cache& cfg);

  /// The read path for one front-end worker thread (issue 14; WarmReader).
  std::unique_ptr<class WarmReader> warmReader();

  struct Impl;

 private:
  explicit Store(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// The store's read path for one front-end worker thread (issue 14). Only
/// reads, and only of listed blocks: its own LMDB read transaction (the
/// environment is MDB_NOTLS), its own descriptors of the data files and its
/// own sendfile segments. Verified pages are one record per object version
/// shared with the loop and every worker (a page is checksummed on its first
/// read per epoch by whichever thread reads it first). Pins and the blocks being
/// evicted are shared with the loop (a mutex): a block is pinned before its
/// listing is read, so it cannot be evicted or punched while it is served.
/// A page that fails its checksum is not served and is reported to the loop,
/// which drops the block. Create on the loop; use on one thread only.
class WarmReader {
 public:
  ~WarmReader();
  WarmReader(const WarmReader&) = delete;
  WarmReader& operator=(const WarmReader&) = delete;
  /// The object's committed version; nothing while the loop has a change of
  /// it queued and not committed (a purge, a new version, a revalidation):
  /// the loop answers those.
  std::optional<ObjectMeta> lookup(const Key& k);
  /// Every block in [first, last] is listed for `gen` and not leaving.
  bool allPresent(const Key& k, uint64_t gen, uint32_t first, uint32_t last);
  /// As Store::read, for a listed block: Missing when it is not (any more).
  ReadResult read(const Key& k, const ObjectMeta& m, uint32_t idx, uint64_t off, uint64_t len,
                  evbuffer* out);
  /// Every page of [begin, end) of the version is verified (by any thread)
  /// in the current epoch of its file.
  bool verified(const Key& k, const ObjectMeta& m, uint64_t begin, uint64_t end);
  /// Lets go of kept sendfile segments older than a second (call it often).
  void sweep(int64_t monoMs);

 private:
  friend class Store;
  struct State;
  explicit WarmReader(std::unique_ptr<State> s);
  std::unique_ptr<State> s_;
};

}  // namespace slip::store
