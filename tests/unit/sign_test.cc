// AList-compatible signing: vectors computed outside our code, and every way
// verification must refuse.
#include <catch2/catch.hpp>

#include "policy/policy.h"

using namespace slip::policy;

namespace {

constexpr const char* kSecret = "s3cr3t-token";

// Computed independently with the openssl CLI (OpenSSL 3.0), not with sign():
//   S='s3cr3t-token'
//   printf '%s' '/a/b.mkv:1700000000'               | openssl dgst -sha256 -hmac "$S" -binary |
//   base64 | tr '+/' '-_' printf '%s' '/电影/你好 世界.mkv:1700000000'    | openssl dgst -sha256
//   -hmac "$S" -binary | base64 | tr '+/' '-_' printf '%s' '/my files/a b.mp4:1893456000'      |
//   openssl dgst -sha256 -hmac "$S" -binary | base64 | tr '+/' '-_' printf '%s' '/a/b.mkv:0' |
//   openssl dgst -sha256 -hmac "$S" -binary | base64 | tr '+/' '-_'
// (the source file and the shell both use UTF-8, so the CJK path is the same bytes)
struct Vector {
  const char* path;
  int64_t expiry;
  const char* sign;
};
constexpr Vector kVectors[] = {
    {"/a/b.mkv", 1700000000, "Srxn6xvX-7fq0BDbumBi7tphfp--ENPz7EHLfmyw18U=:1700000000"},
    {"/电影/你好 世界.mkv", 1700000000, "8FmH3xSAJRikcMdH53xjEfR6wdG4ybkFegknc8LRoXw=:1700000000"},
    {"/my files/a b.mp4", 1893456000, "Tybh5MY42dioD-y_YkdG0MuZzawtxSW_bN_HgtInlVI=:1893456000"},
    {"/a/b.mkv", 0, "v3dIQQH9VU1wPzSrx9PLc329P5YgyUYGYL-8GKsnmcw=:0"},
};

}  // namespace

TEST_CASE("sign matches openssl-computed vectors", "[sign]") {
  for (const auto& v : kVectors) {
    INFO(v.path << ":" << v.expiry);
    CHECK(sign(kSecret, v.path, v.expiry) == v.sign);
    // Verified a second before expiry; expiry 0 never expires.
    CHECK(verifySign(kSecret, v.path, v.sign, v.expiry == 0 ? INT64_MAX : v.expiry - 1) ==
          SignCheck::Ok);
  }
}

TEST_CASE("verifySign accepts and refuses", "[sign]") {
  const std::string good = kVectors[0].sign;   // /a/b.mkv, expires 1700000000
  const std::string never = kVectors[3].sign;  // /a/b.mkv, never expires
  const std::string mac = good.substr(0, good.find(':'));
  struct Row {
    const char* what;
    std::string secret;
    std::string path;
    std::string sign;
    int64_t now;
    SignCheck want;
  };
  const Row rows[] = {
      {"valid, before expiry", kSecret, "/a/b.mkv", good, 1699999999, SignCheck::Ok},
      {"valid, at the expiry second", kSecret, "/a/b.mkv", good, 1700000000, SignCheck::Ok},
      {"expired", kSecret, "/a/b.mkv", good, 1700000001, SignCheck::Expired},
      {"expiry 0 at time 0", kSecret, "/a/b.mkv", never, 0, SignCheck::Ok},
      {"expiry 0 far in the future", kSecret, "/a/b.mkv", never, INT64_MAX, SignCheck::Ok},
      {"empty", kSecret, "/a/b.mkv", "", 0, SignCheck::Missing},
      {"tampered path", kSecret, "/a/c.mkv", good, 0, SignCheck::Invalid},
      {"path differs by a trailing slash", kSecret, "/a/b.mkv/", good, 0, SignCheck::Invalid},
      {"tampered expiry", kSecret, "/a/b.mkv", mac + ":1800000000", 0, SignCheck::Invalid},
      {"tampered expiry, already past", kSecret, "/a/b.mkv", mac + ":1600000000", 1700000000,
       SignCheck::Invalid},
      {"expiry set to 0", kSecret, "/a/b.mkv", mac + ":0", 0, SignCheck::Invalid},
      {"expiry with leading zero", kSecret, "/a/b.mkv", mac + ":01700000000", 0,
       SignCheck::Invalid},
      {"wrong secret", "other-secret", "/a/b.mkv", good, 0, SignCheck::Invalid},
      {"empty secret", "", "/a/b.mkv", good, 0, SignCheck::Invalid},
      {"no ':'", kSecret, "/a/b.mkv", mac, 0, SignCheck::Invalid},
      {"empty expiry", kSecret, "/a/b.mkv", mac + ":", 0, SignCheck::Invalid},
      {"negative expiry", kSecret, "/a/b.mkv", mac + ":-1", 0, SignCheck::Invalid},
      {"expiry with sign", kSecret, "/a/b.mkv", mac + ":+1700000000", 0, SignCheck::Invalid},
      {"expiry overflow", kSecret, "/a/b.mkv", mac + ":99999999999999999999", 0,
       SignCheck::Invalid},
      {"expiry not digits", kSecret, "/a/b.mkv", mac + ":soon", 0, SignCheck::Invalid},
      {"standard base64 alphabet", kSecret, "/a/b.mkv",
       "Srxn6xvX+7fq0BDbumBi7tphfp++ENPz7EHLfmyw18U=:1700000000", 0, SignCheck::Invalid},
      {"padding stripped", kSecret, "/a/b.mkv", mac.substr(0, mac.size() - 1) + ":1700000000", 0,
       SignCheck::Invalid},
      {"bad base64", kSecret, "/a/b.mkv", "!!!not*base64!!!:1700000000", 0, SignCheck::Invalid},
      {"MAC truncated", kSecret, "/a/b.mkv", mac.substr(0, 20) + ":1700000000", 0,
       SignCheck::Invalid},
      {"MAC too long", kSecret, "/a/b.mkv", mac + "AAAA:1700000000", 0, SignCheck::Invalid},
      {"one MAC character flipped", kSecret, "/a/b.mkv", "T" + good.substr(1), 0,
       SignCheck::Invalid},
      {"only the expiry", kSecret, "/a/b.mkv", ":1700000000", 0, SignCheck::Invalid},
  };
  for (const auto& r : rows) {
    INFO(r.what << ": sign [" << r.sign << "] now " << r.now);
    CHECK(verifySign(r.secret, r.path, r.sign, r.now) == r.want);
  }
}

TEST_CASE("sign round-trips through verifySign", "[sign]") {
  const std::string s = sign("k", "/x/y z.mkv", 42);
  CHECK(s.substr(s.size() - 3) == ":42");
  CHECK(verifySign("k", "/x/y z.mkv", s, 41) == SignCheck::Ok);
  CHECK(verifySign("k", "/x/y z.mkv", s, 43) == SignCheck::Expired);
  CHECK(verifySign("", "/p", sign("", "/p", 0), 7) == SignCheck::Ok);
}
