// Reads: data files kept open, sendfile segments shared by the readers of a
// block, and page verification (a page is hashed once per epoch of its file,
// then served with sendfile).
#include <event2/buffer.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "store/internal.h"

namespace slip::store {

bool Store::Impl::makeDirs(const std::string& dir, std::string* err) {
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
  // The version's verified pages, shared with the workers; a descriptor just
  // opened compares the file's ctime at once.
  f->watch = watches.get(k, gen);
  if (!f->watch->check(f->fd, clock->monoNs(), true)) return nullptr;
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
    pins.pin({k, idx});
    evbuffer_file_segment_add_cleanup_cb(
        seg,
        [](const evbuffer_file_segment*, int, void* arg) {
          std::unique_ptr<SegmentPin> pin(static_cast<SegmentPin*>(arg));  // libevent hands ownership back
          pin->store->unpin(pin->key, pin->idx);
        },
        std::make_unique<SegmentPin>(SegmentPin{self, k, idx}).release());
    it = segments.emplace(std::make_tuple(k, gen, idx), CachedSegment{seg, blockLen, clock->monoMs()}).first;
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
  int64_t now = clock->monoMs();
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
ReadResult Store::read(const Key& k, const ObjectMeta& m, uint32_t idx, uint64_t off, uint64_t len,
                       evbuffer* out) {
  Impl& s = *impl_;
  if (s.pins.leaving({k, idx})) return ReadResult::Missing;
  BlockRecord r;
  if (!s.loadBlock(k, idx, &r) || r.generation != m.generation) return ReadResult::Missing;
  if (len == 0) return ReadResult::Ok;
  if (off + len > r.length) return ReadResult::IoError;
  auto f = s.file(k, m.generation, false, 0, 0);
  if (!f) return ReadResult::IoError;
  uint32_t p0 = static_cast<uint32_t>(off / kPageSize);
  uint32_t p1 = static_cast<uint32_t>((off + len - 1) / kPageSize);
  // Pages verified in this epoch (by any thread) go out with sendfile. A
  // change of the file's ctime that the disk thread did not cause starts a
  // new epoch (FileWatch).
  FileWatch& fw = *f->watch;
  if (!fw.check(f->fd, s.clock->monoNs(), false)) return ReadResult::IoError;
  FileWatch::Look v = fw.look(idx, r.pages.size(), p0, p1);
  if (v.verified && s.sendfileSegment(f->fd, k, m.generation, idx, blockOffset(m, idx), r.length, off, len, out))
    return ReadResult::Ok;
  uint64_t from = static_cast<uint64_t>(p0) * kPageSize;
  uint64_t to = std::min<uint64_t>(r.length, static_cast<uint64_t>(p1 + 1) * kPageSize);
  if (s.scratch.size() < to - from) s.scratch.resize(to - from);
  ssize_t got = pread(f->fd, s.scratch.data(), to - from, static_cast<off_t>(blockOffset(m, idx) + from));
  if (got < 0) return ReadResult::IoError;
  s.pagesChecked += p1 - p0 + 1;
  // A listed block whose bytes are not all there (the data file was cut
  // short) is as corrupt as one whose bytes changed. Neither is served: the
  // caller fetches it again.
  if (got != static_cast<ssize_t>(to - from)) {
    s.dropCorrupt(k, m, idx, r, "data file ends at " + std::to_string(blockOffset(m, idx) + from + got));
    return ReadResult::Corrupt;
  }
  if (auto bad = firstBadPage(r, s.scratch.data(), p0, p1)) {
    s.dropCorrupt(k, m, idx, r, "page=" + std::to_string(*bad) + " checksum mismatch");
    return ReadResult::Corrupt;
  }
  fw.mark(idx, v.ticket, p0, p1);
  evbuffer_add(out, s.scratch.data() + (off - from), len);
  return ReadResult::Ok;
}

void Store::Impl::dropCorrupt(const Key& k, const ObjectMeta& m, uint32_t idx, const BlockRecord& r,
                              const std::string& why) {
  watches.forgetBlock(k, m.generation, idx);
  dropped++;
  bool pinned = pins.leaveAndPinned({k, idx});
  if (used >= r.length) used -= r.length;
  if (blocks) blocks--;
  Op op{OpKind::Drop};
  op.victims.push_back({k, m.generation, idx, r.length, m.blockSize});
  if (pinned) {
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

// The page checksums of a block just listed were computed from the very
// bytes written: if nobody else touched the file since (its ctime is the one
// our last write left, in the same epoch), its pages count as verified.
void Store::Impl::trustFill(const Store::Writer& w) {
  DataFile& f = *w.file;
  f.watch->trustFill(w.idx, w.hashes.size(), w.epoch, ctimeOf(f.fd));
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


}  // namespace slip::store
