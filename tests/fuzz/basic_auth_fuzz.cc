// HTTP Basic credentials (RFC 7617) from an Authorization header. Accepted
// credentials have no control character and a user without ':'; writing
// them back as "Basic <base64>" parses to the same credentials; anything
// accepted starts with the scheme "Basic" (any case) and a space or tab.
#include <openssl/evp.h>

#include <cctype>

#include "src/auth.h"
#include "tests/fuzz/fuzz.h"

using namespace slip::auth;

namespace {

std::string base64(const std::string& s) {
  std::string out(4 * ((s.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(s.data()),
                          static_cast<int>(s.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

bool clean(const std::string& s) {
  for (unsigned char c : s)
    if (c < 0x20 || c == 0x7f) return false;
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view h(reinterpret_cast<const char*>(data), size);
  auto c = parseBasic(h);
  if (!c) return 0;
  FUZZ_ASSERT(c->user.find(':') == std::string::npos);
  FUZZ_ASSERT(clean(c->user) && clean(c->password));
  std::string_view t = h;
  while (!t.empty() && (t.front() == ' ' || t.front() == '\t')) t.remove_prefix(1);
  FUZZ_ASSERT(t.size() > 6);
  for (size_t i = 0; i < 5; i++)
    FUZZ_ASSERT(std::tolower(static_cast<unsigned char>(t[i])) == "basic"[i]);
  FUZZ_ASSERT(t[5] == ' ' || t[5] == '\t');
  auto again = parseBasic("Basic " + base64(c->user + ":" + c->password));
  FUZZ_ASSERT(again && again->user == c->user && again->password == c->password);
  return 0;
}
