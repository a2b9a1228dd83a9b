// Content-Range from an upstream: whatever it says, a parsed range is
// non-empty and inside the stated length, and what we would write for it
// parses back the same.
#include "policy/policy.h"
#include "tests/fuzz/fuzz.h"

using namespace slip::policy;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view v(reinterpret_cast<const char*>(data), size);
  auto cr = parseContentRange(v);
  if (!cr) return 0;
  FUZZ_ASSERT(cr->range || cr->length);  // "bytes */*" says nothing: refused
  if (cr->range) {
    FUZZ_ASSERT(cr->range->begin < cr->range->end);
    if (cr->length) {
      FUZZ_ASSERT(cr->range->end <= *cr->length);
      auto again = parseContentRange(contentRange(*cr->range, *cr->length));
      FUZZ_ASSERT(again && again->range == cr->range && again->length == cr->length);
    }
  } else {
    auto again = parseContentRange(contentRangeUnsatisfied(*cr->length));
    FUZZ_ASSERT(again && !again->range && again->length == cr->length);
  }
  return 0;
}
