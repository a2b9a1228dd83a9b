// Private to proxy/: the small context every job and the fill get (instead
// of the whole engine), the Engine's state, and the job factories. See
// proxy/DESIGN.md for how the pieces fit.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "conf/loop.h"
#include "proxy/fetch/curl_multi.h"
#include "proxy/proxy.h"
#include "conf/clock.h"
#include "conf/worker.h"
#include "proxy/sources/aliyun.h"
#include "proxy/sources/listing.h"
#include "proxy/sources/source.h"

namespace slip::proxy {

class Fetcher;

/// Largest piece a job reads from disk per step.
inline constexpr size_t kReadChunk = 128 * 1024;

/// One [account] as one configuration built it (shared by the Setups whose
/// account section is the same).
struct AccountRun {
  std::shared_ptr<const conf::Config> cfg;  // the account refers into it
  const conf::Account* conf = nullptr;
  int pool = -1;                            // its mounts' connection pool
  std::unique_ptr<AliyunAccount> account;
};

/// One mount as one configuration built it. Kept alive by the Setups that
/// have it, by the requests and fill objects that use it and by calls to its
/// source in flight; its id is never reused.
struct MountRun {
  MountRun() = default;
  MountRun(const MountRun&) = delete;
  MountRun& operator=(const MountRun&) = delete;
  ~MountRun();

  int id = -1;                              // keys the link and listing caches
  std::shared_ptr<const conf::Config> cfg;  // `m`, and what the source refers to, live in it
  const conf::Mount* m = nullptr;
  std::shared_ptr<AccountRun> account;      // aliyundrive_open (outlives `source`)
  int rootFd = -1;                          // local: the root directory
  Worker* worker = nullptr;                 // local: reads the root; closes it after them
  std::unique_ptr<Source> source;
  int pool = -1;                            // Admission pool (by mount or account name)
  int trust = 0;                            // TLS trust set of its downloads (TrustStores id)
  policy::SourceTraits traits;
};

/// What a job (and the fill) may use: nothing else of the engine.
struct Context {
  event_base* base;
  const Clock& clock;
  CurlMulti& multi;
  LinkCache& links;
  store::Store* store;                // null when no mount caches
  Stats& stats;
  Graveyard& graveyard;               // frees what leaves inside its own callback
  MountDirectory& mounts;             // mount ids → MountRun
  Fetcher* fetcher = nullptr;         // the block cache's fill; null without a store
  bool quiescing = false;             // shutting down: no new upstream work
  Header self;                        // on every download (see Engine::selfHeader)
  SetupPtr current;                   // the configuration new work uses

  /// The current configuration (server-wide settings: upstream_connections,
  /// timeouts, the cache's).
  const conf::Config& cfg() const { return *current->cfg; }
  /// The mount a request was decided with (the engine set its setup).
  const std::shared_ptr<MountRun>& mountOf(const Request& r) const {
    return r.setup->mounts[static_cast<size_t>(r.mountIndex)];
  }
  /// Options for a download transfer of `link` on mount `m` (in its
  /// connection pool).
  Transfer::Options transferOptions(const Link& link, const MountRun& m) const;
  Transfer::Options transferOptions(const Link& link, const Request& r) const {
    return transferOptions(link, *mountOf(r));
  }
};

struct Engine::Impl final : MountDirectory {
  Impl(event_base* b, std::shared_ptr<const conf::Config> c, store::Store* s, const Clock& clk);
  ~Impl() override;

  // MountDirectory: mount ids of every Setup still in use.
  Source* source(int id) override;
  const conf::Mount* mount(int id) override;
  std::shared_ptr<const void> hold(int id) override;
  std::shared_ptr<MountRun> run(int id);

  /// The pool named `name` ("account NAME", "mount NAME"): the same across
  /// reloads, so old and new transfers of an account share its limit.
  int pool(const std::string& name, int64_t limit);
  std::shared_ptr<AccountRun> buildAccount(const std::shared_ptr<const conf::Config>& cfg, size_t i);
  std::shared_ptr<MountRun> buildMount(const std::shared_ptr<const conf::Config>& cfg, size_t i,
                                       const std::vector<std::shared_ptr<AccountRun>>& accounts,
                                       std::string* err);
  /// The Request as jobs see it: a Setup and the mount's id.
  Request bind(const Request& req) const;

  event_base* base;
  std::shared_ptr<const conf::Config> first;     // the configuration at start (until init)
  const Clock& clock;
  store::Store* store;
  Stats stats;
  CurlMulti multi;
  std::unique_ptr<Worker> worker;                // blocking calls off the loop (local listings)
  std::map<int, std::weak_ptr<MountRun>> runs;   // by id
  std::map<std::string, int> pools;              // by name
  int nextMountId = 0;
  uint64_t nextGeneration = 1;
  std::vector<std::string> self;                 // the listen addresses, "host:port" as bound
  LinkCache links;
  ListingCache listings;
  Graveyard graveyard;
  Context ctx;
  std::unique_ptr<Fetcher> fetcher;              // block cache fill; null without a store
};

/// What a proxied response says about its object.
struct ObjectInfo {
  uint64_t size = 0;
  std::string etag;
  std::string lastModified;
  std::string contentType;
};

/// Headers of a proxied 200/206 (Content-Length, Content-Range, validators,
/// Content-Disposition, Accept-Ranges, X-Cache).
Headers bodyHeaders(const ObjectInfo& info, const policy::RangeAnswer& answer,
                    const std::string& path, CacheStatus cache);
/// `Retry-After: <s>` for a busy upstream's 503 (none when s < 0).
Headers retryAfterHeaders(int64_t seconds);
/// Headers of a 416 answer.
Headers unsatisfiableHeaders(const ObjectInfo& info, CacheStatus cache);
/// RFC 9110 IMF-fixdate.
std::string httpDate(int64_t unixSeconds);
/// Content-Type for a file name, by extension.
std::string mimeTypeFor(const std::string& path);

std::unique_ptr<Job> makeRedirectJob(Context& c, const Request& r, Sink* s);
std::unique_ptr<Job> makeStreamJob(Context& c, const Request& r, Sink* s);
/// A StreamJob that continues a response whose head is out at byte `sent`
/// of `answer`'s range (If-Range on info's validator; no validator: the
/// connection closes short).
std::unique_ptr<Job> continueStreamJob(Context& c, const Request& r, Sink* s, const ObjectInfo& info,
                                       const policy::RangeAnswer& answer, uint64_t sent);
std::unique_ptr<Job> makeLocalJob(Context& c, const Request& r, Sink* s);
std::unique_ptr<Job> makeCacheJob(Context& c, const Request& r, Sink* s);
std::unique_ptr<Prefetch> makePrefetch(Context& c, const Request& r, const PrefetchSpec& spec);

}  // namespace slip::proxy
