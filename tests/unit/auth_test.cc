// HTTP Basic users: crypt(3) hashes made by another program (Python's crypt
// module over libxcrypt, as `mkpasswd` makes them), the Authorization header,
// trusted networks, and the verdict cache that keeps hashing off most requests.
#include "src/auth.h"

#include <event2/event.h>
#include <event2/thread.h>

#include <catch2/catch.hpp>

#include "conf/clock.h"
#include "conf/conf.h"

using namespace slip;
using namespace slip::auth;

namespace {

// python3 -c "import crypt; print(crypt.crypt(PASSWORD, SALT))"
struct Vector {
  const char* password;
  const char* hash;
};
constexpr Vector kVectors[] = {
    {"correct horse",
     "$6$nuL82kh7dIF0gfeN$ZkrKtaegK28iU7mG6pmgJz2XaftWPBfslBXNKF/"
     "wPSoqAtfHoSUGDcpUsnRjGrOs2dDNrgs9oZjOuE65oyjq.."},
    {"pässwörd", "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$UAi3w.V1khOnmiQzfq00d7LaG6KfSe9MVbNef5kSs64"},
    {"secret", "$2b$12$Zi3GrAlPYcTPFj6DBvjhJ.mild8MURXAIUs9uRpkD0LbH09v7.3UC"},
    {"s3", "$7$CU..../....2Yl7pfbCRUdAXJBmE4LRa.$7rR6OM7GzmlF/B0m0RqpWSaqzopdogOCWHIFA2jx0N6"},
};
// Cheap bcrypt (cost 4) for the cache tests: fast, and still a real hash.
constexpr const char* kCheapPw =
    "$2b$04$abcdefghijklmnopqrstuuyvPXIbu7xe6/CED2DzX8z6Si09MlzlW";  // "pw"
constexpr const char* kCheapOther =
    "$2b$04$ABCDEFGHIJKLMNOPQRSTUubdTkc8VfDg3xLFFedNQLivmNw6I3T6K";  // "other"

std::string basic(const std::string& userColonPassword) {
  static const char* k = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  const std::string& s = userColonPassword;
  for (; i + 2 < s.size(); i += 3) {
    uint32_t n = (uint8_t(s[i]) << 16) | (uint8_t(s[i + 1]) << 8) | uint8_t(s[i + 2]);
    out += {k[n >> 18], k[(n >> 12) & 63], k[(n >> 6) & 63], k[n & 63]};
  }
  if (i + 1 == s.size()) {
    uint32_t n = uint8_t(s[i]) << 16;
    out += {k[n >> 18], k[(n >> 12) & 63], '=', '='};
  } else if (i + 2 == s.size()) {
    uint32_t n = (uint8_t(s[i]) << 16) | (uint8_t(s[i + 1]) << 8);
    out += {k[n >> 18], k[(n >> 12) & 63], k[(n >> 6) & 63], '='};
  }
  return "Basic " + out;
}

conf::Config usersConfig() {
  conf::Config c;
  c.users.push_back({"alice", 1, kCheapPw});
  c.users.push_back({"bob", 2, kCheapOther});
  c.server.davAllow = {*conf::parseCidr("127.0.0.0/8"), *conf::parseCidr("fd00::/8")};
  return c;
}

}  // namespace

TEST_CASE("passwords verify against hashes made elsewhere", "[auth]") {
  for (const auto& v : kVectors) {
    INFO(v.hash);
    CHECK(verifyPassword(v.password, v.hash));
    CHECK_FALSE(verifyPassword(std::string(v.password) + "x", v.hash));
    CHECK_FALSE(verifyPassword("", v.hash));
    CHECK(conf::checkPasswordHash(v.hash));
  }
  CHECK_FALSE(verifyPassword("x", "*"));
  CHECK_FALSE(verifyPassword("x", ""));
}

TEST_CASE("slipstream passwd makes fresh yescrypt hashes", "[auth]") {
  std::string err;
  auto a = hashPassword("hunter2 ü", &err);
  auto b = hashPassword("hunter2 ü", &err);
  REQUIRE(a);
  REQUIRE(b);
  CHECK(a->starts_with("$y$"));
  CHECK(*a != *b);  // random salts
  CHECK(verifyPassword("hunter2 ü", *a));
  CHECK_FALSE(verifyPassword("hunter2 u", *a));
  CHECK(conf::checkPasswordHash(*a));
}

TEST_CASE("malformed and weak hashes are configuration errors", "[auth]") {
  const std::string yes = kVectors[1].hash;
  const std::pair<std::string, std::string> bad[] = {
      {"", "not a password hash"},
      {"plain-text-password", "not a crypt(3) hash"},
      {"*", "not a crypt(3) hash"},
      {"!$y$j9T$abc", "not a crypt(3) hash"},
      {"abiQ6Ep3EYTHc", "weak"},                                            // DES
      {"$1$saltsalt$4px9i58NU2Z2/vZOUlGjq.", "weak"},                       // MD5
      {"$5$saltsalt$hcyDOxdIg0p3xyqtpHh/v8Ph.am06tQaovp1KpEklb7", "weak"},  // SHA-256-crypt
      {yes.substr(0, yes.size() - 1), "incomplete"},                        // cut short
      {yes.substr(0, yes.rfind('$')), "incomplete"},                        // the salt only
      {yes + "A", "incomplete"},
      {"$y$j9T$F5Jx5fExrKuPp53xLKQ..1$UAi3w.V1khOnmiQzfq00d7LaG6KfSe9MVbNef5k Ss64",
       "not a password hash"},
  };
  for (const auto& [h, fragment] : bad) {
    INFO(h);
    std::string why;
    CHECK_FALSE(conf::checkPasswordHash(h, &why));
    CHECK(why.find(fragment) != std::string::npos);
  }
  // The loader reports them with file:line and key.
  auto r = conf::loadString(
      "[user alice]\npassword_hash = $1$saltsalt$4px9i58NU2Z2/vZOUlGjq.\n[user bob]\n", "t.ini");
  REQUIRE(r.errors.size() == 2);
  CHECK(r.errors[0].str().find("t.ini:2: [user alice] password_hash: a weak hash method") == 0);
  CHECK(r.errors[1].str().find("t.ini:3: [user bob] password_hash: required key is missing") == 0);
  auto ok = conf::loadString(
      "[server]\ndav_allow = 192.168.0.0/16\n[user alice]\npassword_hash = " + yes + "\n", "t.ini");
  REQUIRE(ok.config);
  REQUIRE(ok.config->users.size() == 1);
  CHECK(ok.config->users[0].name == "alice");
  CHECK(ok.config->users[0].passwordHash == yes);
  CHECK(ok.config->server.davAllow.size() == 1);
  auto def = conf::loadString("[server]\n", "t.ini");
  REQUIRE(def.config);
  CHECK(def.config->server.davAllow.size() == 2);  // loopback by default
}

TEST_CASE("Authorization: Basic parsing", "[auth]") {
  struct Case {
    std::string header;
    bool ok;
    std::string user, password;
  };
  const Case cases[] = {
      {basic("alice:pw"), true, "alice", "pw"},
      {"basic   " + basic("alice:pw").substr(6), true, "alice", "pw"},
      {"BASIC " + basic("a:b:c").substr(6), true, "a", "b:c"},
      {basic(":pw"), true, "", "pw"},
      {basic("alice:"), true, "alice", ""},
      {"Basic 55So5oi3OuWvhueggQ==", true, "用户", "密码"},
      {"  " + basic("alice:pw") + " ", true, "alice", "pw"},
      {basic("alicepw"), false, "", ""},  // no colon
      {basic("ali\x01"
             "ce:pw"),
       false, "", ""},  // control character
      {"Bearer abc", false, "", ""},
      {"Basic", false, "", ""},
      {"Basic ", false, "", ""},
      {"Basicx " + basic("a:b").substr(6), false, "", ""},
      {"Basic !!!!", false, "", ""},
      {"Basic YWxpY2U6cHc", false, "", ""},    // padding missing
      {"Basic YWxpY2U6cHc==", false, "", ""},  // wrong padding
      {"Basic YW=xpY2U6cHc=", false, "", ""},  // '=' inside
      {"Digest username=\"alice\"", false, "", ""},
      {"", false, "", ""},
  };
  for (const auto& c : cases) {
    INFO(c.header);
    auto r = parseBasic(c.header);
    CHECK(r.has_value() == c.ok);
    if (r && c.ok) {
      CHECK(r->user == c.user);
      CHECK(r->password == c.password);
    }
  }
}

TEST_CASE("verdicts: trusted networks, users, and what needs hashing", "[auth]") {
  conf::Config cfg = usersConfig();
  ManualClock clock;
  Authenticator a(cfg, clock);
  struct Case {
    std::string client, header;
    Verdict verdict;
    std::string user;
  };
  const Case cases[] = {
      {"127.0.0.1", "", Verdict::Trusted, ""},
      {"127.9.9.9", "garbage", Verdict::Trusted, ""},
      {"fd00::5", "", Verdict::Trusted, ""},
      {"192.168.1.20", "", Verdict::Missing, ""},
      {"192.168.1.20", "Bearer x", Verdict::Malformed, ""},
      {"192.168.1.20", "Basic %%%", Verdict::Malformed, ""},
      {"192.168.1.20", basic("alice:pw"), Verdict::Ok, "alice"},
      {"192.168.1.20", basic("alice:PW"), Verdict::Refused, ""},
      {"192.168.1.20", basic("bob:other"), Verdict::Ok, "bob"},
      {"192.168.1.20", basic("bob:pw"), Verdict::Refused, ""},
      {"192.168.1.20", basic("mallory:pw"), Verdict::Refused, ""},
      {"::ffff:10.0.0.1", basic("alice:pw"), Verdict::Ok, "alice"},
  };
  for (const auto& c : cases) {
    INFO(c.client << " " << c.header);
    Result r = a.check(c.client, c.header);
    CHECK(r.verdict == c.verdict);
    CHECK(r.user == c.user);
  }
  conf::Config none;
  Authenticator b(none, clock);
  CHECK(b.check("192.168.1.20", basic("alice:pw")).verdict == Verdict::NoUsers);
  none.server.davAllow = {*conf::parseCidr("192.168.0.0/16")};
  CHECK(b.check("192.168.1.20", "").verdict == Verdict::Trusted);
}

TEST_CASE("verdict cache: one hashing per header, expiry, failures, LRU bound", "[auth]") {
  conf::Config cfg = usersConfig();
  ManualClock clock;
  Authenticator a(cfg, clock);
  std::string good = basic("alice:pw"), bad = basic("alice:nope"), unknown = basic("eve:pw");
  CHECK_FALSE(a.quick("10.0.0.1", good));  // needs hashing
  CHECK(a.check("10.0.0.1", good).verdict == Verdict::Ok);
  CHECK(a.hashings() == 1);
  for (int i = 0; i < 50; i++) {
    Result r = a.check("10.0.0.2", good);  // another client, same header: cached
    CHECK(r.verdict == Verdict::Ok);
    CHECK(r.cached);
  }
  CHECK(a.hashings() == 1);
  CHECK(a.check("10.0.0.1", bad).verdict == Verdict::Refused);
  CHECK(a.check("10.0.0.1", bad).verdict == Verdict::Refused);
  CHECK(a.check("10.0.0.1", unknown).verdict == Verdict::Refused);
  CHECK(a.check("10.0.0.1", unknown).verdict == Verdict::Refused);
  CHECK(a.hashings() == 3);
  clock.advanceMs(kBadTtlMs);  // failures are forgotten sooner
  CHECK(a.check("10.0.0.1", bad).verdict == Verdict::Refused);
  CHECK(a.check("10.0.0.1", good).verdict == Verdict::Ok);
  CHECK(a.hashings() == 4);
  clock.advanceMs(kGoodTtlMs);  // successes too, later
  CHECK(a.check("10.0.0.1", good).verdict == Verdict::Ok);
  CHECK(a.hashings() == 5);
  // Bounded: kCacheEntries other headers push the oldest out.
  for (size_t i = 0; i < kCacheEntries; i++)
    a.check("10.0.0.1", basic("alice:x" + std::to_string(i)));
  uint64_t before = a.hashings();
  CHECK(a.check("10.0.0.1", good).verdict == Verdict::Ok);
  CHECK(a.hashings() == before + 1);
  // The most recent ones are still there.
  CHECK(a.quick("10.0.0.1", basic("alice:x" + std::to_string(kCacheEntries - 1))));
}

TEST_CASE("hashing on a worker thread, answered on the loop", "[auth]") {
  evthread_use_pthreads();
  event_base* base = event_base_new();
  {
    conf::Config cfg = usersConfig();
    ManualClock clock;
    Authenticator a(cfg, clock);
    Worker w(base);
    std::vector<Result> got;
    a.check("10.0.0.1", basic("alice:pw"), w, [&](const Result& r) { got.push_back(r); });
    a.check("10.0.0.1", basic("bob:wrong"), w, [&](const Result& r) { got.push_back(r); });
    a.check("127.0.0.1", "", w, [&](const Result& r) { got.push_back(r); });  // at once
    REQUIRE(got.size() == 1);
    CHECK(got[0].verdict == Verdict::Trusted);
    // The same header again while it is being hashed: waits for that hashing.
    a.check("10.0.0.2", basic("alice:pw"), w, [&](const Result& r) { got.push_back(r); });
    CHECK(a.hashings() == 2);
    timeval tick{0, 10'000};
    for (int i = 0; i < 500 && got.size() < 4; i++)
      event_base_loopexit(base, &tick), event_base_dispatch(base);
    REQUIRE(got.size() == 4);
    CHECK(got[1].verdict == Verdict::Ok);
    CHECK(got[1].user == "alice");
    CHECK_FALSE(got[1].cached);
    CHECK(got[2].verdict == Verdict::Ok);  // the waiter, answered by the same hashing
    CHECK(got[3].verdict == Verdict::Refused);
    CHECK(a.hashings() == 2);
    CHECK(a.check("10.0.0.9", basic("alice:pw")).cached);  // remembered on the loop
  }
  event_base_free(base);
}
