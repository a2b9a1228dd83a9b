// Request targets: split, normalise, query parameters. A normalised path
// never contains a '..' or '.' segment, an empty segment, NUL or backslash,
// and normalising its own encoding gives it back.
#include "policy/policy.h"
#include "tests/fuzz/fuzz.h"

using namespace slip::policy;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view target(reinterpret_cast<const char*>(data), size);
  std::string_view path, query;
  splitTarget(target, &path, &query);
  FUZZ_ASSERT(path.size() + query.size() <= target.size());
  FUZZ_ASSERT(path.find('?') == std::string_view::npos);

  PathResult r = normalizePath(path);
  if (r.reason == Reason::None) {
    const std::string& p = r.path;
    FUZZ_ASSERT(!p.empty() && p.front() == '/');
    FUZZ_ASSERT(p.size() <= kMaxPathBytes);
    FUZZ_ASSERT(p.find('\0') == std::string::npos && p.find('\\') == std::string::npos);
    FUZZ_ASSERT(p.find("//") == std::string::npos);
    // Segment by segment: no "." and no "..".
    size_t i = 1;
    while (i <= p.size()) {
      size_t j = p.find('/', i);
      if (j == std::string::npos) j = p.size();
      std::string_view seg(p.data() + i, j - i);
      FUZZ_ASSERT(seg != "." && seg != "..");
      i = j + 1;
    }
    PathResult again = normalizePath(encodePath(p));
    FUZZ_ASSERT(again.reason == Reason::None && again.path == p);
    FUZZ_ASSERT(baseName(p).size() <= p.size());
    (void)extensionOf(p);
    (void)contentDisposition(baseName(p));
  } else {
    FUZZ_ASSERT(r.path.empty() || r.reason != Reason::None);
  }
  (void)queryParam(query, "sign");
  auto v = queryParam(query, std::string_view(reinterpret_cast<const char*>(data), size < 4 ? size : 4));
  if (v) FUZZ_ASSERT(v->size() <= query.size());
  return 0;
}
