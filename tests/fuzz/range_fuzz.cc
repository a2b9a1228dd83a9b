// Range: wire parse, normalisation against a length, and the headers built
// from the result. Input: 8 bytes of length, then the Range header value.
#include "policy/policy.h"
#include "tests/fuzz/fuzz.h"

using namespace slip::policy;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Input in{data, size};
  uint64_t length = in.u64();
  // Half the time a small length, so that ranges land inside it.
  if (length & 1) length = (length >> 1) % 100000;
  std::string_view header = in.rest();

  WireRange w = parseRange(header);
  FUZZ_ASSERT(!w.invalid || w.kind == WireRange::Kind::None);
  if (w.kind == WireRange::Kind::Single && w.last) FUZZ_ASSERT(*w.last >= w.first);

  // The wire form round-trips through the header we forward upstream.
  if (w.kind == WireRange::Kind::Single || w.kind == WireRange::Kind::Suffix) {
    WireRange again = parseRange(wireRangeHeader(w));
    FUZZ_ASSERT(again.kind == w.kind && again.first == w.first && again.last == w.last &&
                again.suffix == w.suffix && !again.invalid);
  }

  RangeAnswer a = resolveRange(w, length);
  switch (a.kind) {
    case RangeAnswer::Kind::Full:
      FUZZ_ASSERT(a.range.begin == 0 && a.range.end == length);
      FUZZ_ASSERT(w.kind == WireRange::Kind::None || w.kind == WireRange::Kind::Multiple);
      break;
    case RangeAnswer::Kind::Unsatisfiable:
      FUZZ_ASSERT(w.kind == WireRange::Kind::Single || w.kind == WireRange::Kind::Suffix);
      FUZZ_ASSERT(length == 0 || (w.kind == WireRange::Kind::Single ? w.first >= length : w.suffix == 0));
      break;
    case RangeAnswer::Kind::Partial: {
      // A normalised range is non-empty and within the length.
      FUZZ_ASSERT(a.range.begin < a.range.end && a.range.end <= length);
      if (w.kind == WireRange::Kind::Single) {
        FUZZ_ASSERT(a.range.begin == w.first);
        FUZZ_ASSERT(a.range.end == (w.last && *w.last < length - 1 ? *w.last + 1 : length));
      } else {
        FUZZ_ASSERT(w.kind == WireRange::Kind::Suffix && a.range.end == length);
        FUZZ_ASSERT(a.range.size() == (w.suffix < length ? w.suffix : length));
      }
      // The Content-Range we send parses back to the same range and length.
      auto cr = parseContentRange(contentRange(a.range, length));
      FUZZ_ASSERT(cr && cr->range && *cr->range == a.range && cr->length == length);
      // The upstream Range (closed form) is the same bytes.
      WireRange up = parseRange("bytes=" + upstreamRange(a.range));
      FUZZ_ASSERT(up.kind == WireRange::Kind::Single && up.first == a.range.begin &&
                  up.last == a.range.end - 1);
      break;
    }
  }
  return 0;
}
