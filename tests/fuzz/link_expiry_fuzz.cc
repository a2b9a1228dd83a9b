// Link expiry read from a signed URL: whatever the URL, an expiry is within
// the plausible span; a URL without a query has none; and a plausible
// timestamp written in each form is read back exactly.
#include <string>

#include "policy/policy.h"
#include "tests/fuzz/fuzz.h"

using namespace slip::policy;

namespace {
constexpr int64_t kMinMs = 1'000'000'000'000;          // 2001-09-09
constexpr int64_t kEndMs = 4'102'444'800'000;          // 2100-01-01
constexpr int64_t kMaxRelMs = 1'000'000'000'000;       // relative lifetimes up to 1e9 s
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view url(reinterpret_cast<const char*>(data), size);
  auto e = linkExpiry(url);
  if (e) {
    FUZZ_ASSERT(url.find('?') != std::string_view::npos);
    FUZZ_ASSERT(e->unixMs >= kMinMs);
    bool relative = e->form == LinkExpiryForm::AmzSigV4 || e->form == LinkExpiryForm::GoogV4 ||
                    e->form == LinkExpiryForm::OssV4;
    FUZZ_ASSERT(e->unixMs < (relative ? kEndMs + kMaxRelMs : kEndMs));
    FUZZ_ASSERT(linkExpiryFormName(e->form)[0] != '?');
  }
  // The same link with an Expires appended: the first occurrence of a name
  // wins and Expires ranks below every form but Plain, so a link that had a
  // stronger (or its own) expiry keeps it.
  fuzz::Input in{data, size};
  uint64_t n = in.u64();
  int64_t secs = 1'000'000'000 + static_cast<int64_t>(n % 3'102'444'800ULL);
  std::string tail = "Expires=" + std::to_string(secs);
  std::string withOurs = std::string(url) + (url.find('?') == std::string_view::npos ? "?" : "&") + tail;
  auto e2 = linkExpiry(withOurs);
  if (e && e->form != LinkExpiryForm::Plain && url.find('#') == std::string_view::npos)
    FUZZ_ASSERT(e2 && e2->unixMs == e->unixMs && e2->form == e->form);
  auto clean = linkExpiry("https://h/a?" + tail);
  FUZZ_ASSERT(clean && clean->unixMs == secs * 1000 && clean->form == LinkExpiryForm::Expires);
  return 0;
}
