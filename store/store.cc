// The block store. Invariants (see store/DESIGN.md):
//  - A block is listed in the index only after its bytes are in the data
//    file and fdatasync'ed: every listed block verifies after a crash.
//  - A listed block's bytes are only punched after the index commit that
//    unlisted it; a region is only rewritten while unlisted.
//  - The disk thread applies operations in the order the loop queued them.
//  - A block being read (pinned) or filled (not listed yet) is never evicted.
#include "store/store.h"

#include <dirent.h>
#include <event2/buffer.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <xxhash.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <list>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>

#include "store/index.h"

namespace slip::store {
namespace {

int64_t wallMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void logStore(conf::LogLevel l, std::string_view ev, const std::string& kv) {
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

/// An open data file, shared by the loop (reads) and the disk thread (writes).
struct DataFile {
  int fd = -1;
  std::string path;
  // Change detection for verified pages. The disk thread records the ctime
  // each of its own writes left; a ctime the loop sees that is not ours means
  // someone else wrote the file (a new epoch: verify again before serving).
  std::atomic<int64_t> ourCtimeNs{-1};
  std::atomic<int> writing{0};  // disk-thread writes or punches under way
  /// A ctime the loop sees was caused by us (or cannot be told apart from
  /// one of our writes under way).
  bool ours(int64_t ct) const { return writing.load() > 0 || ct == ourCtimeNs.load(); }
  int64_t seenCtimeNs = -1;  // loop only
  int64_t checkedNs = 0;     // loop only: when seenCtimeNs was last compared
  uint64_t epoch = 0;        // loop only
  ~DataFile() {
    if (fd >= 0) close(fd);
  }
};

int64_t ctimeOf(int fd) {
  struct stat st{};
  if (fstat(fd, &st) != 0) return -1;
  return static_cast<int64_t>(st.st_ctim.tv_sec) * 1'000'000'000 + st.st_ctim.tv_nsec;
}

/// Pages of one block verified in the current epoch of its data file: those
/// are served with sendfile without reading them again.
struct Verified {
  uint64_t epoch = 0;
  std::vector<bool> pages;
};
constexpr size_t kMaxVerified = 1 << 17;
constexpr size_t kMaxSegments = 1024;
constexpr int64_t kSegmentLifeMs = 1000;
constexpr int64_t kCtimeCheckNs = 50'000'000;  // how stale a file's change check may be

struct CachedSegment {
  evbuffer_file_segment* seg;
  uint64_t length;
  int64_t bornMs;
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
  int64_t atMs;
};

}  // namespace

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

namespace {

enum class OpKind { PutObject, DeleteObject, Write, Commit, Abandon, Evict, Drop, Punch, Touch, Stop };

struct Op {
  OpKind kind;
  Key key;
  uint64_t gen = 0;
  uint32_t idx = 0;
  ObjectMeta meta;
  Store::Writer* w = nullptr;
  uint64_t off = 0;
  std::string data;
  uint64_t request = 0;
  std::vector<Victim> victims;
  std::vector<TouchRec> touches;
  std::function<void(bool)> done;
  bool ok = true;
  bool punch = true;  // Abandon/Drop: give the bytes back now (false: later, or never)
};

}  // namespace

struct Store::Impl {
  Store* self = nullptr;
  conf::Cache cfg;
  event_base* base = nullptr;
  DirLock lock;  // declared before env: released after the index is closed
  Env env;

  // ---- loop thread
  MDB_txn* rtxn = nullptr;  // reset between uses
  uint64_t nextGen = 1;
  uint64_t used = 0;        // listed block bytes
  uint64_t reserved = 0;
  uint64_t objects = 0, blocks = 0;
  uint64_t evicted = 0, dropped = 0;
  std::map<Key, std::optional<ObjectMeta>> pendingObjects;  // queued, not yet committed
  std::set<BlockId> leaving;                                // being evicted or dropped
  std::map<BlockId, int> pins;
  std::multimap<BlockId, Store::Writer*> deferredAbandon;  // punched when unpinned
  std::multimap<BlockId, Op> deferredPunch;                // dropped blocks, punched when unpinned
  int64_t statvfsAtMs = 0;
  uint64_t diskAvail = UINT64_MAX;
  std::map<std::tuple<Key, uint64_t, uint32_t>, TouchRec> touches;
  std::map<std::tuple<Key, uint64_t, uint32_t>, Verified> verified;
  std::map<std::tuple<Key, uint64_t, uint32_t>, CachedSegment> segments;
  uint64_t epochs = 0;
  std::list<std::pair<std::pair<Key, uint64_t>, std::shared_ptr<DataFile>>> files;  // LRU
  std::vector<char> scratch;
  event* doneEv = nullptr;
  event* touchTimer = nullptr;
  std::function<void()> onDrained;
  size_t queued = 0;
  bool wantDrained = false;
  int64_t overheadAtMs = 0;
  uint64_t overhead = 0;

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
  uint64_t evict(uint64_t need);
  uint64_t currentOverhead();
  bool loadBlock(const Key& k, uint32_t idx, BlockRecord* r);
  void flushTouches();
  void dropCorrupt(const Key& k, const ObjectMeta& m, uint32_t idx, const BlockRecord& r,
                   const std::string& why);
  void trustFill(const Store::Writer& w);
  bool sendfileSegment(int fd, const Key& k, uint64_t gen, uint32_t idx, uint64_t blockAt,
                       uint64_t blockLen, uint64_t off, uint64_t len, evbuffer* out);
  void sweepSegments(bool all);
  // disk thread
  void run();
  void applyIndex(std::vector<Op*>& group);
};

// ------------------------------------------------------------------ open / close

Store::Store(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) { impl_->self = this; }

Store::Impl::~Impl() {
  if (rtxn) mdb_txn_abort(rtxn);
  if (doneEv) event_free(doneEv);
  if (touchTimer) event_free(touchTimer);
}

Store::~Store() {
  Impl& s = *impl_;
  s.sweepSegments(true);
  s.flushTouches();
  {
    std::lock_guard<std::mutex> g(s.mu);
    s.todo.push_back(Op{OpKind::Stop});
  }
  s.cv.notify_one();
  if (s.thread.joinable()) s.thread.join();
  for (auto& [id, w] : s.deferredAbandon) delete w;
  s.deferredAbandon.clear();
  // Completions that arrived after the loop stopped: their owners are gone.
  std::lock_guard<std::mutex> g(s.mu);
  for (auto& op : s.finished)
    if (op.kind == OpKind::Commit || op.kind == OpKind::Abandon) delete op.w;
  s.finished.clear();
}

namespace {

bool makeDirs(const std::string& dir, std::string* err) {
  std::string cur;
  for (size_t i = 0; i <= dir.size(); i++) {
    if (i == dir.size() || (dir[i] == '/' && i > 0)) {
      cur = dir.substr(0, i);
      if (mkdir(cur.c_str(), 0755) != 0 && errno != EEXIST) {
        *err = "mkdir " + cur + ": " + strerror(errno);
        return false;
      }
    }
  }
  return true;
}

}  // namespace

std::unique_ptr<Store> Store::open(const conf::Cache& cfg, event_base* base, std::string* err) {
  auto impl = std::make_unique<Impl>();
  Impl& s = *impl;
  s.cfg = cfg;
  s.base = base;
  // One gateway per directory, and nothing in this process maps an index
  // that a child could not walk.
  if (!makeDirs(cfg.dir, err) || !s.lock.acquire(cfg.dir, err)) return nullptr;
  if (auto warn = minFreeProblem(cfg))
    logStore(conf::LogLevel::Warn, "cache_off", "dir=" + conf::logValue(cfg.dir) + " detail=" + conf::logValue(*warn));
  uint64_t bad = 0;
  if (!checkIndex(cfg.dir, true, err, &bad)) return nullptr;
  if (!makeDirs(cfg.dir + "/index", err) || !makeDirs(cfg.dir + "/data", err)) return nullptr;
  if (!s.env.open(cfg.dir + "/index", false, err)) return nullptr;
  Reconciled rec;
  if (!reconcile(s.env, cfg.dir, &rec, err)) return nullptr;
  s.nextGen = rec.nextGen;
  s.used = rec.used;
  s.objects = rec.objects;
  s.blocks = rec.blocks;
  if (bad || rec.truncated || rec.inconsistent)
    logStore(conf::LogLevel::Warn, "cache_damage_repaired",
             "dir=" + conf::logValue(cfg.dir) + " unreadable_records=" + std::to_string(bad) +
                 " truncated_blocks=" + std::to_string(rec.truncated) +
                 " inconsistent_blocks=" + std::to_string(rec.inconsistent));
  s.doneEv = event_new(base, -1, EV_PERSIST, [](evutil_socket_t, short, void* arg) {
    static_cast<Impl*>(arg)->completions();
  }, &s);
  event_add(s.doneEv, nullptr);
  s.touchTimer = event_new(base, -1, EV_PERSIST, [](evutil_socket_t, short, void* arg) {
    static_cast<Impl*>(arg)->flushTouches();
  }, &s);
  timeval tv{kTouchFlushMs / 1000, 0};
  event_add(s.touchTimer, &tv);
  s.thread = std::thread([&s] { s.run(); });
  logStore(conf::LogLevel::Info, "cache_open",
           "dir=" + conf::logValue(cfg.dir) + " objects=" + std::to_string(s.objects) +
               " blocks=" + std::to_string(s.blocks) + " bytes=" + std::to_string(s.used) +
               " max_size=" + std::to_string(cfg.maxSize));
  return std::unique_ptr<Store>(new Store(std::move(impl)));
}

// ------------------------------------------------------------------ loop side

MDB_txn* Store::Impl::readTxn() {
  if (!rtxn) {
    if (mdb_txn_begin(env.get(), nullptr, MDB_RDONLY, &rtxn) != 0) rtxn = nullptr;
  } else if (mdb_txn_renew(rtxn) != 0) {
    mdb_txn_abort(rtxn);
    rtxn = nullptr;
    if (mdb_txn_begin(env.get(), nullptr, MDB_RDONLY, &rtxn) != 0) rtxn = nullptr;
  }
  return rtxn;
}

void Store::Impl::endRead() {
  if (rtxn) mdb_txn_reset(rtxn);
}

void Store::Impl::enqueue(Op op) {
  if (op.kind == OpKind::Write) queued += op.data.size();
  {
    std::lock_guard<std::mutex> g(mu);
    todo.push_back(std::move(op));
  }
  cv.notify_one();
}

void Store::Impl::completions() {
  std::vector<Op> done;
  {
    std::lock_guard<std::mutex> g(mu);
    done.swap(finished);
  }
  for (Op& op : done) {
    switch (op.kind) {
      case OpKind::Write:
        queued -= op.data.size();
        break;
      case OpKind::PutObject:
      case OpKind::DeleteObject: {
        auto it = pendingObjects.find(op.key);
        // Only the newest queued change for a key is kept as the overlay.
        if (it != pendingObjects.end()) {
          const auto& cur = it->second;
          bool same = op.kind == OpKind::PutObject ? (cur && cur->generation == op.meta.generation)
                                                   : (!cur);
          if (same) pendingObjects.erase(it);
        }
        if (op.kind == OpKind::DeleteObject && op.ok) {
          forgetFile(op.key, op.gen);
          // The listed bytes it deleted no longer count (evicted or dropped
          // ones were already subtracted when they were chosen).
          for (const Victim& v : op.victims) {
            if (leaving.count({v.key, v.idx})) continue;
            used -= std::min<uint64_t>(used, v.length);
            if (blocks) blocks--;
          }
        }
        break;
      }
      case OpKind::Commit:
        reserved -= std::min<uint64_t>(reserved, op.w->length);
        if (op.ok) {
          used += op.w->length;
          blocks++;
          trustFill(*op.w);
        }
        delete op.w;
        break;
      case OpKind::Abandon:
        delete op.w;
        break;
      case OpKind::Evict:
        for (const Victim& v : op.victims) leaving.erase({v.key, v.idx});
        break;
      case OpKind::Drop:
        for (const Victim& v : op.victims) leaving.erase({v.key, v.idx});
        break;
      default:
        break;
    }
    if (op.done) op.done(op.ok);
  }
  if (wantDrained && queued < Store::kQueueLimit / 2 && onDrained) {
    wantDrained = false;
    onDrained();
  }
}

std::shared_ptr<DataFile> Store::Impl::file(const Key& k, uint64_t gen, bool create,
                                            uint32_t blockSize, uint64_t size) {
  for (auto it = files.begin(); it != files.end(); ++it) {
    if (it->first.first == k && it->first.second == gen) {
      files.splice(files.begin(), files, it);
      return it->second;
    }
  }
  auto f = std::make_shared<DataFile>();
  f->path = dataPath(cfg.dir, k, gen);
  if (create) {
    std::string err;
    makeDirs(f->path.substr(0, f->path.rfind('/')), &err);
    f->fd = ::open(f->path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (f->fd >= 0) {
      std::string h = encodeFileHeader(k, gen, blockSize, size);
      // Full length up front (sparse): the sendfile segment covers every block.
      if (pwrite(f->fd, h.data(), h.size(), 0) != static_cast<ssize_t>(h.size()) ||
          ftruncate(f->fd, static_cast<off_t>(kFileHeader + size)) != 0) {
        close(f->fd);
        f->fd = -1;
      }
    }
  } else {
    f->fd = ::open(f->path.c_str(), O_RDWR | O_CLOEXEC);
  }
  if (f->fd < 0) {
    logStore(conf::LogLevel::Error, "cache_file_open_failed",
             "path=" + conf::logValue(f->path) + " error=" + conf::logValue(strerror(errno)));
    return nullptr;
  }
  f->epoch = ++epochs;  // nothing verified through this descriptor yet
  f->seenCtimeNs = ctimeOf(f->fd);
  files.emplace_front(std::make_pair(k, gen), f);
  if (files.size() > kMaxOpenFiles) files.pop_back();
  return f;
}

void Store::Impl::forgetFile(const Key& k, uint64_t gen) {
  for (auto it = files.begin(); it != files.end(); ++it) {
    if (it->first.first == k && it->first.second == gen) {
      files.erase(it);
      return;
    }
  }
}

namespace {
struct SegmentPin {
  Store* store;
  Key key;
  uint32_t idx;
};
}  // namespace

// Queues [off, off+len) of a block for sendfile. The block stays pinned (not
// evictable, and a drop or abandon does not punch it) until libevent has
// handed the bytes to the kernel and frees the segment. Segments are kept
// for a second and shared by every read of the block meanwhile, so a busy
// block costs one dup(), not one per request.
bool Store::Impl::sendfileSegment(int fd, const Key& k, uint64_t gen, uint32_t idx, uint64_t blockAt,
                                  uint64_t blockLen, uint64_t off, uint64_t len, evbuffer* out) {
  auto it = segments.find({k, gen, idx});
  if (it == segments.end() || it->second.length != blockLen) {
    if (it != segments.end()) {
      evbuffer_file_segment_free(it->second.seg);
      segments.erase(it);
    }
    int d = dup(fd);
    if (d < 0) return false;
    evbuffer_file_segment* seg = evbuffer_file_segment_new(
        d, static_cast<ev_off_t>(blockAt), static_cast<ev_off_t>(blockLen), EVBUF_FS_CLOSE_ON_FREE);
    if (!seg) {
      close(d);
      return false;
    }
    pins[{k, idx}]++;
    evbuffer_file_segment_add_cleanup_cb(
        seg,
        [](const evbuffer_file_segment*, int, void* arg) {
          auto* p = static_cast<SegmentPin*>(arg);
          p->store->unpin(p->key, p->idx);
          delete p;
        },
        new SegmentPin{self, k, idx});
    it = segments.emplace(std::make_tuple(k, gen, idx), CachedSegment{seg, blockLen, wallMs()}).first;
    if (segments.size() > kMaxSegments) sweepSegments(true);
    it = segments.find({k, gen, idx});
    if (it == segments.end()) {  // swept with the rest: add from a fresh one
      return sendfileSegment(fd, k, gen, idx, blockAt, blockLen, off, len, out);
    }
  }
  return evbuffer_add_file_segment(out, it->second.seg, static_cast<ev_off_t>(off),
                                   static_cast<ev_off_t>(len)) == 0;
}

// Drops the store's own reference to segments older than a second (or all):
// chains still queued keep theirs, and the pin goes with the last one.
void Store::Impl::sweepSegments(bool all) {
  int64_t now = wallMs();
  for (auto it = segments.begin(); it != segments.end();) {
    if (all || now - it->second.bornMs >= kSegmentLifeMs) {
      evbuffer_file_segment_free(it->second.seg);
      it = segments.erase(it);
    } else {
      ++it;
    }
  }
}

bool Store::Impl::loadBlock(const Key& k, uint32_t idx, BlockRecord* r) {
  MDB_txn* t = readTxn();
  if (!t) return false;
  BlockKey bk(k, idx);
  MDB_val kv = bk.val(), v;
  bool ok = mdb_get(t, env.blocks, &kv, &v) == 0 && decodeBlock(view(v), r);
  endRead();
  return ok;
}

std::optional<ObjectMeta> Store::lookup(const Key& k) {
  Impl& s = *impl_;
  if (auto it = s.pendingObjects.find(k); it != s.pendingObjects.end()) return it->second;
  MDB_txn* t = s.readTxn();
  if (!t) return std::nullopt;
  MDB_val kv{16, const_cast<uint8_t*>(k.b)}, v;
  std::optional<ObjectMeta> out;
  ObjectMeta m;
  if (mdb_get(t, s.env.objects, &kv, &v) == 0 && decodeObject(view(v), &m)) out = m;
  s.endRead();
  return out;
}

ObjectMeta Store::create(const Key& k, ObjectMeta meta) {
  Impl& s = *impl_;
  if (auto old = lookup(k)) invalidate(k, old->generation);
  meta.generation = s.nextGen++;
  s.file(k, meta.generation, true, meta.blockSize, meta.size);
  s.pendingObjects[k] = meta;
  s.objects++;
  Op op{OpKind::PutObject};
  op.key = k;
  op.gen = meta.generation;
  op.meta = meta;
  s.enqueue(std::move(op));
  return meta;
}

void Store::markValidated(const Key& k, const ObjectMeta& meta, int64_t nowMs) {
  Impl& s = *impl_;
  ObjectMeta m = meta;
  m.validatedMs = nowMs;
  s.pendingObjects[k] = m;
  Op op{OpKind::PutObject};
  op.key = k;
  op.gen = m.generation;
  op.meta = m;
  s.enqueue(std::move(op));
}

void Store::invalidate(const Key& k, uint64_t generation) {
  Impl& s = *impl_;
  auto cur = lookup(k);
  if (!cur || cur->generation != generation) return;
  s.pendingObjects[k] = std::nullopt;
  if (s.objects) s.objects--;
  Op op{OpKind::DeleteObject};
  op.key = k;
  op.gen = generation;
  // The disk thread reports what the listed blocks were worth.
  op.done = nullptr;
  s.enqueue(std::move(op));
  logStore(conf::LogLevel::Info, "cache_invalidate",
           "object=" + k.hex() + " generation=" + std::to_string(generation) +
               " path=" + conf::logValue(cur->path));
}

bool Store::present(const Key& k, uint64_t gen, uint32_t idx) {
  Impl& s = *impl_;
  if (s.leaving.count({k, idx})) return false;
  BlockRecord r;
  return s.loadBlock(k, idx, &r) && r.generation == gen;
}

uint32_t Store::countPresent(const Key& k, uint64_t gen, uint32_t first, uint32_t last) {
  Impl& s = *impl_;
  MDB_txn* t = s.readTxn();
  if (!t) return 0;
  uint32_t n = 0;
  {
    Cursor c(t, s.env.blocks);
    BlockKey bk(k, first);
    MDB_val kv = bk.val(), v;
    for (int rc = mdb_cursor_get(c.get(), &kv, &v, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(c.get(), &kv, &v, MDB_NEXT)) {
      if (kv.mv_size != 20 || memcmp(kv.mv_data, k.b, 16) != 0) break;
      uint32_t idx = BlockKey::index(kv);
      if (idx > last) break;
      BlockRecord r;
      if (decodeBlock(view(v), &r) && r.generation == gen && !s.leaving.count({k, idx})) n++;
    }
  }
  s.endRead();
  return n;
}

ReadResult Store::read(const Key& k, const ObjectMeta& m, uint32_t idx, uint64_t off, uint64_t len,
                       evbuffer* out) {
  Impl& s = *impl_;
  if (s.leaving.count({k, idx})) return ReadResult::Missing;
  BlockRecord r;
  if (!s.loadBlock(k, idx, &r) || r.generation != m.generation) return ReadResult::Missing;
  if (len == 0) return ReadResult::Ok;
  if (off + len > r.length) return ReadResult::IoError;
  auto f = s.file(k, m.generation, false, 0, 0);
  if (!f) return ReadResult::IoError;
  uint32_t p0 = static_cast<uint32_t>(off / kPageSize);
  uint32_t p1 = static_cast<uint32_t>((off + len - 1) / kPageSize);
  // Pages verified in this epoch go out with sendfile. A change of the
  // file's ctime that the disk thread did not cause starts a new epoch.
  int64_t nowNs = static_cast<int64_t>(wallMs()) * 1'000'000;
  if (nowNs - f->checkedNs >= kCtimeCheckNs) {
    int64_t ct = ctimeOf(f->fd);
    if (ct < 0) return ReadResult::IoError;
    if (ct != f->seenCtimeNs) {
      if (!f->ours(ct)) f->epoch = ++s.epochs;
      f->seenCtimeNs = ct;
    }
    f->checkedNs = nowNs;
  }
  if (s.verified.size() > kMaxVerified) s.verified.clear();
  Verified& v = s.verified[{k, m.generation, idx}];
  if (v.epoch != f->epoch || v.pages.size() != r.pages.size()) {
    v.epoch = f->epoch;
    v.pages.assign(r.pages.size(), false);
  }
  bool known = true;
  for (uint32_t p = p0; p <= p1 && known; p++) known = v.pages[p];
  if (known && s.sendfileSegment(f->fd, k, m.generation, idx, blockOffset(m, idx), r.length, off, len, out))
    return ReadResult::Ok;
  uint64_t from = static_cast<uint64_t>(p0) * kPageSize;
  uint64_t to = std::min<uint64_t>(r.length, static_cast<uint64_t>(p1 + 1) * kPageSize);
  if (s.scratch.size() < to - from) s.scratch.resize(to - from);
  ssize_t got = pread(f->fd, s.scratch.data(), to - from, static_cast<off_t>(blockOffset(m, idx) + from));
  if (got < 0) return ReadResult::IoError;
  // A listed block whose bytes are not all there (the data file was cut
  // short) is as corrupt as one whose bytes changed.
  if (got != static_cast<ssize_t>(to - from)) {
    s.dropCorrupt(k, m, idx, r, "data file ends at " + std::to_string(blockOffset(m, idx) + from + got));
    return ReadResult::Corrupt;
  }
  for (uint32_t p = p0; p <= p1; p++) {
    uint64_t pb = static_cast<uint64_t>(p) * kPageSize - from;
    uint64_t pl = std::min<uint64_t>(kPageSize, r.length - static_cast<uint64_t>(p) * kPageSize);
    if (pageHash(s.scratch.data() + pb, pl) != r.pages[p]) {
      s.dropCorrupt(k, m, idx, r, "page=" + std::to_string(p) + " checksum mismatch");
      return ReadResult::Corrupt;
    }
    v.pages[p] = true;
  }
  evbuffer_add(out, s.scratch.data() + (off - from), len);
  return ReadResult::Ok;
}

// Never served: unlists the block so the caller fetches it again.
void Store::Impl::dropCorrupt(const Key& k, const ObjectMeta& m, uint32_t idx, const BlockRecord& r,
                              const std::string& why) {
  verified.erase({k, m.generation, idx});
  dropped++;
  leaving.insert({k, idx});
  if (used >= r.length) used -= r.length;
  if (blocks) blocks--;
  Op op{OpKind::Drop};
  op.victims.push_back({k, m.generation, idx, r.length, m.blockSize});
  if (pins.count({k, idx})) {
    // Verified pages of it may be queued for sendfile to other clients:
    // unlist it now, punch once they are out (or never, if it is fetched
    // again first — beginBlock cancels this).
    op.punch = false;
    Op later{OpKind::Punch};
    later.key = k;
    later.gen = m.generation;
    later.off = blockOffset(m, idx);
    later.request = r.length;
    deferredPunch.emplace(BlockId{k, idx}, std::move(later));
  }
  enqueue(std::move(op));
  logStore(conf::LogLevel::Warn, "cache_block_corrupt",
           "object=" + k.hex() + " path=" + conf::logValue(m.path) + " block=" + std::to_string(idx) +
               " detail=" + conf::logValue(why));
}

void Store::touch(const Key& k, uint64_t gen, uint32_t idx, uint64_t requestId) {
  impl_->touches[{k, gen, idx}] = TouchRec{k, gen, idx, requestId, wallMs()};
}

// The page checksums of a block just listed were computed from the very
// bytes written: if nobody else touched the file since (its ctime is the one
// our last write left, in the same epoch), its pages count as verified.
void Store::Impl::trustFill(const Store::Writer& w) {
  DataFile& f = *w.file;
  int64_t ct = ctimeOf(f.fd);
  if (ct < 0 || !f.ours(ct) || f.epoch != w.epoch) return;
  f.seenCtimeNs = ct;
  if (verified.size() > kMaxVerified) verified.clear();
  Verified& v = verified[{w.key, w.gen, w.idx}];
  v.epoch = f.epoch;
  v.pages.assign(w.hashes.size(), true);
}

void Store::Impl::flushTouches() {
  sweepSegments(false);
  if (touches.empty()) return;
  Op op{OpKind::Touch};
  for (auto& [_, t] : touches) op.touches.push_back(t);
  touches.clear();
  enqueue(std::move(op));
}

void Store::pin(const Key& k, uint32_t idx) { impl_->pins[{k, idx}]++; }

void Store::unpin(const Key& k, uint32_t idx) {
  Impl& s = *impl_;
  auto it = s.pins.find({k, idx});
  if (it == s.pins.end() || --it->second > 0) return;
  s.pins.erase(it);
  auto range = s.deferredAbandon.equal_range({k, idx});
  for (auto d = range.first; d != range.second; ++d) {
    Op op{OpKind::Abandon};
    op.w = d->second;
    s.enqueue(std::move(op));
  }
  s.deferredAbandon.erase(range.first, range.second);
  auto punches = s.deferredPunch.equal_range({k, idx});
  for (auto d = punches.first; d != punches.second; ++d) s.enqueue(std::move(d->second));
  s.deferredPunch.erase(punches.first, punches.second);
}

uint64_t Store::Impl::currentOverhead() {
  int64_t now = wallMs();
  if (now - overheadAtMs > 1000) {
    overheadAtMs = now;
    struct stat st{};
    uint64_t idx = stat((cfg.dir + "/index/data.mdb").c_str(), &st) == 0
                       ? static_cast<uint64_t>(st.st_blocks) * 512
                       : 0;
    overhead = idx + objects * kFileHeader;
  }
  return overhead;
}

// Picks least valuable unpinned blocks until `need` bytes are freed.
uint64_t Store::Impl::evict(uint64_t need) {
  MDB_txn* t = readTxn();
  if (!t) return 0;
  Op op{OpKind::Evict};
  uint64_t freed = 0;
  {
    Cursor c(t, env.lru);
    MDB_val k, v;
    for (int rc = mdb_cursor_get(c.get(), &k, &v, MDB_FIRST); rc == 0 && freed < need;
         rc = mdb_cursor_get(c.get(), &k, &v, MDB_NEXT)) {
      LruValue lv;
      if (k.mv_size != 28 || !decodeLru(view(v), &lv)) continue;
      Key key = LruKey::object(k);
      uint32_t idx = LruKey::index(k);
      if (pins.count({key, idx}) || leaving.count({key, idx})) continue;
      if (touches.count({key, lv.generation, idx})) continue;  // just read: not least valuable
      op.victims.push_back({key, lv.generation, idx, lv.length, 0});
      freed += lv.length;
    }
  }
  endRead();
  if (op.victims.empty()) return 0;
  for (const Victim& vic : op.victims) leaving.insert({vic.key, vic.idx});
  used -= std::min(used, freed);
  blocks -= std::min<uint64_t>(blocks, op.victims.size());
  evicted += op.victims.size();
  logStore(conf::LogLevel::Debug, "cache_evict",
           "blocks=" + std::to_string(op.victims.size()) + " bytes=" + std::to_string(freed));
  enqueue(std::move(op));
  return freed;
}

bool Store::reserve(uint64_t bytes, bool force) {
  Impl& s = *impl_;
  uint64_t total = s.used + s.reserved + s.currentOverhead() + bytes;
  uint64_t need = total > static_cast<uint64_t>(s.cfg.maxSize) ? total - s.cfg.maxSize : 0;
  // Free space: asked of the file system at most every 250 ms, and counted
  // down by what was reserved since.
  int64_t now = wallMs();
  if (now - s.statvfsAtMs >= 250) {
    struct statvfs vfs{};
    if (statvfs(s.cfg.dir.c_str(), &vfs) == 0) {
      s.diskAvail = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
      s.statvfsAtMs = now;
    }
  }
  uint64_t floor = static_cast<uint64_t>(s.cfg.minFree) + bytes;
  if (s.diskAvail < floor) need = std::max(need, floor - s.diskAvail);
  if (need > 0) {
    uint64_t freed = s.evict(need);
    if (freed < need && !s.segments.empty()) {
      // Blocks pinned only by the store's own kept segments can go.
      s.sweepSegments(true);
      freed += s.evict(need - freed);
    }
    if (freed < need && !force) return false;
  }
  s.reserved += bytes;
  s.diskAvail -= std::min(s.diskAvail, bytes);
  return true;
}

void Store::release(uint64_t bytes) { impl_->reserved -= std::min(impl_->reserved, bytes); }

Store::Writer* Store::beginBlock(const Key& k, const ObjectMeta& m, uint32_t idx) {
  Impl& s = *impl_;
  // A new fill of this block rewrites the region: a punch still waiting for
  // sendfile readers of an abandoned earlier fill must not land on it.
  // Its Writer is freed in queue order (its writes may still be queued).
  auto range = s.deferredAbandon.equal_range({k, idx});
  for (auto d = range.first; d != range.second; ++d) {
    Op op{OpKind::Abandon};
    op.w = d->second;
    op.punch = false;
    s.enqueue(std::move(op));
  }
  s.deferredAbandon.erase(range.first, range.second);
  s.deferredPunch.erase({k, idx});
  auto f = s.file(k, m.generation, false, 0, 0);
  if (!f) return nullptr;
  auto* w = new Writer;
  w->key = k;
  w->gen = m.generation;
  w->idx = idx;
  w->length = static_cast<uint32_t>(m.blockLength(idx));
  w->fileOffset = blockOffset(m, idx);
  w->epoch = f->epoch;
  w->file = std::move(f);
  uint32_t pages = (w->length + kPageSize - 1) / kPageSize;
  w->states.assign(pages, nullptr);
  w->filled.assign(pages, 0);
  w->hashes.assign(pages, 0);
  return w;
}

void Store::write(Writer* w, uint64_t off, const char* data, size_t n,
                  std::function<void(bool)> done) {
  Op op{OpKind::Write};
  op.w = w;
  op.off = off;
  op.data.assign(data, n);
  op.done = std::move(done);
  impl_->enqueue(std::move(op));
  if (impl_->queued >= kQueueLimit) impl_->wantDrained = true;
}

void Store::commit(Writer* w, uint64_t requestId, std::function<void(bool)> done) {
  Op op{OpKind::Commit};
  op.w = w;
  op.key = w->key;
  op.gen = w->gen;
  op.idx = w->idx;
  op.request = requestId;
  op.done = std::move(done);
  impl_->enqueue(std::move(op));
}

void Store::abandon(Writer* w) {
  Impl& s = *impl_;
  s.reserved -= std::min<uint64_t>(s.reserved, w->length);
  if (s.pins.count({w->key, w->idx})) {
    // Bytes of it may still be queued for sendfile: punch once they are out.
    s.deferredAbandon.emplace(BlockId{w->key, w->idx}, w);
    return;
  }
  Op op{OpKind::Abandon};
  op.w = w;
  s.enqueue(std::move(op));
}

ReadResult Store::readRaw(Writer* w, uint64_t off, uint64_t len, evbuffer* out) {
  Impl& s = *impl_;
  if (off + len > w->length) return ReadResult::IoError;
  // Bytes this process wrote: no checksum to check yet, and no copy needed.
  if (s.sendfileSegment(w->file->fd, w->key, w->gen, w->idx, w->fileOffset, w->length, off, len, out))
    return ReadResult::Ok;
  if (s.scratch.size() < len) s.scratch.resize(len);
  ssize_t got = pread(w->file->fd, s.scratch.data(), len, static_cast<off_t>(w->fileOffset + off));
  if (got != static_cast<ssize_t>(len)) return ReadResult::IoError;
  evbuffer_add(out, s.scratch.data(), len);
  return ReadResult::Ok;
}

size_t Store::queuedBytes() const { return impl_->queued; }

void Store::setDrainedCallback(std::function<void()> cb) { impl_->onDrained = std::move(cb); }

ObjectListing Store::listObjects(const ObjectFilter& f) {
  MDB_txn* t = impl_->readTxn();
  if (!t) return {};
  ObjectListing out = queryObjects(t, impl_->env, f);
  impl_->endRead();
  return out;
}

std::optional<StoredObject> Store::storedObject(const Key& k) {
  std::optional<ObjectMeta> meta = lookup(k);
  if (!meta) return std::nullopt;
  StoredObject o;
  o.meta = std::move(*meta);
  MDB_txn* t = impl_->readTxn();
  if (!t) {
    o.present.assign(o.meta.blockCount(), false);
    return o;
  }
  queryPresent(t, impl_->env, k, &o);
  impl_->endRead();
  return o;
}

Usage Store::usage() const {
  const Impl& s = *impl_;
  Usage u;
  u.objects = s.objects;
  u.blocks = s.blocks;
  u.bytes = s.used;
  u.reserved = s.reserved;
  u.maxBytes = static_cast<uint64_t>(s.cfg.maxSize);
  u.evictedBlocks = s.evicted;
  u.droppedCorrupt = s.dropped;
  return u;
}

// ------------------------------------------------------------------ disk thread

void Store::Impl::run() {
  for (;;) {
    std::deque<Op> batch;
    {
      std::unique_lock<std::mutex> g(mu);
      cv.wait(g, [this] { return !todo.empty(); });
      batch.swap(todo);
    }
    bool stop = false;
    std::vector<Op*> group;  // index operations awaiting one transaction
    std::vector<Op*> doneOps;
    auto flush = [&] {
      if (!group.empty()) applyIndex(group);
      group.clear();
    };
    for (Op& op : batch) {
      switch (op.kind) {
        case OpKind::Stop:
          stop = true;
          break;
        case OpKind::Write: {
          Writer* w = op.w;
          // A punch queued before this write must land first.
          for (Op* g : group)
            if (g->kind == OpKind::Evict || g->kind == OpKind::Drop || g->kind == OpKind::DeleteObject ||
                g->kind == OpKind::Abandon || g->kind == OpKind::Punch) {
              flush();
              break;
            }
          w->file->writing++;
          ssize_t wr = pwrite(w->file->fd, op.data.data(), op.data.size(),
                              static_cast<off_t>(w->fileOffset + op.off));
          w->file->ourCtimeNs.store(ctimeOf(w->file->fd));
          w->file->writing--;
          if (wr != static_cast<ssize_t>(op.data.size())) {
            op.ok = false;
            w->failed = true;
          } else {
            uint64_t pos = op.off;
            const char* p = op.data.data();
            size_t left = op.data.size();
            while (left > 0) {
              uint32_t page = static_cast<uint32_t>(pos / kPageSize);
              uint32_t inPage = static_cast<uint32_t>(pos % kPageSize);
              uint32_t take = static_cast<uint32_t>(std::min<uint64_t>(left, w->pageLen(page) - inPage));
              if (inPage != w->filled[page]) {
                w->failed = true;  // pages are filled front to back by one piece
                break;
              }
              if (!w->states[page]) {
                w->states[page] = XXH3_createState();
                XXH3_64bits_reset(w->states[page]);
              }
              XXH3_64bits_update(w->states[page], p, take);
              w->filled[page] += take;
              if (w->filled[page] == w->pageLen(page)) {
                w->hashes[page] = XXH3_64bits_digest(w->states[page]);
                XXH3_freeState(w->states[page]);
                w->states[page] = nullptr;
              }
              pos += take;
              p += take;
              left -= take;
            }
          }
          doneOps.push_back(&op);
          break;
        }
        default:
          group.push_back(&op);
          doneOps.push_back(&op);
          break;
      }
    }
    flush();
    {
      std::lock_guard<std::mutex> g(mu);
      for (Op* op : doneOps) finished.push_back(std::move(*op));
    }
    event_active(doneEv, 0, 0);
    if (stop) return;
  }
}

// One index transaction for a run of operations: commits fdatasync their file
// first; punches and unlinks happen only after the transaction committed.
void Store::Impl::applyIndex(std::vector<Op*>& group) {
  std::set<DataFile*> synced;
  for (Op* op : group) {
    if (op->kind != OpKind::Commit) continue;
    Writer* w = op->w;
    bool complete = !w->failed;
    for (size_t p = 0; complete && p < w->filled.size(); p++)
      complete = w->filled[p] == w->pageLen(static_cast<uint32_t>(p));
    if (!complete) {
      op->ok = false;
      continue;
    }
    if (!synced.count(w->file.get())) {
      if (fdatasync(w->file->fd) != 0) {
        op->ok = false;
        continue;
      }
      synced.insert(w->file.get());
    }
  }
  std::vector<std::pair<std::shared_ptr<DataFile>, std::pair<uint64_t, uint64_t>>> punch;
  std::vector<std::string> unlinks;
  std::vector<std::pair<std::string, std::pair<uint64_t, uint64_t>>> punchByPath;
  Txn t(env.get(), false);
  if (!t.ok()) {
    for (Op* op : group) op->ok = false;
    logStore(conf::LogLevel::Error, "cache_index_txn_failed", "error=" + conf::logValue(mdb_strerror(t.error())));
    return;
  }
  MDB_txn* tx = t.get();
  auto delBlock = [&](const Key& k, uint32_t idx, uint64_t gen, BlockRecord* out) {
    BlockKey bk(k, idx);
    MDB_val kv = bk.val(), v;
    BlockRecord r;
    if (mdb_get(tx, env.blocks, &kv, &v) != 0 || !decodeBlock(view(v), &r) ||
        (gen && r.generation != gen))
      return false;
    LruKey lk(r.prio, k, idx);
    MDB_val lkv = lk.val();
    mdb_del(tx, env.lru, &lkv, nullptr);
    mdb_del(tx, env.blocks, &kv, nullptr);
    if (out) *out = r;
    return true;
  };
  int64_t now = wallMs();
  for (Op* op : group) {
    switch (op->kind) {
      case OpKind::PutObject: {
        std::string v = encodeObject(op->meta, now);
        MDB_val kv{16, op->key.b}, vv{v.size(), v.data()};
        mdb_put(tx, env.objects, &kv, &vv, 0);
        break;
      }
      case OpKind::DeleteObject: {
        MDB_val kv{16, op->key.b}, v;
        ObjectMeta m;
        if (mdb_get(tx, env.objects, &kv, &v) == 0 && decodeObject(view(v), &m) &&
            m.generation == op->gen)
          mdb_del(tx, env.objects, &kv, nullptr);
        // Every block record of this key (any generation) goes.
        std::vector<uint32_t> idxs;
        {
          Cursor c(tx, env.blocks);
          BlockKey bk(op->key, 0);
          MDB_val k = bk.val();
          for (int rc = mdb_cursor_get(c.get(), &k, &v, MDB_SET_RANGE); rc == 0;
               rc = mdb_cursor_get(c.get(), &k, &v, MDB_NEXT)) {
            if (k.mv_size != 20 || memcmp(k.mv_data, op->key.b, 16) != 0) break;
            idxs.push_back(BlockKey::index(k));
          }
        }
        for (uint32_t idx : idxs) {
          BlockRecord r;
          if (delBlock(op->key, idx, 0, &r) && r.generation == op->gen)
            op->victims.push_back({op->key, op->gen, idx, r.length, 0});
        }
        unlinks.push_back(dataPath(cfg.dir, op->key, op->gen));
        break;
      }
      case OpKind::Commit: {
        if (!op->ok) {
          punch.push_back({op->w->file, {op->w->fileOffset, op->w->length}});
          break;
        }
        Writer* w = op->w;
        MDB_val okv{16, w->key.b}, ov;
        ObjectMeta m;
        if (mdb_get(tx, env.objects, &okv, &ov) != 0 || !decodeObject(view(ov), &m) ||
            m.generation != w->gen) {
          op->ok = false;  // the object changed meanwhile: these bytes are stale
          punch.push_back({w->file, {w->fileOffset, w->length}});
          break;
        }
        BlockRecord r;
        r.generation = w->gen;
        r.length = w->length;
        r.pages = w->hashes;
        r.blockHash = XXH3_64bits(r.pages.data(), r.pages.size() * 8);
        r.storedMs = r.accessMs = now;
        r.hits = 1;
        r.lastRequest = op->request;
        r.prio = static_cast<uint64_t>(now);
        delBlock(w->key, w->idx, 0, nullptr);
        std::string v = encodeBlock(r);
        BlockKey bk(w->key, w->idx);
        MDB_val kv = bk.val(), vv{v.size(), v.data()};
        int rc = mdb_put(tx, env.blocks, &kv, &vv, 0);
        LruKey lk(r.prio, w->key, w->idx);
        std::string lv = encodeLru({w->gen, w->length});
        MDB_val lkv = lk.val(), lvv{lv.size(), lv.data()};
        if (rc == 0) rc = mdb_put(tx, env.lru, &lkv, &lvv, 0);
        if (rc != 0) op->ok = false;
        break;
      }
      case OpKind::Abandon:
        if (op->punch) punch.push_back({op->w->file, {op->w->fileOffset, op->w->length}});
        break;
      case OpKind::Evict:
      case OpKind::Drop:
        for (Victim& vic : op->victims) {
          BlockRecord r;
          if (delBlock(vic.key, vic.idx, vic.gen, &r)) {
            MDB_val okv{16, const_cast<uint8_t*>(vic.key.b)}, ov;
            ObjectMeta m;
            if (mdb_get(tx, env.objects, &okv, &ov) == 0 && decodeObject(view(ov), &m)) {
              vic.offset = blockOffset(m, vic.idx);
              vic.length = r.length;
              // Evicted blocks are never pinned; a dropped one that was is
              // punched later (Store::read queued that Punch).
              if (op->punch)
                punchByPath.push_back({dataPath(cfg.dir, vic.key, vic.gen), {vic.offset, r.length}});
            }
          }
        }
        break;
      case OpKind::Punch:
        punchByPath.push_back({dataPath(cfg.dir, op->key, op->gen), {op->off, op->request}});
        break;
      case OpKind::Touch:
        for (const TouchRec& tr : op->touches) {
          BlockKey bk(tr.key, tr.idx);
          MDB_val kv = bk.val(), v;
          BlockRecord r;
          if (mdb_get(tx, env.blocks, &kv, &v) != 0 || !decodeBlock(view(v), &r) ||
              r.generation != tr.gen)
            continue;
          LruKey oldKey(r.prio, tr.key, tr.idx);
          MDB_val okv = oldKey.val();
          mdb_del(tx, env.lru, &okv, nullptr);
          if (tr.request != r.lastRequest) r.hits++;
          r.lastRequest = tr.request;
          r.accessMs = tr.atMs;
          r.prio = static_cast<uint64_t>(tr.atMs + (r.hits >= 2 ? kReuseBonusMs : 0));
          std::string nv = encodeBlock(r);
          MDB_val nvv{nv.size(), nv.data()};
          mdb_put(tx, env.blocks, &kv, &nvv, 0);
          LruKey nk(r.prio, tr.key, tr.idx);
          std::string lv = encodeLru({r.generation, r.length});
          MDB_val nkv = nk.val(), lvv{lv.size(), lv.data()};
          mdb_put(tx, env.lru, &nkv, &lvv, 0);
        }
        break;
      default:
        break;
    }
  }
  int rc = t.commit();
  if (rc != 0) {
    logStore(conf::LogLevel::Error, "cache_index_commit_failed", "error=" + conf::logValue(mdb_strerror(rc)));
    for (Op* op : group) op->ok = false;
  }
  // Only now that the index no longer lists them may the bytes go.
  for (auto& [f, r] : punch) {
    f->writing++;
    fallocate(f->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(r.first),
              static_cast<off_t>(r.second));
    f->ourCtimeNs.store(ctimeOf(f->fd));
    f->writing--;
  }
  for (auto& [path, r] : punchByPath) {
    int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) continue;
    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(r.first),
              static_cast<off_t>(r.second));
    close(fd);
  }
  for (const auto& p : unlinks) unlink(p.c_str());
}

}  // namespace slip::store
