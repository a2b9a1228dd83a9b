// The one-shot subcommands: cache stats/verify, explain, sign.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "conf/clock.h"
#include "conf/conf.h"

namespace slip::cmd {

using Flags = std::vector<std::pair<std::string, std::string>>;

int cache(const conf::Config& cfg, const std::string& sub, const std::vector<std::string>& args);
int explain(const conf::Config& cfg, const Flags& flags);
/// `slipstream sign`: a signed URL expiring `--ttl` after `clock`'s now.
int sign(const conf::Config& cfg, const std::vector<std::string>& args, const Flags& flags,
         const Clock& clock);

}  // namespace slip::cmd
