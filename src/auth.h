// HTTP Basic authentication for the WebDAV front (RFC 7617) against the
// `[user NAME]` sections: crypt(3) password hashes (yescrypt by default),
// trusted networks (`dav_allow`) that need no password, and a cache so that
// a player's hundreds of requests cost one hashing, not hundreds.
//
// Hashing is deliberately slow (yescrypt ~ tens of ms). The Authenticator
// therefore answers at once whatever it can (trusted client, no or malformed
// header, a header that verified or failed recently) and hashes only on a
// miss, on a Worker thread when one is given. The cache holds no password:
// it is keyed by HMAC-SHA256(random per-process key, Authorization value),
// holds at most kCacheEntries (least recently used out), successes for
// kGoodTtlMs and failures for kBadTtlMs. Unknown users are hashed against a
// dummy hash, so a response's timing does not reveal which names exist.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "conf/clock.h"
#include "conf/conf.h"
#include "conf/worker.h"

namespace slip::auth {

inline constexpr size_t kCacheEntries = 256;
inline constexpr int64_t kGoodTtlMs = 15 * 60'000;
inline constexpr int64_t kBadTtlMs = 60'000;
/// The WWW-Authenticate value of a 401.
inline constexpr const char* kChallenge = "Basic realm=\"slipstream\", charset=\"UTF-8\"";

struct Credentials {
  std::string user;
  std::string password;
};

/// "Basic <base64(user:password)>" (scheme case-insensitive, RFC 7617);
/// nullopt for another scheme, bad base64, no ':' or control characters.
std::optional<Credentials> parseBasic(std::string_view authorization);

/// Whether `password` matches the crypt(3) `hash` (constant-time compare of
/// the results). Slow by design.
bool verifyPassword(std::string_view password, const std::string& hash);

/// A new yescrypt hash of `password` with a random salt (`slipstream passwd`).
std::optional<std::string> hashPassword(std::string_view password, std::string* err);

enum class Verdict {
  Trusted,    // the client is in dav_allow: no password needed
  Ok,         // valid credentials of `user`
  Missing,    // no Authorization header: answer 401 with kChallenge
  Malformed,  // not Basic, or undecodable: 401
  Refused,    // unknown user or wrong password: 401
  NoUsers,    // not trusted and no [user] configured: 403
};
const char* verdictName(Verdict v);

struct Result {
  Verdict verdict = Verdict::Missing;
  std::string user;
  bool cached = false;  // decided without hashing
};

class Authenticator {
 public:
  /// `cfg` and `clock` are not owned and must outlive it.
  Authenticator(const conf::Config& cfg, const Clock& clock);
  /// Keeps `cfg` (users, dav_allow); `clock` must outlive it.
  Authenticator(std::shared_ptr<const conf::Config> cfg, const Clock& clock);
  /// A reloaded configuration: its users and dav_allow from now on.
  /// Remembered verdicts are forgotten; hashings in flight answer their
  /// requests (with the users they were checked against) and are not
  /// remembered.
  void reset(std::shared_ptr<const conf::Config> cfg);

  /// The verdict when it needs no hashing; nullopt when it does.
  std::optional<Result> quick(std::string_view client, std::string_view authorization);
  /// The full decision, hashing on this thread when needed.
  Result check(std::string_view client, std::string_view authorization);
  /// Like check(), but hashing runs on `worker` and `done` is called on the
  /// loop (at once when no hashing is needed). Requests with the same header
  /// arriving while it is hashed wait for that one hashing. The
  /// Authenticator must outlive the worker's pending jobs.
  void check(std::string client, std::string authorization, Worker& worker,
             std::function<void(const Result&)> done);

  /// Hashings done so far (for tests and metrics).
  uint64_t hashings() const { return hashings_; }

 private:
  using Mac = std::array<unsigned char, 32>;
  struct Cached {
    bool ok;
    std::string user;
    int64_t untilMs;
    std::list<Mac>::iterator lru;
  };
  Mac mac(std::string_view authorization) const;
  void remember(const Mac& m, const Result& r);

  std::shared_ptr<const conf::Config> cfg_;
  const Clock& clock_;
  uint64_t generation_ = 0;  // counts reset()s
  std::array<unsigned char, 32> key_{};
  std::map<Mac, Cached> cache_;
  std::list<Mac> lru_;  // front = most recently used
  std::map<Mac, std::vector<std::function<void(const Result&)>>> hashing_;  // on the worker
  uint64_t hashings_ = 0;
};

}  // namespace slip::auth
