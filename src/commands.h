// The one-shot subcommands: cache stats/verify, explain, sign.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "conf/conf.h"

namespace slip::cmd {

using Flags = std::vector<std::pair<std::string, std::string>>;

int cache(const conf::Config& cfg, const std::string& sub, const std::vector<std::string>& args);
int explain(const conf::Config& cfg, const Flags& flags);
int sign(const conf::Config& cfg, const std::vector<std::string>& args, const Flags& flags);

}  // namespace slip::cmd
