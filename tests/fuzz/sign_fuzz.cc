// Sign verification: a sign verifies iff it was made with the secret for
// that path (and then says Expired only past its expiry).
// Input: 8 bytes of `now`, then secret '\n' path '\n' given sign.
#include <charconv>
#include <string>

#include "policy/policy.h"
#include "tests/fuzz/fuzz.h"

using namespace slip::policy;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Input in{data, size};
  int64_t now = static_cast<int64_t>(in.u64());
  std::string_view secret = in.line(), path = in.line(), given = in.rest();

  SignCheck c = verifySign(secret, path, given, now);
  if (given.empty()) FUZZ_ASSERT(c == SignCheck::Missing);
  if (c == SignCheck::Ok || c == SignCheck::Expired) {
    // Accepted: it must be exactly what sign() makes for its expiry.
    size_t colon = given.rfind(':');
    FUZZ_ASSERT(colon != std::string_view::npos);
    std::string_view digits = given.substr(colon + 1);
    int64_t expiry = 0;
    auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), expiry);
    FUZZ_ASSERT(ec == std::errc() && p == digits.data() + digits.size());
    FUZZ_ASSERT(sign(secret, path, expiry) == given);
    FUZZ_ASSERT((c == SignCheck::Expired) == (expiry != 0 && expiry < now));
  }

  // A sign made with the secret verifies; the same with another secret or
  // another path does not.
  int64_t expiry = now == INT64_MIN ? 0 : (now < 0 ? -now : now) / 2;
  std::string made = sign(secret, path, expiry);
  SignCheck own = verifySign(secret, path, made, now);
  FUZZ_ASSERT(own == (expiry != 0 && expiry < now ? SignCheck::Expired : SignCheck::Ok));
  std::string other(secret);
  other += 'x';
  FUZZ_ASSERT(verifySign(other, path, made, now) == SignCheck::Invalid);
  std::string otherPath(path);
  otherPath += '/';
  FUZZ_ASSERT(verifySign(secret, otherPath, made, now) == SignCheck::Invalid);
  return 0;
}
