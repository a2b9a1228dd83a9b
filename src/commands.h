// The one-shot subcommands: check, cache stats/verify/reset, explain, sign.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "conf/conf.h"

namespace slip::cmd {

using Flags = std::vector<std::pair<std::string, std::string>>;

/// `slipstream cache stats|verify|reset`.
int cache(const conf::Config& cfg, const std::string& sub, const std::vector<std::string>& args);
/// `slipstream check`: the configuration loaded; now whether this user can
/// write the cache directory and state_dir (or create them), and a warning
/// when min_free leaves the cache no room at all.
int check(const conf::Config& cfg);
/// Whether any mount or rule caches (the gateway then opens the store).
bool cacheInUse(const conf::Config& cfg);
int explain(const conf::Config& cfg, const Flags& flags);
int sign(const conf::Config& cfg, const std::vector<std::string>& args, const Flags& flags);

}  // namespace slip::cmd
