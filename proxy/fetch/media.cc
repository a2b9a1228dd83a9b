// Media-aware prefetch (issue 11 item 3). A player opens a film, reads its
// head, then jumps to the index — the MP4 `moov` box (at the end when the
// file was written without faststart) or the Matroska `Cues` — before it
// plays a frame. So on the first read of an object whose name or first bytes
// say MP4/MOV/M4V or Matroska/WebM, the fill reads the head as soon as its
// first bytes landed (block 0 being fetched, or stored), asks
// policy::locateMediaIndex where the index is (box/element headers only,
// every length checked), and fetches that region — the file's last bytes
// when the head does not say — alongside the head: the planner sees it as an
// `index` reader (planner rule 10), so the player's jump is a cache hit.
// Bounded by the mount's `media_prefetch` (a rule can turn it off).
#include <event2/buffer.h>

#include "proxy/fetch/fill.h"

namespace slip::proxy {

namespace {

/// Bytes of the head the locator reads.
constexpr uint64_t kHeadBytes = 64 * 1024;

bool mediaName(const std::string& path) {
  std::string ext = policy::extensionOf(path);
  return ext == "mp4" || ext == "m4v" || ext == "mov" || ext == "mkv" || ext == "webm";
}

}  // namespace

/// The first `n` bytes of o, if they are readable now (block 0 stored, or
/// being fetched and that far written).
std::optional<std::string> Fill::headOf(Object* o, uint64_t n) {
  EvbufferPtr buf = makeEvbuffer();
  auto it = o->blocks.find(0);
  if (it != o->blocks.end()) {
    Block* b = it->second.get();
    Piece* first = nullptr;
    for (auto& p : b->pieces)
      if (p->begin == 0) first = p.get();
    uint64_t want = first ? std::min(n, first->end) : 0;
    if (!first || (b->mem ? first->received : first->written) < want) return std::nullopt;
    if (readInFlight(b, 0, want, buf.get()) != static_cast<int64_t>(want)) return std::nullopt;
  } else if (store.present(o->key, o->meta.generation, 0)) {
    if (store.read(o->key, o->meta, 0, 0, std::min(n, o->meta.blockLength(0)), buf.get()) != store::ReadResult::Ok)
      return std::nullopt;
  } else {
    return std::nullopt;
  }
  std::string head(evbuffer_get_length(buf.get()), '\0');
  evbuffer_copyout(buf.get(), head.data(), head.size());
  return head;
}

void Fill::considerMedia(Object* o) {
  if (o->media != MediaState::Unknown || o->state != ObjectState::Ready || o->readers.empty()) return;
  int64_t budget = 0;
  for (BlockReader* r : o->readers) budget = std::max(budget, r->mediaPrefetch);
  const uint64_t size = o->meta.size;
  if (budget <= 0 || size == 0 || o->meta.noRanges) {
    o->media = MediaState::Off;
    return;
  }
  std::optional<std::string> head = headOf(o, std::min(kHeadBytes, size));
  if (!head) return;  // not yet: called again as block 0's bytes land
  const uint64_t max = static_cast<uint64_t>(budget);
  policy::MediaIndex mi = policy::locateMediaIndex(size, *head, max);
  o->media = MediaState::Off;
  bool media = mi.container != policy::MediaContainer::Unknown || mediaName(o->path);
  if (!media || mi.inHead) return;
  policy::ByteRange range = mi.kind == policy::MediaIndex::Kind::Unknown
                                ? policy::ByteRange{size > max ? size - max : 0, size}  // the tail
                                : mi.range;
  if (range.size() == 0) return;
  o->media = MediaState::Fetching;
  o->indexRange = range;
  conf::Log::write(conf::LogLevel::Info, "media_prefetch",
                   "path=" + conf::logValue(o->path) + " container=" + policy::mediaContainerName(mi.container) +
                       " index=" + std::to_string(range.begin) + "-" + std::to_string(range.end) +
                       (mi.kind == policy::MediaIndex::Kind::Unknown ? " from=tail" : ""));
  kick();
}

}  // namespace slip::proxy
