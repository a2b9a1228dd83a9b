// The one-shot subcommands: check, cache stats/verify/reset, explain, sign, strm.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "conf/clock.h"
#include "conf/conf.h"

namespace slip::cmd {

using Flags = std::vector<std::pair<std::string, std::string>>;

/// "http://HOST:PORT" of the first `listen` address (a wildcard address
/// becomes loopback); "" when there is none.
std::string defaultBaseUrl(const conf::Config& cfg);
/// The gateway URL of a decoded virtual path ("/movies/a b.mkv"): `base`,
/// then /d (not on an edge), the percent-encoded path, and ?sign= with
/// `expiry` (Unix seconds, 0 = never) when sign_secret is set.
std::string gatewayUrl(const conf::Config& cfg, std::string base, const std::string& virtualPath,
                       int64_t expiry);

/// `slipstream cache stats|verify|reset`.
int cache(const conf::Config& cfg, const std::string& sub, const std::vector<std::string>& args);
/// `slipstream check`: the configuration loaded; now whether this user can
/// write the cache directory and state_dir (or create them), and a warning
/// when min_free leaves the cache no room at all.
int check(const conf::Config& cfg);
/// Whether any mount or rule caches (the gateway then opens the store).
bool cacheInUse(const conf::Config& cfg);
int explain(const conf::Config& cfg, const Flags& flags);
/// `slipstream sign`: a signed URL expiring `--ttl` after `clock`'s now.
int sign(const conf::Config& cfg, const std::vector<std::string>& args, const Flags& flags,
         const Clock& clock);
/// `slipstream passwd`: a yescrypt hash of the password on stdin, for
/// `[user NAME] password_hash`.
int passwd();
/// `slipstream strm`: exports a mount as .strm files (src/strm.cc); signs
/// expire `--sign-ttl` after `clock`'s now.
int strm(const conf::Config& cfg, const Flags& flags, bool prune, const Clock& clock);

}  // namespace slip::cmd
