// Private to store/: the Store's state shared by its files (store.cc: open,
// reconcile, objects, filling, eviction; read.cc: data files and verified
// reads; disk.cc: the disk thread). See store/DESIGN.md.
#pragma once

#include <sys/stat.h>
#include <xxhash.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <list>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <tuple>

#include "conf/loop.h"
#include "store/index.h"
#include "store/store.h"

namespace slip::store {

inline void logStore(conf::LogLevel l, std::string_view ev, const std::string& kv) {
  conf::Log::write(l, ev, kv);
}

/// A block read by a second, different request ranks as if it were read this
/// much later: one big one-off download cannot push out what is watched again.
constexpr int64_t kReuseBonusMs = 6 * 3600 * 1000;
constexpr size_t kMaxOpenFiles = 128;
constexpr int64_t kTouchFlushMs = 1000;

struct BlockId {
  Key key;
  uint32_t idx;
  auto operator<=>(const BlockId&) const = default;
};

/// Blocks being evicted or dropped ("leaving") and blocks being read
/// ("pinned"), shared by the loop and the front-end worker threads (issue
/// 14): every access takes the mutex, and each check-and-claim is one call,
/// so a worker's pin and the loop's choice of a victim never interleave.
class PinTable {
 public:
  bool leaving(const BlockId& b) const {
    std::lock_guard<std::mutex> g(mu_);
    return leaving_.count(b) > 0;
  }
  void stay(const BlockId& b) {
    std::lock_guard<std::mutex> g(mu_);
    leaving_.erase(b);
  }
  bool pinned(const BlockId& b) const {
    std::lock_guard<std::mutex> g(mu_);
    return pins_.count(b) > 0;
  }
  void pin(const BlockId& b) {
    std::lock_guard<std::mutex> g(mu_);
    pins_[b]++;
  }
  /// A worker's pin: refused (false) when the block is leaving.
  bool pinIfStaying(const BlockId& b) {
    std::lock_guard<std::mutex> g(mu_);
    if (leaving_.count(b)) return false;
    pins_[b]++;
    return true;
  }
  /// True when that was the block's last pin.
  bool unpin(const BlockId& b) {
    std::lock_guard<std::mutex> g(mu_);
    auto it = pins_.find(b);
    if (it == pins_.end() || --it->second > 0) return false;
    pins_.erase(it);
    return true;
  }
  /// Eviction: marks the block leaving unless it is pinned or leaving already.
  bool claim(const BlockId& b) {
    std::lock_guard<std::mutex> g(mu_);
    if (pins_.count(b) || leaving_.count(b)) return false;
    leaving_.insert(b);
    return true;
  }
  /// A drop: marks the block leaving; whether it is pinned now.
  bool leaveAndPinned(const BlockId& b) {
    std::lock_guard<std::mutex> g(mu_);
    leaving_.insert(b);
    return pins_.count(b) > 0;
  }

 private:
  mutable std::mutex mu_;
  std::set<BlockId> leaving_;
  std::map<BlockId, int> pins_;
};

inline int64_t ctimeOf(int fd) {
  struct stat st {};
  if (fstat(fd, &st) != 0) return -1;
  return static_cast<int64_t>(st.st_ctim.tv_sec) * 1'000'000'000 + st.st_ctim.tv_nsec;
}

constexpr int64_t kCtimeCheckNs = 50'000'000;  // how stale a file's change check may be

/// The one record of which pages of a data file (one object version) have
/// been verified against their checksums, shared by every thread that reads
/// it: the loop and the front-end workers (issue 14). A page verified by any
/// of them goes out with sendfile on all of them.
///
/// Pages count only in the file's current *epoch*. The disk thread records
/// the ctime each of its own writes and punches left (`ourCtimeNs`, and
/// `writing` while one is under way); a reader compares the file's ctime with
/// it at most every kCtimeCheckNs, and a change the disk thread did not cause
/// starts a new epoch (every page is verified again). A block's pages are
/// forgotten when it is dropped or evicted. Marks carry the ticket of the
/// entry they were checked against, so a read that began before a block was
/// forgotten (or before a new epoch) cannot mark it verified afterwards.
/// Everything but the two atomics is behind one mutex per file.
class FileWatch {
 public:
  std::atomic<int64_t> ourCtimeNs{-1};
  std::atomic<int> writing{0};  // disk-thread writes or punches under way
  /// A ctime that was caused by us (or cannot be told apart from one of our
  /// writes under way).
  bool ours(int64_t ct) const { return writing.load() > 0 || ct == ourCtimeNs.load(); }

  /// Compares the file's ctime (through `fd`, any descriptor of the file) if
  /// the last comparison is older than kCtimeCheckNs, or always with `force`
  /// (a descriptor just opened). False when fstat fails.
  bool check(int fd, int64_t nowNs, bool force) {
    {
      std::lock_guard<std::mutex> g(mu_);
      if (!force && checked_ && nowNs - checkedNs_ < kCtimeCheckNs) return true;
    }
    int64_t ct = ctimeOf(fd);
    if (ct < 0) return false;
    std::lock_guard<std::mutex> g(mu_);
    if (ct != seenCtimeNs_) {
      if (!ours(ct)) newEpoch();
      seenCtimeNs_ = ct;
    }
    checked_ = true;
    checkedNs_ = nowNs;
    return true;
  }
  uint64_t epoch() const {
    std::lock_guard<std::mutex> g(mu_);
    return epoch_;
  }

  struct Look {
    bool verified;    // every page of [p0, p1] verified in this epoch
    uint64_t ticket;  // for mark()
  };
  Look look(uint32_t idx, size_t pages, uint32_t p0, uint32_t p1) {
    std::lock_guard<std::mutex> g(mu_);
    Entry& e = blocks_[idx];
    if (e.ticket == 0 || e.epoch != epoch_ || e.pages.size() != pages)
      e = Entry{epoch_, ++tickets_, std::vector<bool>(pages)};
    bool all = p1 < e.pages.size();
    for (uint32_t p = p0; p <= p1 && all; p++) all = e.pages[p];
    return {all, e.ticket};
  }
  /// Pages [p0, p1] verified, if the block's entry is still the one `ticket` came from.
  void mark(uint32_t idx, uint64_t ticket, uint32_t p0, uint32_t p1) {
    std::lock_guard<std::mutex> g(mu_);
    auto it = blocks_.find(idx);
    if (it == blocks_.end() || it->second.ticket != ticket || it->second.epoch != epoch_) return;
    for (uint32_t p = p0; p <= p1 && p < it->second.pages.size(); p++) it->second.pages[p] = true;
  }
  /// A block just listed: its checksums were computed from the very bytes
  /// written. Trusted when the file's ctime is ours and the epoch is the one
  /// the fill began in.
  void trustFill(uint32_t idx, size_t pages, uint64_t fillEpoch, int64_t ct) {
    std::lock_guard<std::mutex> g(mu_);
    if (ct < 0 || !ours(ct) || fillEpoch != epoch_) return;
    seenCtimeNs_ = ct;
    blocks_[idx] = Entry{epoch_, ++tickets_, std::vector<bool>(pages, true)};
  }
  /// A block dropped or evicted: nothing of it counts as verified any more.
  void forget(uint32_t idx) {
    std::lock_guard<std::mutex> g(mu_);
    blocks_.erase(idx);
  }

 private:
  struct Entry {
    uint64_t epoch = 0;
    uint64_t ticket = 0;
    std::vector<bool> pages;
  };
  void newEpoch() {
    epoch_++;
    blocks_.clear();
  }
  mutable std::mutex mu_;
  int64_t seenCtimeNs_ = -1;
  int64_t checkedNs_ = 0;
  bool checked_ = false;
  uint64_t epoch_ = 1;
  uint64_t tickets_ = 0;
  std::map<uint32_t, Entry> blocks_;
};

/// The FileWatch of each object version, shared by the loop and the
/// workers: whoever opens a descriptor of a data file takes the version's
/// watch from here (and keeps it with the descriptor). A deleted version's
/// watch is forgotten; above kMaxWatches, watches nobody holds are.
class WatchTable {
 public:
  std::shared_ptr<FileWatch> get(const Key& k, uint64_t gen) {
    std::lock_guard<std::mutex> g(mu_);
    auto& w = watches_[{k, gen}];
    if (!w) {
      w = std::make_shared<FileWatch>();
      if (watches_.size() > kMaxWatches) {
        for (auto it = watches_.begin(); it != watches_.end();)
          it = it->second.use_count() == 1 ? watches_.erase(it) : std::next(it);
      }
    }
    return w;
  }
  /// The watch if there is one (nullptr otherwise).
  std::shared_ptr<FileWatch> find(const Key& k, uint64_t gen) const {
    std::lock_guard<std::mutex> g(mu_);
    auto it = watches_.find({k, gen});
    return it == watches_.end() ? nullptr : it->second;
  }
  void forgetBlock(const Key& k, uint64_t gen, uint32_t idx) {
    if (auto w = find(k, gen)) w->forget(idx);
  }
  void forgetVersion(const Key& k, uint64_t gen) {
    std::lock_guard<std::mutex> g(mu_);
    watches_.erase({k, gen});
  }
  size_t size() const {
    std::lock_guard<std::mutex> g(mu_);
    return watches_.size();
  }
  static constexpr size_t kMaxWatches = 4096;

 private:
  mutable std::mutex mu_;
  std::map<std::pair<Key, uint64_t>, std::shared_ptr<FileWatch>> watches_;
};

/// Keys whose object has a change queued for the disk thread and not yet
/// committed (the loop's `pendingObjects`, mirrored for the workers): a
/// worker does not answer for them (the loop does, from its overlay), so a
/// purge or a new version is seen on every thread from the moment it is
/// queued, not only once it commits.
class PendingKeys {
 public:
  void add(const Key& k) {
    std::lock_guard<std::mutex> g(mu_);
    keys_.insert(k);
  }
  void remove(const Key& k) {
    std::lock_guard<std::mutex> g(mu_);
    keys_.erase(k);
  }
  bool contains(const Key& k) const {
    std::lock_guard<std::mutex> g(mu_);
    return keys_.count(k) > 0;
  }

 private:
  mutable std::mutex mu_;
  std::set<Key> keys_;
};

/// An open data file, shared by the loop (reads) and the disk thread
/// (writes); its verified pages and change detection are in `watch`.
struct DataFile {
  int fd = -1;
  std::string path;
  std::shared_ptr<FileWatch> watch;
  ~DataFile() {
    if (fd >= 0) close(fd);
  }
};

constexpr size_t kMaxSegments = 1024;
constexpr int64_t kSegmentLifeMs = 1000;

struct CachedSegment {
  evbuffer_file_segment* seg;
  uint64_t length;
  int64_t bornMs;  // monotonic
};

struct Victim {
  Key key;
  uint64_t gen;
  uint32_t idx;
  uint32_t length;
  uint32_t blockSize;
  uint64_t offset = 0;  // in the data file (filled in by the disk thread)
};

struct TouchRec {
  Key key;
  uint64_t gen;
  uint32_t idx;
  uint64_t request;
  int64_t atMs;  // wall clock
};

class Store::Writer {
 public:
  Key key;
  uint64_t gen = 0;
  uint32_t idx = 0;
  uint32_t length = 0;
  uint64_t fileOffset = 0;
  std::shared_ptr<DataFile> file;
  uint64_t epoch = 0;  // the file's epoch when the fill began (loop side)
  // Disk thread only: running page hashes.
  std::vector<XXH3_state_t*> states;
  std::vector<uint32_t> filled;
  std::vector<uint64_t> hashes;
  bool failed = false;

  ~Writer() {
    for (auto* s : states)
      if (s) XXH3_freeState(s);
  }
  uint32_t pageLen(uint32_t p) const {
    return std::min<uint32_t>(kPageSize, length - p * kPageSize);
  }
};

enum class OpKind {
  PutObject,
  DeleteObject,
  Write,
  Commit,
  Abandon,
  Evict,
  Drop,
  Punch,
  Touch,
  Stop
};

struct Op {
  OpKind kind;
  Key key;
  uint64_t gen = 0;
  uint32_t idx = 0;
  ObjectMeta meta;
  Store::Writer* w = nullptr;
  std::unique_ptr<Store::Writer> owned;  // Commit/Abandon: the writer goes with its last op
  uint64_t off = 0;
  std::string data;                   // Write: a copy of the bytes, or
  std::shared_ptr<const void> hold;   // Write: keeps the caller's buffer alive until written
  const char* ptr = nullptr;          // ... bytes inside it
  size_t len = 0;
  const char* bytes() const { return hold ? ptr : data.data(); }
  size_t size() const { return hold ? len : data.size(); }
  uint64_t request = 0;
  std::vector<Victim> victims;
  std::vector<TouchRec> touches;
  std::function<void(bool)> done;
  bool ok = true;
  bool punch = true;  // Abandon/Drop: give the bytes back now (false: later, or never)
  int64_t atMs = 0;   // wall clock when the loop queued it (the disk thread reads no clock)
};

struct Store::Impl {
  Store* self = nullptr;
  conf::Cache cfg;
  event_base* base = nullptr;
  const Clock* clock = nullptr;
  DirLock lock;      // declared before env: released after the index is closed
  bool off = false;  // min_free leaves nothing to store: every request bypasses the cache
  Env env;

  // ---- loop thread
  MDB_txn* rtxn = nullptr;  // reset between uses
  uint64_t nextGen = 1;
  uint64_t used = 0;  // listed block bytes
  uint64_t reserved = 0;
  uint64_t objects = 0, blocks = 0;
  uint64_t evicted = 0, dropped = 0;
  std::map<Key, std::optional<ObjectMeta>> pendingObjects;  // queued, not yet committed
  void setPending(const Key& k, std::optional<ObjectMeta> m) {
    pendingKeys.add(k);  // before the caller answers anyone: workers hand these keys over
    pendingObjects[k] = std::move(m);
  }
  PinTable pins;  // leaving (being evicted or dropped) and pinned blocks; shared with workers
  std::map<const Store::Writer*, std::unique_ptr<Store::Writer>> writers;  // filling
  std::multimap<BlockId, std::unique_ptr<Store::Writer>> deferredAbandon;  // punched when unpinned
  std::multimap<BlockId, Op> deferredPunch;  // dropped blocks, punched when unpinned
  int64_t statvfsAtMs = 0;                   // monotonic
  uint64_t diskAvail = UINT64_MAX;
  std::map<std::tuple<Key, uint64_t, uint32_t>, TouchRec> touches;
  std::map<std::tuple<Key, uint64_t, uint32_t>, CachedSegment> segments;
  std::list<std::pair<std::pair<Key, uint64_t>, std::shared_ptr<DataFile>>> files;  // LRU
  std::vector<char> scratch;
  EventPtr doneEv;      // activated by the disk thread
  EventPtr touchTimer;  // persistent: flushes batched touches
  Signal drained;
  size_t queued = 0;
  bool wantDrained = false;
  int64_t overheadAtMs = 0;  // monotonic
  uint64_t overhead = 0;

  // ---- shared with the front-end workers (WarmReader, store/warm.cc)
  WatchTable watches;                     // verified pages and change detection, per object version
  PendingKeys pendingKeys;                // the keys of pendingObjects
  std::atomic<uint64_t> pagesChecked{0};  // pages read and hashed by reads (any thread)
  std::mutex fromWorkersMu;
  std::vector<BlockId> workerUnpinned;                             // last pins a worker let go
  std::vector<std::tuple<Key, uint64_t, uint32_t>> workerCorrupt;  // pages a worker found bad
  EventPtr fromWorkersEv;  // activated by a worker; runs workerNotes() on the loop
  void workerNotes();
  void afterLastPin(const BlockId& b);
  void unpinFromWorker(const BlockId& b);
  void reportCorrupt(const Key& k, uint64_t gen, uint32_t idx);

  // ---- shared with the disk thread
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Op> todo;
  std::vector<Op> finished;
  std::thread thread;

  ~Impl();
  // loop
  MDB_txn* readTxn();
  void endRead();
  void enqueue(Op op);
  void completions();
  std::shared_ptr<DataFile> file(const Key& k, uint64_t gen, bool create, uint32_t blockSize,
                                 uint64_t size);
  void forgetFile(const Key& k, uint64_t gen);
  std::unique_ptr<Store::Writer> takeWriter(Store::Writer* w);
  static bool makeDirs(const std::string& dir, std::string* err);
  uint64_t evict(uint64_t need);
  uint64_t currentOverhead();
  bool loadBlock(const Key& k, uint32_t idx, BlockRecord* r);
  void flushTouches();
  void trustFill(const Store::Writer& w);
  void dropCorrupt(const Key& k, const ObjectMeta& m, uint32_t idx, const BlockRecord& r,
                   const std::string& why);
  bool sendfileSegment(int fd, const Key& k, uint64_t gen, uint32_t idx, uint64_t blockAt,
                       uint64_t blockLen, uint64_t off, uint64_t len, evbuffer* out);
  void sweepSegments(bool all);
  // disk thread
  void run();
  void applyWrite(Op& op);
  void applyIndex(std::vector<Op*>& group);
};
}  // namespace slip::store
