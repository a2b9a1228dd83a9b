// The fill's memory-first decisions (see memory.h).
#include "proxy/fetch/memory.h"

namespace slip::proxy::fillmem {

const char* blockModeName(BlockMode m) {
  switch (m) {
    case BlockMode::Cached: return "cached";
    case BlockMode::MemoryOnly: return "memory_only";
    case BlockMode::Disk: return "disk";
    case BlockMode::Wait: return "wait";
  }
  return "?";
}

BlockMode chooseBlockMode(const BlockAsk& a) {
  const uint64_t half = a.limit / 2;
  if (a.limit == 0 || !a.playing || a.stream || a.length == 0 || a.length > half) return BlockMode::Disk;
  bool fits = a.used + a.length <= a.limit && a.objectUsed + a.length <= half;
  bool diskBehind = a.caching + a.length > half || a.diskQueued >= a.diskQueueLimit;
  // Out of memory: the disk path, as before buffers existed, while the disk
  // keeps up (a fast origin on a fast disk is not held to the budget);
  // read-ahead waits only when the disk is behind too.
  if (!fits) return a.urgent || !diskBehind ? BlockMode::Disk : BlockMode::Wait;
  if (diskBehind) return BlockMode::MemoryOnly;
  return BlockMode::Cached;
}

uint64_t memoryReadable(const std::vector<PieceSpan>& pieces, uint64_t at) {
  for (const PieceSpan& p : pieces) {
    if (at < p.begin || at >= p.end) continue;
    uint64_t upto = p.begin + (p.received < p.end - p.begin ? p.received : p.end - p.begin);
    return upto > at ? upto - at : 0;
  }
  return 0;
}

bool keepMemoryBlock(uint64_t begin, uint64_t end, const std::vector<ReaderSpan>& readers) {
  for (const ReaderSpan& r : readers)
    if (r.pos < end && r.end > begin) return true;
  return false;
}

}  // namespace slip::proxy::fillmem
