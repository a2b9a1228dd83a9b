// The block store: open and reconcile, objects, filling, eviction. Reads are
// in read.cc, the disk thread in disk.cc; their shared state in internal.h.
// Invariants (see store/DESIGN.md):
//  - A block is listed in the index only after its bytes are in the data
//    file and fdatasync'ed: every listed block verifies after a crash.
//  - A listed block's bytes are only punched after the index commit that
//    unlisted it; a region is only rewritten while unlisted.
//  - The disk thread applies operations in the order the loop queued them.
//  - A block being read (pinned) or filled (not listed yet) is never evicted.
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>

#include "store/internal.h"

namespace slip::store {

// ------------------------------------------------------------------ open / close

Store::Store(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) { impl_->self = this; }

Store::Impl::~Impl() {
  if (rtxn) mdb_txn_abort(rtxn);
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
  // Completions that arrived after the loop stopped: their owners are gone
  // (the writers they own go with them).
  std::lock_guard<std::mutex> g(s.mu);
  s.finished.clear();
}


std::unique_ptr<Store> Store::open(const conf::Cache& cfg, event_base* base, const Clock& clock,
                                  std::string* err) {
  auto impl = std::make_unique<Impl>();
  Impl& s = *impl;
  s.cfg = cfg;
  s.base = base;
  s.clock = &clock;
  // One gateway per directory, and nothing in this process maps an index
  // that a child could not walk.
  if (!Impl::makeDirs(cfg.dir, err) || !s.lock.acquire(cfg.dir, err)) return nullptr;
  if (auto warn = minFreeProblem(cfg)) {
    logStore(conf::LogLevel::Warn, "cache_off", "dir=" + conf::logValue(cfg.dir) + " detail=" + conf::logValue(*warn));
    s.off = true;
  }
  uint64_t bad = 0;
  if (!checkIndex(cfg.dir, true, clock, err, &bad)) return nullptr;
  if (!Impl::makeDirs(cfg.dir + "/index", err) || !Impl::makeDirs(cfg.dir + "/data", err)) return nullptr;
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
  s.doneEv.reset(event_new(base, -1, EV_PERSIST, [](evutil_socket_t, short, void* arg) {
    static_cast<Impl*>(arg)->completions();
  }, &s));
  event_add(s.doneEv.get(), nullptr);
  s.fromWorkersEv.reset(event_new(base, -1, 0, [](evutil_socket_t, short, void* arg) {
    static_cast<Impl*>(arg)->workerNotes();
  }, &s));
  s.touchTimer.reset(event_new(base, -1, EV_PERSIST, [](evutil_socket_t, short, void* arg) {
    static_cast<Impl*>(arg)->flushTouches();
  }, &s));
  timeval tv = msToTimeval(kTouchFlushMs);
  event_add(s.touchTimer.get(), &tv);
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
  if (op.kind == OpKind::Write) queued += op.size();
  op.atMs = clock->wallMs();
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
        queued -= op.size();
        break;
      case OpKind::PutObject:
      case OpKind::DeleteObject: {
        auto it = pendingObjects.find(op.key);
        // Only the newest queued change for a key is kept as the overlay.
        if (it != pendingObjects.end()) {
          const auto& cur = it->second;
          bool same = op.kind == OpKind::PutObject ? (cur && cur->generation == op.meta.generation)
                                                   : (!cur);
          if (same) {
            pendingObjects.erase(it);
            pendingKeys.remove(op.key);  // committed: the workers' read transactions see it now
          }
        }
        if (op.kind == OpKind::DeleteObject && op.ok) {
          forgetFile(op.key, op.gen);
          watches.forgetVersion(op.key, op.gen);
          // The listed bytes it deleted no longer count (evicted or dropped
          // ones were already subtracted when they were chosen).
          for (const Victim& v : op.victims) {
            if (pins.leaving({v.key, v.idx})) continue;
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
        break;
      case OpKind::Evict:
        for (const Victim& v : op.victims) {
          watches.forgetBlock(v.key, v.gen, v.idx);  // no reader holds it: it was claimed unpinned
          pins.stay({v.key, v.idx});
        }
        break;
      case OpKind::Drop:
        for (const Victim& v : op.victims) pins.stay({v.key, v.idx});
        break;
      default:
        break;
    }
    if (op.done) op.done(op.ok);
  }
  if (wantDrained && queued < Store::kQueueLimit / 2) {
    wantDrained = false;
    drained.notify();
  }
}

std::unique_ptr<Store::Writer> Store::Impl::takeWriter(Writer* w) {
  auto it = writers.find(w);
  if (it == writers.end()) return nullptr;
  std::unique_ptr<Writer> owned = std::move(it->second);
  writers.erase(it);
  return owned;
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
  s.setPending(k, meta);
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
  s.setPending(k, m);
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
  s.setPending(k, std::nullopt);
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
  if (s.pins.leaving({k, idx})) return false;
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
      if (decodeBlock(view(v), &r) && r.generation == gen && !s.pins.leaving({k, idx})) n++;
    }
  }
  s.endRead();
  return n;
}
void Store::touch(const Key& k, uint64_t gen, uint32_t idx, uint64_t requestId) {
  impl_->touches[{k, gen, idx}] = TouchRec{k, gen, idx, requestId, impl_->clock->wallMs()};
}

void Store::Impl::flushTouches() {
  sweepSegments(false);
  if (touches.empty()) return;
  Op op{OpKind::Touch};
  for (auto& [_, t] : touches) op.touches.push_back(t);
  touches.clear();
  enqueue(std::move(op));
}

void Store::pin(const Key& k, uint32_t idx) { impl_->pins.pin({k, idx}); }

void Store::unpin(const Key& k, uint32_t idx) {
  if (impl_->pins.unpin({k, idx})) impl_->afterLastPin({k, idx});
}

// The block's last pin went: what waited for it (a punch of a dropped
// block, an abandoned fill's writer) goes to the disk thread now.
void Store::Impl::afterLastPin(const BlockId& b) {
  Impl& s = *this;
  const Key& k = b.key;
  uint32_t idx = b.idx;
  auto range = s.deferredAbandon.equal_range({k, idx});
  for (auto d = range.first; d != range.second; ++d) {
    Op op{OpKind::Abandon};
    op.w = d->second.get();
    op.owned = std::move(d->second);
    s.enqueue(std::move(op));
  }
  s.deferredAbandon.erase(range.first, range.second);
  auto punches = s.deferredPunch.equal_range({k, idx});
  for (auto d = punches.first; d != punches.second; ++d) s.enqueue(std::move(d->second));
  s.deferredPunch.erase(punches.first, punches.second);
}

uint64_t Store::Impl::currentOverhead() {
  int64_t now = clock->monoMs();
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
      if (touches.count({key, lv.generation, idx})) continue;  // just read: not least valuable
      // Marks it leaving in the same step that finds it unpinned: a worker
      // thread cannot pin it in between.
      if (!pins.claim({key, idx})) continue;
      op.victims.push_back({key, lv.generation, idx, lv.length, 0});
      freed += lv.length;
    }
  }
  endRead();
  if (op.victims.empty()) return 0;
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
  int64_t now = s.clock->monoMs();
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
    op.w = d->second.get();
    op.owned = std::move(d->second);
    op.punch = false;
    s.enqueue(std::move(op));
  }
  s.deferredAbandon.erase(range.first, range.second);
  s.deferredPunch.erase({k, idx});
  auto f = s.file(k, m.generation, false, 0, 0);
  if (!f) return nullptr;
  auto owned = std::make_unique<Writer>();
  Writer* w = owned.get();
  w->key = k;
  w->gen = m.generation;
  w->idx = idx;
  w->length = static_cast<uint32_t>(m.blockLength(idx));
  w->fileOffset = blockOffset(m, idx);
  w->epoch = f->watch->epoch();
  w->file = std::move(f);
  uint32_t pages = (w->length + kPageSize - 1) / kPageSize;
  w->states.assign(pages, nullptr);
  w->filled.assign(pages, 0);
  w->hashes.assign(pages, 0);
  s.writers[w] = std::move(owned);
  return w;
}

void Store::write(Writer* w, uint64_t off, const char* data, size_t n, std::function<void(bool)> done,
                  std::shared_ptr<const void> hold) {
  Op op{OpKind::Write};
  op.w = w;
  op.off = off;
  if (hold) {
    op.hold = std::move(hold);
    op.ptr = data;
    op.len = n;
  } else {
    op.data.assign(data, n);
  }
  op.done = std::move(done);
  impl_->enqueue(std::move(op));
  if (impl_->queued >= kQueueLimit) impl_->wantDrained = true;
}

void Store::commit(Writer* w, uint64_t requestId, std::function<void(bool)> done) {
  Op op{OpKind::Commit};
  op.w = w;
  op.owned = impl_->takeWriter(w);
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
  if (s.pins.pinned({w->key, w->idx})) {
    // Bytes of it may still be queued for sendfile: punch once they are out.
    s.deferredAbandon.emplace(BlockId{w->key, w->idx}, s.takeWriter(w));
    return;
  }
  Op op{OpKind::Abandon};
  op.w = w;
  op.owned = s.takeWriter(w);
  s.enqueue(std::move(op));
}

size_t Store::queuedBytes() const { return impl_->queued; }

Subscription Store::onDrained(std::function<void()> fn) { return impl_->drained.subscribe(std::move(fn)); }

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

bool Store::off() const { return impl_->off; }

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
  u.pagesChecked = s.pagesChecked.load();
  return u;
}

// ------------------------------------------------------------------ disk thread

}  // namespace slip::store
