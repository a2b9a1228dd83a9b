// The disk thread: writes (with running page hashes), fdatasync and index
// commits in order, punches only after the commit that unlisted the bytes.
// It reads no clock: each operation carries the loop's time.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <thread>

#include "store/internal.h"

namespace slip::store {
namespace {

/// An operation that gives bytes back (punch or unlink) when it commits.
bool frees(const Op& op) {
  return op.kind == OpKind::Evict || op.kind == OpKind::Drop || op.kind == OpKind::DeleteObject ||
         op.kind == OpKind::Abandon || op.kind == OpKind::Punch;
}

/// Feeds bytes written at `off` of a block into its running page hashes.
/// Pages are filled front to back by one piece; anything else marks the
/// writer failed (its commit will not list the block).
void hashPages(Store::Writer* w, uint64_t off, const char* p, size_t left) {
  while (left > 0) {
    uint32_t page = static_cast<uint32_t>(off / kPageSize);
    uint32_t inPage = static_cast<uint32_t>(off % kPageSize);
    uint32_t take = static_cast<uint32_t>(std::min<uint64_t>(left, w->pageLen(page) - inPage));
    if (inPage != w->filled[page]) {
      w->failed = true;
      return;
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
    off += take;
    p += take;
    left -= take;
  }
}

/// What one index transaction leaves to do once it committed.
struct AfterCommit {
  std::vector<std::pair<std::shared_ptr<DataFile>, std::pair<uint64_t, uint64_t>>> punch;
  std::vector<std::pair<std::string, std::pair<uint64_t, uint64_t>>> punchByPath;
  std::vector<std::string> unlinks;
};

}  // namespace

void Store::Impl::applyWrite(Op& op) {
  Writer* w = op.w;
  FileWatch& fw = *w->file->watch;
  fw.writing++;
  ssize_t wr = pwrite(w->file->fd, op.bytes(), op.size(), static_cast<off_t>(w->fileOffset + op.off));
  fw.ourCtimeNs.store(ctimeOf(w->file->fd));
  fw.writing--;
  if (wr != static_cast<ssize_t>(op.size())) {
    op.ok = false;
    w->failed = true;
    return;
  }
  hashPages(w, op.off, op.bytes(), op.size());
  // Test hook ([cache] test_disk_rate, only with SLIPSTREAM_TEST_HOOKS=1):
  // a slow disk, simulated by taking size/rate seconds per write.
  if (cfg.testDiskRate > 0)
    std::this_thread::sleep_for(std::chrono::microseconds(
        static_cast<int64_t>(op.size() * 1'000'000 / static_cast<uint64_t>(cfg.testDiskRate))));
}

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
    auto flush = [&] {
      if (!group.empty()) applyIndex(group);
      group.clear();
    };
    for (Op& op : batch) {
      if (op.kind == OpKind::Stop) {
        stop = true;
      } else if (op.kind == OpKind::Write) {
        // A punch queued before this write must land first.
        if (std::any_of(group.begin(), group.end(), [](const Op* g) { return frees(*g); })) flush();
        applyWrite(op);
      } else {
        group.push_back(&op);
      }
    }
    flush();
    {
      std::lock_guard<std::mutex> g(mu);
      for (Op& op : batch)
        if (op.kind != OpKind::Stop) finished.push_back(std::move(op));
    }
    event_active(doneEv.get(), 0, 0);
    if (stop) return;
  }
}

namespace {

/// The index side of one transaction (disk thread only).
struct IndexTxn {
  Env& env;
  MDB_txn* tx;
  const std::string& dir;
  AfterCommit& after;

  /// Deletes block `idx` of `k` (of generation `gen`, 0 = any) with its LRU entry.
  bool delBlock(const Key& k, uint32_t idx, uint64_t gen, BlockRecord* out) {
    BlockKey bk(k, idx);
    MDB_val kv = bk.val(), v;
    BlockRecord r;
    if (mdb_get(tx, env.blocks, &kv, &v) != 0 || !decodeBlock(view(v), &r) || (gen && r.generation != gen))
      return false;
    LruKey lk(r.prio, k, idx);
    MDB_val lkv = lk.val();
    mdb_del(tx, env.lru, &lkv, nullptr);
    mdb_del(tx, env.blocks, &kv, nullptr);
    if (out) *out = r;
    return true;
  }

  std::optional<ObjectMeta> object(const Key& k) {
    MDB_val kv{16, const_cast<uint8_t*>(k.b)}, v;
    ObjectMeta m;
    if (mdb_get(tx, env.objects, &kv, &v) != 0 || !decodeObject(view(v), &m)) return std::nullopt;
    return m;
  }

  void putObject(Op& op) {
    std::string v = encodeObject(op.meta, op.atMs);
    MDB_val kv{16, op.key.b}, vv{v.size(), v.data()};
    mdb_put(tx, env.objects, &kv, &vv, 0);
  }

  void deleteObject(Op& op) {
    MDB_val kv{16, op.key.b}, v;
    if (auto m = object(op.key); m && m->generation == op.gen) mdb_del(tx, env.objects, &kv, nullptr);
    // Every block record of this key (any generation) goes.
    std::vector<uint32_t> idxs;
    {
      Cursor c(tx, env.blocks);
      BlockKey bk(op.key, 0);
      MDB_val k = bk.val();
      for (int rc = mdb_cursor_get(c.get(), &k, &v, MDB_SET_RANGE); rc == 0;
           rc = mdb_cursor_get(c.get(), &k, &v, MDB_NEXT)) {
        if (k.mv_size != 20 || memcmp(k.mv_data, op.key.b, 16) != 0) break;
        idxs.push_back(BlockKey::index(k));
      }
    }
    for (uint32_t idx : idxs) {
      BlockRecord r;
      if (delBlock(op.key, idx, 0, &r) && r.generation == op.gen)
        op.victims.push_back({op.key, op.gen, idx, r.length, 0});
    }
    after.unlinks.push_back(dataPath(dir, op.key, op.gen));
  }

  void commitBlock(Op& op) {
    Store::Writer* w = op.w;
    if (!op.ok) {
      after.punch.push_back({w->file, {w->fileOffset, w->length}});
      return;
    }
    auto m = object(w->key);
    if (!m || m->generation != w->gen) {
      op.ok = false;  // the object changed meanwhile: these bytes are stale
      after.punch.push_back({w->file, {w->fileOffset, w->length}});
      return;
    }
    BlockRecord r;
    r.generation = w->gen;
    r.length = w->length;
    r.pages = w->hashes;
    r.blockHash = XXH3_64bits(r.pages.data(), r.pages.size() * 8);
    r.storedMs = r.accessMs = op.atMs;
    r.hits = 1;
    r.lastRequest = op.request;
    r.prio = static_cast<uint64_t>(op.atMs);
    delBlock(w->key, w->idx, 0, nullptr);
    std::string v = encodeBlock(r);
    BlockKey bk(w->key, w->idx);
    MDB_val kv = bk.val(), vv{v.size(), v.data()};
    int rc = mdb_put(tx, env.blocks, &kv, &vv, 0);
    LruKey lk(r.prio, w->key, w->idx);
    std::string lv = encodeLru({w->gen, w->length});
    MDB_val lkv = lk.val(), lvv{lv.size(), lv.data()};
    if (rc == 0) rc = mdb_put(tx, env.lru, &lkv, &lvv, 0);
    if (rc != 0) op.ok = false;
  }

  void unlistVictims(Op& op) {
    for (Victim& vic : op.victims) {
      BlockRecord r;
      if (!delBlock(vic.key, vic.idx, vic.gen, &r)) continue;
      auto m = object(vic.key);
      if (!m) continue;
      vic.offset = blockOffset(*m, vic.idx);
      vic.length = r.length;
      // Evicted blocks are never pinned; a dropped one that was is punched
      // later (Store::read queued that Punch).
      if (op.punch) after.punchByPath.push_back({dataPath(dir, vic.key, vic.gen), {vic.offset, r.length}});
    }
  }

  void touch(const TouchRec& tr) {
    BlockKey bk(tr.key, tr.idx);
    MDB_val kv = bk.val(), v;
    BlockRecord r;
    if (mdb_get(tx, env.blocks, &kv, &v) != 0 || !decodeBlock(view(v), &r) || r.generation != tr.gen) return;
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

  void apply(Op& op) {
    switch (op.kind) {
      case OpKind::PutObject: putObject(op); break;
      case OpKind::DeleteObject: deleteObject(op); break;
      case OpKind::Commit: commitBlock(op); break;
      case OpKind::Abandon:
        if (op.punch) after.punch.push_back({op.w->file, {op.w->fileOffset, op.w->length}});
        break;
      case OpKind::Evict:
      case OpKind::Drop: unlistVictims(op); break;
      case OpKind::Punch: after.punchByPath.push_back({dataPath(dir, op.key, op.gen), {op.off, op.request}}); break;
      case OpKind::Touch:
        for (const TouchRec& tr : op.touches) touch(tr);
        break;
      default: break;
    }
  }
};

/// Commits fdatasync their file (once per file) before the transaction
/// lists them; an incomplete block is never listed.
void syncCommits(std::vector<Op*>& group) {
  std::set<DataFile*> synced;
  for (Op* op : group) {
    if (op->kind != OpKind::Commit) continue;
    Store::Writer* w = op->w;
    bool complete = !w->failed;
    for (size_t p = 0; complete && p < w->filled.size(); p++)
      complete = w->filled[p] == w->pageLen(static_cast<uint32_t>(p));
    if (!complete) {
      op->ok = false;
      continue;
    }
    if (synced.count(w->file.get())) continue;
    if (fdatasync(w->file->fd) != 0) {
      op->ok = false;
      continue;
    }
    synced.insert(w->file.get());
  }
}

void punchAfter(const AfterCommit& after) {
  for (auto& [f, r] : after.punch) {
    f->watch->writing++;
    fallocate(f->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(r.first),
              static_cast<off_t>(r.second));
    f->watch->ourCtimeNs.store(ctimeOf(f->fd));
    f->watch->writing--;
  }
  for (auto& [path, r] : after.punchByPath) {
    int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) continue;
    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(r.first),
              static_cast<off_t>(r.second));
    close(fd);
  }
  for (const auto& p : after.unlinks) unlink(p.c_str());
}

}  // namespace

// One index transaction for a run of operations: commits fdatasync their file
// first; punches and unlinks happen only after the transaction committed.
void Store::Impl::applyIndex(std::vector<Op*>& group) {
  syncCommits(group);
  Txn t(env.get(), false);
  if (!t.ok()) {
    for (Op* op : group) op->ok = false;
    logStore(conf::LogLevel::Error, "cache_index_txn_failed", "error=" + conf::logValue(mdb_strerror(t.error())));
    return;
  }
  AfterCommit after;
  IndexTxn itx{env, t.get(), cfg.dir, after};
  for (Op* op : group) itx.apply(*op);
  int rc = t.commit();
  if (rc != 0) {
    logStore(conf::LogLevel::Error, "cache_index_commit_failed", "error=" + conf::logValue(mdb_strerror(rc)));
    for (Op* op : group) op->ok = false;
  }
  // Only now that the index no longer lists them may the bytes go.
  punchAfter(after);
}

}  // namespace slip::store
