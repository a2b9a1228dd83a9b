#include "src/auth.h"

#include <crypt.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <cstring>
#include <memory>

#include "policy/policy.h"

namespace slip::auth {
namespace {

int base64Value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

/// Standard base64 with padding (RFC 4648 §4), strictly.
std::optional<std::string> base64Decode(std::string_view s) {
  if (s.empty() || s.size() % 4 != 0) return std::nullopt;
  std::string out;
  for (size_t i = 0; i < s.size(); i += 4) {
    int v[4];
    int pad = 0;
    for (int k = 0; k < 4; k++) {
      char c = s[i + k];
      if (c == '=' && i + 4 == s.size() && k >= 2) {
        v[k] = 0;
        pad++;
      } else if (pad || (v[k] = base64Value(c)) < 0) {
        return std::nullopt;  // a digit after '=', or not base64
      }
    }
    uint32_t n = (v[0] << 18) | (v[1] << 12) | (v[2] << 6) | v[3];
    out += static_cast<char>(n >> 16);
    if (pad < 2) out += static_cast<char>((n >> 8) & 0xFF);
    if (pad < 1) out += static_cast<char>(n & 0xFF);
  }
  return out;
}

const conf::User* findUser(const conf::Config& cfg, const std::string& name) {
  for (const conf::User& u : cfg.users)
    if (u.name == name) return &u;
  return nullptr;
}

/// The slow part: pure apart from the hashing's CPU time, safe on any thread.
Result verifyCredentials(const conf::Config& cfg, const Credentials& c) {
  const conf::User* u = findUser(cfg, c.user);
  // An unknown name costs a hashing too: timing does not tell names apart.
  bool match = verifyPassword(c.password, u ? u->passwordHash : cfg.users.front().passwordHash);
  Result r;
  r.verdict = u && match ? Verdict::Ok : Verdict::Refused;
  if (r.verdict == Verdict::Ok) r.user = u->name;
  return r;
}

}  // namespace

const char* verdictName(Verdict v) {
  switch (v) {
    case Verdict::Trusted:
      return "trusted";
    case Verdict::Ok:
      return "ok";
    case Verdict::Missing:
      return "missing";
    case Verdict::Malformed:
      return "malformed";
    case Verdict::Refused:
      return "refused";
    case Verdict::NoUsers:
      return "no_users";
  }
  return "?";
}

std::optional<Credentials> parseBasic(std::string_view h) {
  while (!h.empty() && (h.front() == ' ' || h.front() == '\t')) h.remove_prefix(1);
  while (!h.empty() && (h.back() == ' ' || h.back() == '\t')) h.remove_suffix(1);
  if (h.size() < 6) return std::nullopt;
  std::string scheme(h.substr(0, 5));
  for (auto& ch : scheme) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (scheme != "basic" || (h[5] != ' ' && h[5] != '\t')) return std::nullopt;
  std::string_view token = h.substr(6);
  while (!token.empty() && (token.front() == ' ' || token.front() == '\t')) token.remove_prefix(1);
  auto decoded = base64Decode(token);
  if (!decoded) return std::nullopt;
  size_t colon = decoded->find(':');
  if (colon == std::string::npos) return std::nullopt;
  for (unsigned char ch : *decoded)
    if (ch < 0x20 || ch == 0x7f) return std::nullopt;  // RFC 7617: no control characters
  return Credentials{decoded->substr(0, colon), decoded->substr(colon + 1)};
}

bool verifyPassword(std::string_view password, const std::string& hash) {
  auto data = std::make_unique<crypt_data>();
  std::string pw(password);
  const char* out = crypt_rn(pw.c_str(), hash.c_str(), data.get(), sizeof *data);
  OPENSSL_cleanse(pw.data(), pw.size());
  if (!out || out[0] == '*') return false;
  size_t n = strlen(out);
  bool same = n == hash.size() && CRYPTO_memcmp(out, hash.data(), n) == 0;
  OPENSSL_cleanse(data.get(), sizeof *data);
  return same;
}

std::optional<std::string> hashPassword(std::string_view password, std::string* err) {
  char setting[CRYPT_GENSALT_OUTPUT_SIZE];
  if (!crypt_gensalt_rn("$y$", 0, nullptr, 0, setting, sizeof setting)) {
    *err = "cannot make a yescrypt salt (crypt_gensalt)";
    return std::nullopt;
  }
  auto data = std::make_unique<crypt_data>();
  std::string pw(password);
  const char* out = crypt_rn(pw.c_str(), setting, data.get(), sizeof *data);
  OPENSSL_cleanse(pw.data(), pw.size());
  if (!out || out[0] == '*') {
    *err = "crypt failed";
    return std::nullopt;
  }
  std::string hash = out;
  OPENSSL_cleanse(data.get(), sizeof *data);
  return hash;
}

Authenticator::Authenticator(const conf::Config& cfg, const Clock& clock)
    : Authenticator(std::shared_ptr<const conf::Config>(&cfg, [](const conf::Config*) {}), clock) {}

Authenticator::Authenticator(std::shared_ptr<const conf::Config> cfg, const Clock& clock)
    : cfg_(std::move(cfg)), clock_(clock) {
  RAND_bytes(key_.data(), static_cast<int>(key_.size()));
}

void Authenticator::reset(std::shared_ptr<const conf::Config> cfg) {
  cfg_ = std::move(cfg);
  cache_.clear();
  lru_.clear();
  generation_++;
}

Authenticator::Mac Authenticator::mac(std::string_view authorization) const {
  Mac m{};
  unsigned int n = 0;
  HMAC(EVP_sha256(), key_.data(), static_cast<int>(key_.size()),
       reinterpret_cast<const unsigned char*>(authorization.data()), authorization.size(), m.data(),
       &n);
  return m;
}

std::optional<Result> Authenticator::quick(std::string_view client,
                                           std::string_view authorization) {
  Result r;
  r.cached = true;
  if (policy::anyCidrContains(cfg_->server.davAllow, client)) {
    r.verdict = Verdict::Trusted;
    return r;
  }
  if (cfg_->users.empty()) {
    r.verdict = Verdict::NoUsers;
    return r;
  }
  if (authorization.empty()) {
    r.verdict = Verdict::Missing;
    return r;
  }
  if (!parseBasic(authorization)) {
    r.verdict = Verdict::Malformed;
    return r;
  }
  auto it = cache_.find(mac(authorization));
  if (it == cache_.end()) return std::nullopt;
  if (clock_.monoMs() >= it->second.untilMs) {
    lru_.erase(it->second.lru);
    cache_.erase(it);
    return std::nullopt;
  }
  lru_.splice(lru_.begin(), lru_, it->second.lru);
  r.verdict = it->second.ok ? Verdict::Ok : Verdict::Refused;
  r.user = it->second.user;
  return r;
}

void Authenticator::remember(const Mac& m, const Result& r) {
  auto it = cache_.find(m);
  if (it != cache_.end()) {
    lru_.erase(it->second.lru);
    cache_.erase(it);
  }
  if (cache_.size() >= kCacheEntries) {
    cache_.erase(lru_.back());
    lru_.pop_back();
  }
  lru_.push_front(m);
  bool ok = r.verdict == Verdict::Ok;
  cache_[m] = Cached{ok, r.user, clock_.monoMs() + (ok ? kGoodTtlMs : kBadTtlMs), lru_.begin()};
}

Result Authenticator::check(std::string_view client, std::string_view authorization) {
  if (auto r = quick(client, authorization)) return *r;
  hashings_++;
  Result r = verifyCredentials(*cfg_, *parseBasic(authorization));
  remember(mac(authorization), r);
  return r;
}

void Authenticator::check(std::string client, std::string authorization, Worker& worker,
                          std::function<void(const Result&)> done) {
  if (auto r = quick(client, authorization)) {
    done(*r);
    return;
  }
  Mac m = mac(authorization);
  auto& waiting = hashing_[m];
  waiting.push_back(std::move(done));
  if (waiting.size() > 1) return;  // that header is being hashed already
  hashings_++;
  auto out = std::make_shared<Result>();
  auto creds = std::make_shared<Credentials>(*parseBasic(authorization));
  std::shared_ptr<const conf::Config> cfg = cfg_;  // the users it is checked against live as long
  worker.post([out, creds, cfg] { *out = verifyCredentials(*cfg, *creds); },
              [this, out, m, gen = generation_] {
                if (gen == generation_) remember(m, *out);
                auto callbacks = std::move(hashing_[m]);
                hashing_.erase(m);
                for (auto& cb : callbacks) cb(*out);
              });
}

}  // namespace slip::auth
