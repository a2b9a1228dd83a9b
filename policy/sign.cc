// AList-compatible signing (SPEC §6).
//
// Verification recomputes the canonical sign string for the claimed expiry
// and compares it whole, in constant time. That is exactly AList's check
// (`s.Sign(data, expires) != sign`), so malformed base64, a wrong MAC length,
// a missing '=' or a non-canonical expiry ("007") are all simply Invalid, and
// no base64 decoder is needed.
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <charconv>

#include "policy/policy.h"

namespace slip::policy {

std::string sign(std::string_view secret, std::string_view path, int64_t expiry) {
  std::string data = std::string(path) + ":" + std::to_string(expiry);
  // A non-null key even when empty: OpenSSL reads a null key as "reuse the
  // previous one".
  const char empty = 0;
  const char* key = secret.empty() ? &empty : secret.data();
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int macLen = 0;
  HMAC(EVP_sha256(), key, static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), mac, &macLen);
  unsigned char b64[4 * ((EVP_MAX_MD_SIZE + 2) / 3) + 1];
  int n = EVP_EncodeBlock(b64, mac, static_cast<int>(macLen));
  std::string out(reinterpret_cast<const char*>(b64), static_cast<size_t>(n));
  for (char& c : out) {
    if (c == '+')
      c = '-';
    else if (c == '/')
      c = '_';
  }
  return out + ":" + std::to_string(expiry);
}

SignCheck verifySign(std::string_view secret, std::string_view path, std::string_view given,
                     int64_t now) {
  if (given.empty()) return SignCheck::Missing;
  size_t colon = given.rfind(':');
  if (colon == std::string_view::npos) return SignCheck::Invalid;
  std::string_view digits = given.substr(colon + 1);
  int64_t expiry = 0;
  if (digits.empty() || digits.front() < '0' || digits.front() > '9') return SignCheck::Invalid;
  auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), expiry);
  if (ec != std::errc() || p != digits.data() + digits.size()) return SignCheck::Invalid;

  // The MAC first, so that a tampered expiry reads as Invalid, not Expired.
  std::string want = sign(secret, path, expiry);
  if (want.size() != given.size() || CRYPTO_memcmp(want.data(), given.data(), want.size()) != 0)
    return SignCheck::Invalid;
  if (expiry != 0 && expiry < now) return SignCheck::Expired;
  return SignCheck::Ok;
}

}  // namespace slip::policy
