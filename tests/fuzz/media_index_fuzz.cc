// The media index locator (MP4/MOV boxes, Matroska/WebM EBML) on hostile
// heads: every range is inside the file, non-empty, within the bound, and
// what it calls the index really starts with a moov / Cues header when the
// head shows it. Seeds: the ffmpeg-made fixtures of tests/unit/media/.
#include "policy/policy.h"
#include "tests/fuzz/fuzz.h"

using namespace slip::policy;

namespace {

void check(uint64_t fileSize, std::string_view head, uint64_t maxBytes) {
  MediaIndex m = locateMediaIndex(fileSize, head, maxBytes);
  const uint64_t bound = maxBytes == 0 ? 1 : maxBytes;
  const uint64_t seen = head.size() < fileSize ? head.size() : fileSize;
  if (m.kind == MediaIndex::Kind::Unknown) {
    FUZZ_ASSERT(!m.clipped && !m.inHead);
    return;
  }
  FUZZ_ASSERT(m.container != MediaContainer::Unknown);
  FUZZ_ASSERT(m.range.begin < m.range.end && m.range.end <= fileSize);
  FUZZ_ASSERT(m.range.size() <= bound);
  FUZZ_ASSERT(m.inHead == (m.range.end <= seen));
  if (m.clipped) FUZZ_ASSERT(m.kind == MediaIndex::Kind::Exact && m.range.size() == bound);
  if (m.kind == MediaIndex::Kind::Exact && m.range.begin + 8 <= seen) {
    std::string_view at = head.substr(m.range.begin);
    if (m.container == MediaContainer::Mp4)
      FUZZ_ASSERT(at.substr(4, 4) == "moov");
    else
      FUZZ_ASSERT(at.substr(0, 4) == "\x1C\x53\xBB\x6B");
  }
  // Pure: the same answer twice.
  MediaIndex again = locateMediaIndex(fileSize, head, maxBytes);
  FUZZ_ASSERT(again.kind == m.kind && again.range == m.range && again.inHead == m.inHead);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view head(reinterpret_cast<const char*>(data), size);
  // The input as a whole file, as the first bytes of a larger one (size from
  // its last 8 bytes), cut in half, and with tiny and huge bounds.
  uint64_t tail = 0;
  if (size >= 8) std::memcpy(&tail, data + size - 8, 8);
  check(size, head, kMediaIndexMaxBytes);
  check(size, head, 64);
  check(size, head, 0);
  check(size + (tail >> 8), head, kMediaIndexMaxBytes);
  check(UINT64_MAX, head, UINT64_MAX);
  check(size, head.substr(0, size / 2), kMediaIndexMaxBytes);
  check(size / 2, head, kMediaIndexMaxBytes);
  return 0;
}
