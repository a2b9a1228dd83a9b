// The media index locator (issue 11 item 3): where is `moov` / `Cues`?
//
// Reads only box and element headers from a prefix of the file. Invariants
// that make it safe on hostile bytes:
//  - every read is bounds-checked against the head (`Bytes`);
//  - every length is checked against its parent's end, which is never past
//    the file size, with subtraction on the larger side so nothing wraps;
//  - every loop advances by at least one byte and is capped in iterations;
//  - nothing allocates.
#include "policy/policy.h"

namespace slip::policy {
namespace {

constexpr int kMaxBoxes = 4096;     // top-level MP4 boxes walked
constexpr int kMaxElements = 4096;  // EBML elements walked per level

constexpr uint32_t kEbmlId = 0x1A45DFA3;
constexpr uint32_t kDocTypeId = 0x4282;
constexpr uint32_t kSegmentId = 0x18538067;
constexpr uint32_t kSeekHeadId = 0x114D9B74;
constexpr uint32_t kSeekId = 0x4DBB;
constexpr uint32_t kSeekIdId = 0x53AB;
constexpr uint32_t kSeekPositionId = 0x53AC;
constexpr uint32_t kCuesId = 0x1C53BB6B;
constexpr uint32_t kClusterId = 0x1F43B675;

// The head, as bounds-checked big-endian reads.
struct Bytes {
  std::string_view s;
  bool has(uint64_t off, uint64_t n) const { return off <= s.size() && n <= s.size() - off; }
  uint8_t at(uint64_t off) const { return static_cast<uint8_t>(s[off]); }
  uint64_t be(uint64_t off, int n) const {  // caller checked has(off, n)
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v = v << 8 | at(off + static_cast<uint64_t>(i));
    return v;
  }
};

MediaIndex result(MediaContainer c, MediaIndex::Kind k, uint64_t begin, uint64_t end,
                  uint64_t fileSize, uint64_t maxBytes, const Bytes& b) {
  MediaIndex m;
  m.container = c;
  if (begin >= fileSize || end <= begin) return m;  // nothing sensible to fetch
  if (end > fileSize) end = fileSize;
  m.kind = k;
  if (end - begin > maxBytes) {
    m.clipped = k == MediaIndex::Kind::Exact;
    end = begin + maxBytes;
  }
  m.range = {begin, end};
  m.inHead = end <= b.s.size();
  return m;
}

// begin + maxBytes, without wrapping, clipped to the file.
uint64_t bounded(uint64_t begin, uint64_t maxBytes, uint64_t fileSize) {
  return maxBytes > fileSize - begin ? fileSize : begin + maxBytes;
}

bool printable(const Bytes& b, uint64_t off) {
  for (uint64_t i = 0; i < 4; i++)
    if (b.at(off + i) < 0x20 || b.at(off + i) > 0x7e) return false;
  return true;
}

bool isType(const Bytes& b, uint64_t off, std::string_view t) { return b.s.substr(off, 4) == t; }

// A first box that says "this is an ISO BMFF / QuickTime file".
bool mp4Start(const Bytes& b) {
  if (!b.has(0, 8)) return false;
  for (std::string_view t : {"ftyp", "styp", "moov", "mdat", "free", "skip", "wide", "pnot"})
    if (isType(b, 4, t)) return true;
  return false;
}

MediaIndex mp4(uint64_t fileSize, const Bytes& b, uint64_t maxBytes) {
  using K = MediaIndex::Kind;
  const auto c = MediaContainer::Mp4;
  MediaIndex unknown;
  unknown.container = c;
  // A box header past the head: once mdat has been stepped over, a box that
  // starts there is where moov must be (ftyp, [free], mdat, moov is how
  // every muxer without faststart lays it out). Before mdat it says nothing.
  bool sawMdat = false;
  auto beyondHead = [&](uint64_t at) {
    return sawMdat ? result(c, K::Starts, at, bounded(at, maxBytes, fileSize), fileSize, maxBytes, b)
                   : unknown;
  };
  uint64_t off = 0;
  for (int i = 0; i < kMaxBoxes && off < fileSize; i++) {
    const uint64_t left = fileSize - off;
    if (left < 8) return unknown;  // trailing bytes that are no box
    if (!b.has(off, 8)) return beyondHead(off);
    if (!printable(b, off + 4)) return unknown;
    const uint64_t size32 = b.be(off, 4);
    uint64_t size = size32;
    if (size32 == 1) {  // 64-bit largesize follows the type
      if (left < 16) return unknown;
      if (!b.has(off + 8, 8)) return beyondHead(off);
      size = b.be(off + 8, 8);
      if (size < 16) return unknown;
    } else if (size32 == 0) {  // extends to the end of the file
      size = left;
    } else if (size32 < 8) {
      return unknown;
    }
    if (size > left) return unknown;  // claims bytes the file does not have
    if (isType(b, off + 4, "moov")) return result(c, K::Exact, off, off + size, fileSize, maxBytes, b);
    sawMdat = sawMdat || isType(b, off + 4, "mdat");
    off += size;
  }
  return unknown;
}

// EBML variable-length integers. An ID keeps its length marker (1..4 bytes);
// a size drops it (1..8 bytes), all value bits set meaning "unknown".
struct Vint {
  uint64_t value = 0;
  int length = 0;  // 0 = not readable
  bool unknown = false;
};

Vint readVint(const Bytes& b, uint64_t off, int maxLength, bool keepMarker) {
  Vint v;
  if (!b.has(off, 1)) return v;
  const uint8_t first = b.at(off);
  int n = 1;
  while (n <= 8 && !(first & (0x80 >> (n - 1)))) n++;
  if (n > maxLength || !b.has(off, static_cast<uint64_t>(n))) return v;
  const uint64_t mask = keepMarker ? 0xFF : (0xFFu >> n);
  uint64_t value = first & mask;
  for (int i = 1; i < n; i++) value = value << 8 | b.at(off + static_cast<uint64_t>(i));
  v.value = value;
  v.length = n;
  v.unknown = !keepMarker && value == (uint64_t{1} << (7 * n)) - 1;
  return v;
}

// One element header at `off`, inside a parent that ends at `end` (<= file
// size). ok = false when the header is unreadable (past the head) or broken.
struct Element {
  bool ok = false;
  uint32_t id = 0;
  uint64_t dataStart = 0;
  uint64_t dataEnd = 0;  // `end` for an unknown size
  bool unknownSize = false;
};

Element readElement(const Bytes& b, uint64_t off, uint64_t end) {
  Element e;
  Vint id = readVint(b, off, 4, true);
  if (!id.length) return e;
  const uint64_t sizeAt = off + static_cast<uint64_t>(id.length);
  Vint size = readVint(b, sizeAt, 8, false);
  if (!size.length) return e;
  e.id = static_cast<uint32_t>(id.value);
  e.dataStart = sizeAt + static_cast<uint64_t>(size.length);
  if (e.dataStart > end) return e;
  e.unknownSize = size.unknown;
  if (size.unknown) {
    e.dataEnd = end;
  } else {
    if (size.value > end - e.dataStart) return e;  // longer than its parent
    e.dataEnd = e.dataStart + size.value;
  }
  e.ok = true;
  return e;
}

// DocType of the EBML header element `h` (entirely within the head).
MediaContainer docType(const Bytes& b, const Element& h) {
  uint64_t p = h.dataStart;
  for (int i = 0; i < kMaxElements && p < h.dataEnd; i++) {
    Element e = readElement(b, p, h.dataEnd);
    if (!e.ok || e.unknownSize) return MediaContainer::Unknown;
    if (e.id == kDocTypeId) {
      std::string_view t = b.s.substr(e.dataStart, e.dataEnd - e.dataStart);
      while (!t.empty() && t.back() == '\0') t.remove_suffix(1);  // may be padded
      if (t == "matroska") return MediaContainer::Matroska;
      if (t == "webm") return MediaContainer::WebM;
      return MediaContainer::Unknown;
    }
    p = e.dataEnd;
  }
  return MediaContainer::Unknown;
}

// The Cues position a SeekHead `sh` (entirely within the head) lists, as an
// offset from the segment's data start; the first entry for Cues wins.
std::optional<uint64_t> cuesFromSeekHead(const Bytes& b, const Element& sh) {
  uint64_t p = sh.dataStart;
  for (int i = 0; i < kMaxElements && p < sh.dataEnd; i++) {
    Element seek = readElement(b, p, sh.dataEnd);
    if (!seek.ok || seek.unknownSize) return std::nullopt;
    if (seek.id == kSeekId) {
      std::optional<uint64_t> id, pos;
      uint64_t q = seek.dataStart;
      for (int j = 0; j < kMaxElements && q < seek.dataEnd; j++) {
        Element f = readElement(b, q, seek.dataEnd);
        if (!f.ok || f.unknownSize) break;
        const uint64_t n = f.dataEnd - f.dataStart;
        if (f.id == kSeekIdId && n >= 1 && n <= 4) id = b.be(f.dataStart, static_cast<int>(n));
        if (f.id == kSeekPositionId && n <= 8) pos = b.be(f.dataStart, static_cast<int>(n));
        q = f.dataEnd;
      }
      if (id == kCuesId && pos) return pos;
    }
    p = seek.dataEnd;
  }
  return std::nullopt;
}

MediaIndex matroska(uint64_t fileSize, const Bytes& b, uint64_t maxBytes) {
  using K = MediaIndex::Kind;
  MediaIndex unknown;
  Element h = readElement(b, 0, fileSize);
  if (!h.ok || h.id != kEbmlId || h.unknownSize || !b.has(h.dataStart, h.dataEnd - h.dataStart))
    return unknown;
  const MediaContainer c = docType(b, h);
  if (c == MediaContainer::Unknown) return unknown;
  unknown.container = c;

  Element seg = readElement(b, h.dataEnd, fileSize);
  if (!seg.ok || seg.id != kSegmentId) return unknown;
  const uint64_t segData = seg.dataStart, segEnd = seg.dataEnd;

  // Top-level children of the Segment, as far as the head reaches and until
  // the first Cluster (the media data): a Cues among them, or a SeekHead
  // saying where the Cues are.
  std::optional<uint64_t> cuesAt;
  uint64_t p = segData;
  for (int i = 0; i < kMaxElements && p < segEnd; i++) {
    Element e = readElement(b, p, segEnd);
    if (!e.ok || e.id == kClusterId) break;
    if (e.id == kCuesId && !e.unknownSize)
      return result(c, K::Exact, p, e.dataEnd, fileSize, maxBytes, b);
    if (e.unknownSize) break;  // cannot step over it
    if (e.id == kSeekHeadId && !cuesAt && b.has(e.dataStart, e.dataEnd - e.dataStart)) {
      std::optional<uint64_t> rel = cuesFromSeekHead(b, e);
      if (rel && *rel < segEnd - segData) cuesAt = segData + *rel;
    }
    p = e.dataEnd;
  }
  if (!cuesAt) return unknown;

  // Check the element there when the head has it; otherwise trust the
  // SeekHead for the start and bound the length.
  Element cues = readElement(b, *cuesAt, segEnd);
  if (cues.ok) {
    if (cues.id != kCuesId || cues.unknownSize) return unknown;
    return result(c, K::Exact, *cuesAt, cues.dataEnd, fileSize, maxBytes, b);
  }
  if (b.has(*cuesAt, 12)) return unknown;  // readable, yet no valid element header
  return result(c, K::Starts, *cuesAt, bounded(*cuesAt, maxBytes, fileSize), fileSize, maxBytes, b);
}

}  // namespace

const char* mediaContainerName(MediaContainer c) {
  switch (c) {
    case MediaContainer::Unknown:
      return "unknown";
    case MediaContainer::Mp4:
      return "mp4";
    case MediaContainer::Matroska:
      return "matroska";
    case MediaContainer::WebM:
      return "webm";
  }
  return "?";
}

MediaIndex locateMediaIndex(uint64_t fileSize, std::string_view head, uint64_t maxBytes) {
  if (head.size() > fileSize) head = head.substr(0, fileSize);
  if (maxBytes == 0) maxBytes = 1;
  const Bytes b{head};
  if (mp4Start(b)) return mp4(fileSize, b, maxBytes);
  if (b.has(0, 4) && b.be(0, 4) == kEbmlId) return matroska(fileSize, b, maxBytes);
  return {};
}

}  // namespace slip::policy
