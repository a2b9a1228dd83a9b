// The `aliyundrive_open` source: an Aliyundrive (alipan) Open API account
// shared by the mounts that name it, and the token exchange that must
// survive `kill -9`. See proxy/DESIGN.md, "Aliyundrive Open accounts".
//
// Credentials belong to the account: one token state, one pair of request
// gates (download links, other calls) and one download-connection pool
// (Admission::addPool) for all its mounts.
//
// The refresh token rotates on every use, so the exchange runs in a helper
// process (`slipstream token-exchange`, proxy/aliyun_token.cc) that writes the
// new token to the state directory before it reports the access token back.
// Killing the gateway never kills the exchange: the helper finishes, saves,
// and the next gateway waits for its lock before it exchanges again.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "conf/clock.h"
#include "conf/conf.h"
#include "proxy/proxy.h"
#include "proxy/sources/source.h"

struct event_base;

namespace slip::proxy {

class CurlMulti;

/// One account's shared state (token, drive, gates, listings); opaque.
class AliyunAccount {
 public:
  virtual ~AliyunAccount() = default;
  /// Counters and state (the pool figures are filled in by the engine).
  virtual AccountStats stats() const = 0;
};

/// The account named by `cfg.accounts[index]`.
std::unique_ptr<AliyunAccount> makeAliyunAccount(const conf::Config& cfg, int index,
                                                 CurlMulti& multi, const Clock& clock);
/// The source of an aliyundrive_open mount, resolving through its account.
std::unique_ptr<Source> makeAliyunSource(const conf::Mount& m, AliyunAccount& account);

// ---------------------------------------------------------------- token state
// One JSON file per account in the state directory, replaced atomically.

struct TokenState {
  std::string chain;          // tokenChain() of the INI token this state descends from
  std::string refreshToken;   // the newest, unused refresh token
  std::string accessToken;
  int64_t accessExpiresMs = 0;  // wall clock
  int64_t updatedMs = 0;
};

/// Identifies "the refresh token as written in the INI" without storing it:
/// hex SHA-256. A state whose chain differs was made from another INI token.
std::string tokenChain(const std::string& iniRefreshToken);
std::string tokenStatePath(const std::string& stateDir, const std::string& account);
std::string tokenLockPath(const std::string& stateDir, const std::string& account);
/// nullopt with *err empty when the file does not exist.
std::optional<TokenState> readTokenState(const std::string& path, std::string* err);
/// Temp file, fsync, rename, fsync the directory; mode 0600.
bool writeTokenState(const std::string& path, const TokenState& s, std::string* err);

/// `slipstream token-exchange`: the helper process. Reads one JSON request on
/// stdin, exchanges the refresh token under the account's lock, saves the
/// rotated token, then prints one JSON result line. Returns the exit status.
int tokenExchangeMain(const Clock& clock);

}  // namespace slip::proxy
