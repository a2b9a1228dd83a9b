// The read path of a front-end worker thread (issue 14): reads of listed
// blocks only, on the worker's own LMDB read transaction, descriptors and
// sendfile segments; the record of verified pages (FileWatch) is one per
// object version, shared with the loop and the other workers. The write side (fills, commits,
// eviction, drops) stays on the loop and the disk thread; what a worker
// shares with them is the pin table (store/internal.h) and two notes it
// leaves for the loop (a last pin let go, a page that failed its checksum).
//
// Why a read here is safe while the loop evicts and the disk thread punches:
//  - the block is pinned (PinTable::pinIfStaying, refused while it is
//    leaving) *before* its listing is read, in a read transaction begun
//    after the pin. Eviction only takes unpinned blocks (PinTable::claim),
//    and a block stays "leaving" until the commit that unlisted it is done,
//    so the listing this read sees is either before the eviction was chosen
//    (then the block is ours until we unpin) or after its commit (missing).
//  - a drop of a pinned block (a bad checksum found by anyone) unlists it
//    at once and punches it only after its last pin (Impl::afterLastPin);
//  - a deleted version's file is unlinked, never punched: a descriptor
//    opened before keeps its bytes.
//  - sendfile segments hold their own pin until libevent lets go of them.
#include <event2/buffer.h>
#include <fcntl.h>
#include <unistd.h>

#include "store/internal.h"

namespace slip::store {

namespace {

struct WorkerSegmentPin {
  Store::Impl* store;
  BlockId block;
};

struct WarmFile {
  int fd = -1;
  std::shared_ptr<FileWatch> watch;  // the version's verified pages, shared with the loop and other workers
  ~WarmFile() {
    if (fd >= 0) close(fd);
  }
};

constexpr size_t kWarmFiles = 64;

}  // namespace

struct WarmReader::State {
  Store::Impl* s = nullptr;
  MDB_txn* txn = nullptr;
  std::list<std::pair<std::pair<Key, uint64_t>, std::shared_ptr<WarmFile>>> files;  // LRU
  std::map<std::tuple<Key, uint64_t, uint32_t>, CachedSegment> segments;
  std::vector<char> scratch;

  MDB_txn* begin() {
    if (!txn) {
      if (mdb_txn_begin(s->env.get(), nullptr, MDB_RDONLY, &txn) != 0) txn = nullptr;
    } else if (mdb_txn_renew(txn) != 0) {
      mdb_txn_abort(txn);
      txn = nullptr;
      if (mdb_txn_begin(s->env.get(), nullptr, MDB_RDONLY, &txn) != 0) txn = nullptr;
    }
    return txn;
  }
  void end() {
    if (txn) mdb_txn_reset(txn);
  }
  bool loadBlock(const Key& k, uint32_t idx, BlockRecord* r) {
    MDB_txn* t = begin();
    if (!t) return false;
    BlockKey bk(k, idx);
    MDB_val kv = bk.val(), v;
    bool ok = mdb_get(t, s->env.blocks, &kv, &v) == 0 && decodeBlock(view(v), r);
    end();
    return ok;
  }
  std::shared_ptr<WarmFile> file(const Key& k, uint64_t gen, int64_t nowNs);
  bool segment(const std::shared_ptr<WarmFile>& f, const Key& k, uint64_t gen, uint32_t idx, uint64_t blockAt,
               uint64_t blockLen, uint64_t off, uint64_t len, evbuffer* out, int64_t nowMs);
  void dropSegments(bool all, int64_t nowMs) {
    for (auto it = segments.begin(); it != segments.end();) {
      if (all || nowMs - it->second.bornMs >= kSegmentLifeMs) {
        evbuffer_file_segment_free(it->second.seg);
        it = segments.erase(it);
      } else {
        ++it;
      }
    }
  }
};

std::shared_ptr<WarmFile> WarmReader::State::file(const Key& k, uint64_t gen, int64_t nowNs) {
  std::shared_ptr<WarmFile> f;
  for (auto it = files.begin(); it != files.end(); ++it) {
    if (it->first.first == k && it->first.second == gen) {
      files.splice(files.begin(), files, it);
      f = it->second;
      break;
    }
  }
  if (!f) {
    f = std::make_shared<WarmFile>();
    f->fd = ::open(dataPath(s->cfg.dir, k, gen).c_str(), O_RDONLY | O_CLOEXEC);
    if (f->fd < 0) return nullptr;  // deleted meanwhile: the caller hands over to the loop
    f->watch = s->watches.get(k, gen);
    if (!f->watch->check(f->fd, nowNs, true)) return nullptr;
    files.emplace_front(std::make_pair(k, gen), f);
    if (files.size() > kWarmFiles) files.pop_back();
    return f;
  }
  // The same change detection as the loop's (the disk thread's own writes
  // are told apart by the ctime it records in the shared watch).
  if (!f->watch->check(f->fd, nowNs, false)) return nullptr;
  return f;
}

bool WarmReader::State::segment(const std::shared_ptr<WarmFile>& f, const Key& k, uint64_t gen, uint32_t idx,
                                uint64_t blockAt, uint64_t blockLen, uint64_t off, uint64_t len, evbuffer* out,
                                int64_t nowMs) {
  auto it = segments.find({k, gen, idx});
  if (it != segments.end() && it->second.length != blockLen) {
    evbuffer_file_segment_free(it->second.seg);
    segments.erase(it);
    it = segments.end();
  }
  if (it == segments.end()) {
    int d = dup(f->fd);
    if (d < 0) return false;
    evbuffer_file_segment* seg = evbuffer_file_segment_new(d, static_cast<ev_off_t>(blockAt),
                                                           static_cast<ev_off_t>(blockLen), EVBUF_FS_CLOSE_ON_FREE);
    if (!seg) {
      close(d);
      return false;
    }
    s->pins.pin({k, idx});  // the caller holds a pin: the block is not leaving
    evbuffer_file_segment_add_cleanup_cb(
        seg,
        [](const evbuffer_file_segment*, int, void* arg) {
          std::unique_ptr<WorkerSegmentPin> pin(static_cast<WorkerSegmentPin*>(arg));
          pin->store->unpinFromWorker(pin->block);
        },
        std::make_unique<WorkerSegmentPin>(WorkerSegmentPin{s, {k, idx}}).release());
    if (segments.size() >= kMaxSegments) dropSegments(true, nowMs);
    it = segments.emplace(std::make_tuple(k, gen, idx), CachedSegment{seg, blockLen, nowMs}).first;
  }
  return evbuffer_add_file_segment(out, it->second.seg, static_cast<ev_off_t>(off), static_cast<ev_off_t>(len)) ==
         0;
}

WarmReader::WarmReader(std::unique_ptr<State> s) : s_(std::move(s)) {}

WarmReader::~WarmReader() {
  s_->dropSegments(true, 0);
  if (s_->txn) mdb_txn_abort(s_->txn);
}

std::unique_ptr<WarmReader> Store::warmReader() {
  auto st = std::make_unique<WarmReader::State>();
  st->s = impl_.get();
  return std::unique_ptr<WarmReader>(new WarmReader(std::move(st)));
}

std::optional<ObjectMeta> WarmReader::lookup(const Key& k) {
  if (s_->s->pendingKeys.contains(k)) return std::nullopt;  // a change queued on the loop: it answers
  MDB_txn* t = s_->begin();
  if (!t) return std::nullopt;
  MDB_val kv{16, const_cast<uint8_t*>(k.b)}, v;
  std::optional<ObjectMeta> out;
  ObjectMeta m;
  if (mdb_get(t, s_->s->env.objects, &kv, &v) == 0 && decodeObject(view(v), &m)) out = m;
  s_->end();
  return out;
}

bool WarmReader::allPresent(const Key& k, uint64_t gen, uint32_t first, uint32_t last) {
  MDB_txn* t = s_->begin();
  if (!t) return false;
  uint32_t n = 0;
  {
    Cursor c(t, s_->s->env.blocks);
    BlockKey bk(k, first);
    MDB_val kv = bk.val(), v;
    for (int rc = mdb_cursor_get(c.get(), &kv, &v, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(c.get(), &kv, &v, MDB_NEXT)) {
      if (kv.mv_size != 20 || memcmp(kv.mv_data, k.b, 16) != 0) break;
      uint32_t idx = BlockKey::index(kv);
      if (idx > last) break;
      BlockRecord r;
      if (!decodeBlock(view(v), &r) || r.generation != gen || s_->s->pins.leaving({k, idx})) break;
      n++;
    }
  }
  s_->end();
  return n == last - first + 1;
}

bool WarmReader::verified(const Key& k, const ObjectMeta& m, uint64_t begin, uint64_t end) {
  if (begin >= end) return true;
  auto f = s_->file(k, m.generation, s_->s->clock->monoNs());
  if (!f) return false;
  for (uint64_t pos = begin; pos < end;) {
    uint32_t idx = static_cast<uint32_t>(pos / m.blockSize);
    uint64_t off = pos - m.blockBegin(idx), len = std::min<uint64_t>(end - pos, m.blockLength(idx) - off);
    size_t pages = static_cast<size_t>((m.blockLength(idx) + kPageSize - 1) / kPageSize);
    uint32_t p0 = static_cast<uint32_t>(off / kPageSize), p1 = static_cast<uint32_t>((off + len - 1) / kPageSize);
    if (!f->watch->look(idx, pages, p0, p1).verified) return false;
    pos += len;
  }
  return true;
}

void WarmReader::sweep(int64_t monoMs) { s_->dropSegments(false, monoMs); }

ReadResult WarmReader::read(const Key& k, const ObjectMeta& m, uint32_t idx, uint64_t off, uint64_t len,
                            evbuffer* out) {
  State& w = *s_;
  BlockId id{k, idx};
  if (!w.s->pins.pinIfStaying(id)) return ReadResult::Missing;
  struct Unpin {
    State& w;
    BlockId id;
    ~Unpin() { w.s->unpinFromWorker(id); }
  } unpin{w, id};
  BlockRecord r;  // read after the pin: see the top of this file
  if (!w.loadBlock(k, idx, &r) || r.generation != m.generation) return ReadResult::Missing;
  if (len == 0) return ReadResult::Ok;
  if (off + len > r.length) return ReadResult::IoError;
  int64_t nowNs = w.s->clock->monoNs();
  auto f = w.file(k, m.generation, nowNs);
  if (!f) return ReadResult::Missing;
  uint32_t p0 = static_cast<uint32_t>(off / kPageSize);
  uint32_t p1 = static_cast<uint32_t>((off + len - 1) / kPageSize);
  FileWatch& fw = *f->watch;
  FileWatch::Look v = fw.look(idx, r.pages.size(), p0, p1);  // verified by any thread
  if (v.verified && w.segment(f, k, m.generation, idx, blockOffset(m, idx), r.length, off, len, out, nowNs / 1'000'000))
    return ReadResult::Ok;
  uint64_t from = static_cast<uint64_t>(p0) * kPageSize;
  uint64_t to = std::min<uint64_t>(r.length, static_cast<uint64_t>(p1 + 1) * kPageSize);
  if (w.scratch.size() < to - from) w.scratch.resize(to - from);
  ssize_t got = pread(f->fd, w.scratch.data(), to - from, static_cast<off_t>(blockOffset(m, idx) + from));
  if (got < 0) return ReadResult::IoError;
  w.s->pagesChecked += p1 - p0 + 1;
  if (got != static_cast<ssize_t>(to - from) || firstBadPage(r, w.scratch.data(), p0, p1)) {
    fw.forget(idx);  // never served; the loop drops the block
    w.s->reportCorrupt(k, m.generation, idx);  // the loop checks it again and drops it
    return ReadResult::Corrupt;
  }
  fw.mark(idx, v.ticket, p0, p1);
  evbuffer_add(out, w.scratch.data() + (off - from), len);
  return ReadResult::Ok;
}

// ------------------------------------------------------------------ loop side of the notes

void Store::Impl::unpinFromWorker(const BlockId& b) {
  if (!pins.unpin(b)) return;
  {
    std::lock_guard<std::mutex> g(fromWorkersMu);
    workerUnpinned.push_back(b);
  }
  event_active(fromWorkersEv.get(), 0, 0);  // thread-safe (evthread_use_pthreads)
}

void Store::Impl::reportCorrupt(const Key& k, uint64_t gen, uint32_t idx) {
  {
    std::lock_guard<std::mutex> g(fromWorkersMu);
    workerCorrupt.emplace_back(k, gen, idx);
  }
  event_active(fromWorkersEv.get(), 0, 0);
}

void Store::Impl::workerNotes() {
  std::vector<BlockId> unpinned;
  std::vector<std::tuple<Key, uint64_t, uint32_t>> corrupt;
  {
    std::lock_guard<std::mutex> g(fromWorkersMu);
    unpinned.swap(workerUnpinned);
    corrupt.swap(workerCorrupt);
  }
  for (const BlockId& b : unpinned)
    if (!pins.pinned(b)) afterLastPin(b);
  // A worker found a page that does not match its checksum: the loop reads
  // the block's listing again and drops it (it is fetched again when read).
  for (const auto& [k, gen, idx] : corrupt) {
    std::optional<ObjectMeta> m = self->lookup(k);
    BlockRecord r;
    if (!m || m->generation != gen || pins.leaving({k, idx}) || !loadBlock(k, idx, &r) || r.generation != gen)
      continue;
    dropCorrupt(k, *m, idx, r, "a worker thread read a page that does not match its checksum");
  }
}

}  // namespace slip::store
