// admin_client — `slipstream status | prefetch | purge`: the command line's
// side of the admin API (/-/api/v1/, schema in src/admin_api.h), over HTTP
// with libcurl's easy interface. The gateway's address and admin token come
// from the same configuration file the gateway runs on.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "conf/conf.h"

namespace slip::cmd {

using Flags = std::vector<std::pair<std::string, std::string>>;

/// `slipstream status [--url URL]`: a terminal summary (process, cache,
/// transfers with block maps, prefetches with progress bars).
int status(const conf::Config& cfg, const Flags& flags);
/// `slipstream prefetch /MOUNT/PATH [--wait yes|no] [--url URL]`: starts a
/// prefetch and, unless --wait no, follows it with a progress bar.
int prefetch(const conf::Config& cfg, const std::vector<std::string>& args, const Flags& flags);
/// `slipstream purge /MOUNT/PATH` or `slipstream purge --prefix /MOUNT/DIR`.
int purge(const conf::Config& cfg, const std::vector<std::string>& args, const Flags& flags);
/// `slipstream reload -c FILE [--url URL]`: asks the running gateway (its
/// admin API, found from FILE) for its pid and the file it runs on, refuses
/// when that is another file, sends it SIGHUP and waits for the outcome:
/// exit 0 when it took the file, 1 with its errors when it kept running on
/// the old configuration.
int reload(const conf::Config& cfg, const Flags& flags);

/// The gateway's API base URL from the configuration: the first plain
/// listen address (any-address → loopback), else the first tls one.
std::string apiBase(const conf::Config& cfg);

/// `[#########.........]  42 %` for a fraction in [0, 1].
std::string progressBar(double fraction, int width);

/// A block map squeezed into `width` characters: '#' stored, '>' being
/// fetched, '.' missing (a cell is fetched if any block in it is, stored if
/// all are).
std::string blockBar(std::string_view states, int width);

/// The text of `slipstream status` from the three API documents (stats,
/// transfers, prefetch). Empty with *err set when they are not the schema.
std::string renderStatus(std::string_view stats, std::string_view transfers,
                         std::string_view prefetches, int width, std::string* err);

}  // namespace slip::cmd
