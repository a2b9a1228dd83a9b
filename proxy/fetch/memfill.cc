// Memory-first fills (issue 14): block buffers, the mode of a new block,
// reads of blocks in flight, and freeing MemoryOnly blocks nobody needs.
// The decisions themselves are memory.h's pure functions.
#include <sys/mman.h>

#include <cstring>

#include "proxy/fetch/fill.h"

namespace slip::proxy {

BlockBuffer::BlockBuffer(size_t n, std::shared_ptr<std::atomic<uint64_t>> counter) : used(std::move(counter)) {
  void* p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return;
  bytes = static_cast<char*>(p);
  length = n;
  *used += n;
}

BlockBuffer::~BlockBuffer() {
  if (!bytes) return;
  munmap(bytes, length);
  *used -= length;
}

fillmem::BlockMode Fill::blockMode(Object* o, uint32_t idx, bool urgent, bool stream) {
  fillmem::BlockAsk a;
  a.length = o->meta.blockLength(idx);
  a.urgent = urgent;
  a.stream = stream;
  auto playing = [](const BlockReader* r) { return r->priority == plan::Priority::Playing; };
  a.playing = std::any_of(o->readers.begin(), o->readers.end(), playing) ||
              std::any_of(o->opening.begin(), o->opening.end(), playing);
  a.limit = static_cast<uint64_t>(ctx.cfg().cache.fillMemory);
  a.used = memUsed_->load();
  // Blocks that only wait for the disk count against `caching`, not the object.
  for (auto& [i, b] : o->blocks)
    if (b->mem && (b->uncached || !b->arrived())) a.objectUsed += b->mem->length;
  // The disk's backlog: bytes of cached blocks that arrived and are not
  // listed yet (queued, being written, or waiting for the sync).
  auto caching = [&a](const Object& obj) {
    for (auto& [i, b] : obj.blocks)
      if (b->mem && !b->uncached)
        for (auto& p : b->pieces) a.caching += p->received;
  };
  for (auto& [k, obj] : objects_) caching(*obj);
  for (auto& obj : retired_) caching(*obj);
  a.diskQueued = store.queuedBytes();
  a.diskQueueLimit = store::Store::kQueueLimit;
  return fillmem::chooseBlockMode(a);
}

int64_t Fill::readInFlight(Block* b, uint64_t at, uint64_t max, evbuffer* out) {
  if (b->mem) {
    std::vector<fillmem::PieceSpan> spans;
    for (auto& p : b->pieces) spans.push_back({p->begin, p->end, p->received});
    uint64_t n = std::min(max, fillmem::memoryReadable(spans, at));
    if (n == 0) return 0;
    // By reference, not a copy: 200 slow clients of buffered blocks would
    // otherwise each hold up to kClientHighWater of copies. Arrived bytes
    // never change; the reference keeps the buffer (and its count against
    // fill_memory) until the socket took them.
    auto* hold = new std::shared_ptr<BlockBuffer>(b->mem);
    if (evbuffer_add_reference(out, b->mem->bytes + (at - b->begin), n,
                               [](const void*, size_t, void* h) { delete static_cast<std::shared_ptr<BlockBuffer>*>(h); },
                               hold) != 0) {
      delete hold;
      return -1;
    }
    return static_cast<int64_t>(n);
  }
  // Unbuffered: the bytes its piece already wrote are readable from the file.
  uint64_t readable = 0;
  for (auto& p : b->pieces)
    if (at >= p->begin && at < p->end) {
      uint64_t upto = p->begin + p->written;
      readable = upto > at ? upto - at : 0;
      break;
    }
  if (!b->writer || b->committing || readable == 0) return 0;  // committing: wait for the listing
  uint64_t n = std::min(max, readable);
  if (store.readRaw(b->writer, at - b->begin, n, out) != store::ReadResult::Ok) return -1;
  return static_cast<int64_t>(n);
}

void Fill::wakeMemoryReaders() {
  std::vector<std::pair<Watch, Block*>> todo;
  todo.swap(memWakes_);
  for (auto& [alive, b] : todo) {
    if (!alive) continue;
    b->wakeQueued = false;
    wakeBlock(b);
    if (b->idx == 0) considerMedia(b->obj);  // the head's first bytes arrived
  }
}

void Fill::releaseMemoryBlocks() {
  // Collected first: dropping wakes readers, whose responses may end at once.
  std::vector<std::pair<Watch, Block*>> done;
  auto collect = [&done](Object& o) {
    std::vector<fillmem::ReaderSpan> readers;
    for (const BlockReader* r : o.readers)
      if (r->priority == plan::Priority::Playing) readers.push_back({r->pos, r->end});
    for (auto& [idx, b] : o.blocks)
      if (b->uncached && b->complete && !fillmem::keepMemoryBlock(b->begin, b->end, readers))
        done.push_back({b->life.watch(), b.get()});
  };
  for (auto& [k, o] : objects_) collect(*o);
  for (auto& o : retired_) collect(*o);
  for (auto& [alive, b] : done)
    if (alive) dropBlock(b);
  if (!done.empty()) kick();  // memory came free: read-ahead that waited for it may start
}

}  // namespace slip::proxy
