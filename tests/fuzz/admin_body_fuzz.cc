// The admin API's JSON request bodies (POST prefetch and purge). Whatever
// the bytes: a refusal has a reason and a detail; an accepted path is a
// normalised absolute path (normalising its encoding gives it back); the two
// parsers agree on {"path": ...}; a purge names exactly one of path/prefix.
#include "policy/policy.h"
#include "src/admin_api.h"
#include "tests/fuzz/fuzz.h"

using namespace slip;
using policy::Reason;

namespace {

void checkPath(const std::string& p) {
  FUZZ_ASSERT(!p.empty() && p.front() == '/');
  FUZZ_ASSERT(p.size() <= policy::kMaxPathBytes);
  FUZZ_ASSERT(p.find('\0') == std::string::npos && p.find('\\') == std::string::npos);
  policy::PathResult again = policy::normalizePath(policy::encodePath(p));
  FUZZ_ASSERT(again.reason == Reason::None && again.path == p);
}

bool refusal(Reason r) { return r != Reason::None && policy::reasonStatus(r) >= 400; }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view body(reinterpret_cast<const char*>(data), size);
  admin::Outcome<std::string> pre = admin::parsePrefetchBody(body);
  admin::Outcome<admin::PurgeRequest> pur = admin::parsePurgeBody(body);
  if (pre.value) {
    checkPath(*pre.value);
    // {"path": P} is a purge of the file P as well.
    FUZZ_ASSERT(pur.value && !pur.value->prefix && pur.value->path == *pre.value);
  } else {
    FUZZ_ASSERT(refusal(pre.error.reason) && !pre.error.detail.empty());
  }
  if (pur.value) {
    checkPath(pur.value->path);
  } else {
    FUZZ_ASSERT(refusal(pur.error.reason) && !pur.error.detail.empty());
  }
  if (size > admin::kMaxBody) FUZZ_ASSERT(pre.error.reason == Reason::PayloadTooLarge);
  return 0;
}
