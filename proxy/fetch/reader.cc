// BlockReader: a client response's reads. Stored blocks are read verified
// (a corrupt one is dropped and fetched again); a block still being fetched
// is read from its memory buffer as bytes arrive (or, unbuffered, from its
// data file as the pieces' bytes land); anything else makes
// the reader wait, and the fill wakes it when the block progresses. The
// block being read is pinned (never evicted under the reader).
#include "proxy/fetch/fill.h"

namespace slip::proxy {
namespace {
/// A reader tells the planner about its progress at least this often.
constexpr uint64_t kKickStep = 256 * 1024;
}  // namespace

BlockReader::BlockReader(Fill& fill, Client* c) : client(c), fill_(fill) {}

BlockReader::~BlockReader() { close(); }

void BlockReader::open(const Request& req) { fill_.open(this, req); }

int BlockReader::upstreamConnections() const { return obj ? obj->running : 0; }

void BlockReader::close() {
  unpin();
  fill_.detach(this);
}

CacheStatus BlockReader::cacheStatus(const policy::ByteRange& r) {
  if (r.size() == 0 || !obj) return CacheStatus::Hit;
  uint32_t first = static_cast<uint32_t>(r.begin / meta_.blockSize);
  uint32_t last = static_cast<uint32_t>((r.end - 1) / meta_.blockSize);
  uint32_t have = fill_.store.countPresent(obj->key, meta_.generation, first, last);
  return have == last - first + 1 ? CacheStatus::Hit : have == 0 ? CacheStatus::Miss : CacheStatus::Partial;
}

void BlockReader::setRange(uint64_t begin, uint64_t stop) {
  pos = begin;
  start = begin;
  end = stop;
  fill_.kick();
}

void BlockReader::pin(uint32_t idx) {
  if (pinned_ && *pinned_ == idx) return;
  unpin();
  fill_.store.pin(obj->key, idx);
  pinned_ = idx;
  pinnedKey_ = obj->key;
}

void BlockReader::unpin() {
  if (pinned_) fill_.store.unpin(pinnedKey_, *pinned_);
  pinned_.reset();
}

BlockReader::Result BlockReader::skip(uint64_t at, uint64_t stop) {
  using K = Result::Kind;
  if (!obj) return {K::Failed, 0, policy::Reason::CacheFailed, "the object is gone"};
  const uint64_t bs = meta_.blockSize;
  const uint32_t idx = static_cast<uint32_t>(at / bs);
  const uint32_t oldIdx = static_cast<uint32_t>(pos / bs);
  Object* o = obj;
  if (!o->blocks.count(idx) && fill_.store.present(o->key, meta_.generation, idx)) {
    uint64_t n = std::min(stop, meta_.blockBegin(idx) + meta_.blockLength(idx)) - at;
    pos = at + n;
    if (static_cast<uint32_t>(pos / bs) != oldIdx) fill_.kick();  // the window moved
    return {K::Ok, n, policy::Reason::None, ""};
  }
  pos = at;
  fill_.waitFor(this, idx);
  return {};
}

BlockReader::Result BlockReader::read(uint64_t at, uint64_t max, evbuffer* out) {
  using K = Result::Kind;
  const uint64_t bs = meta_.blockSize;
  const uint32_t idx = static_cast<uint32_t>(at / bs);
  const uint64_t boff = at - static_cast<uint64_t>(idx) * bs;
  const uint64_t before = pos;
  // A corrupt or just-evicted block changes what there is to read: look again.
  for (int attempt = 0; attempt < 3 && obj; attempt++) {
    uint64_t n = std::min(max, meta_.blockLength(idx) - boff);
    pin(idx);
    Object* o = obj;
    auto it = o->blocks.find(idx);
    if (it != o->blocks.end()) {
      // Being fetched: what arrived (buffered) or was written (unbuffered).
      int64_t got = fill_.readInFlight(it->second.get(), at, n, out);
      if (got < 0) return {K::Failed, 0, policy::Reason::CacheFailed, "cache read failed"};
      if (got == 0) break;
      n = static_cast<uint64_t>(got);
      if (it->second->mem) fill_.ctx.stats.memoryReadBytes += n;
    } else if (fill_.store.present(o->key, meta_.generation, idx)) {
      store::ReadResult rr = fill_.store.read(o->key, meta_, idx, boff, n, out);
      if (rr == store::ReadResult::Corrupt) {
        fill_.ctx.stats.corruptBlocks++;  // dropped by the store: fetched again
        fill_.kick();
        continue;
      }
      if (rr == store::ReadResult::Missing) continue;  // evicted just now
      if (rr != store::ReadResult::Ok) return {K::Failed, 0, policy::Reason::CacheFailed, "cache read failed"};
      if (touched_ != idx) {
        fill_.store.touch(o->key, meta_.generation, idx, requestId);
        touched_ = idx;
      }
      fill_.ctx.stats.cacheHitBytes += n;
    } else {
      break;
    }
    pos = at + n;
    // The read-ahead window moved (it grows with what was read: planner rule 7).
    if (before / bs != pos / bs || before / kKickStep != pos / kKickStep) fill_.kick();
    return {K::Ok, n, policy::Reason::None, ""};
  }
  if (!obj) return {K::Failed, 0, policy::Reason::CacheFailed, "the object is gone"};
  pos = at;
  fill_.waitFor(this, idx);
  return {};
}

}  // namespace slip::proxy
