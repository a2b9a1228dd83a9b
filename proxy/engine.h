// Private to proxy/: the small context every job and the fill get (instead
// of the whole engine), the Engine's state, and the job factories. See
// proxy/DESIGN.md for how the pieces fit.
#pragma once

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

/// What a job (and the fill) may use: nothing else of the engine.
struct Context {
  event_base* base;
  const conf::Config& cfg;
  const Clock& clock;
  CurlMulti& multi;
  LinkCache& links;
  store::Store* store;                // null when no mount caches
  Stats& stats;
  Graveyard& graveyard;               // frees what leaves inside its own callback
  const std::vector<int>& poolOf;     // per mount: its connection pool
  const std::vector<int>& localRoots; // per mount: directory fd, or -1
  Fetcher* fetcher = nullptr;         // the block cache's fill; null without a store
  bool quiescing = false;             // shutting down: no new upstream work
  Header self;                        // on every download (see Engine::selfHeader)

  /// Options for a download transfer of `link` on mount `mount` (in its
  /// connection pool).
  Transfer::Options transferOptions(const Link& link, int mount) const;
};

struct Engine::Impl {
  Impl(event_base* b, const conf::Config& c, store::Store* s, const Clock& clk);
  ~Impl();

  event_base* base;
  const conf::Config& cfg;
  const Clock& clock;
  store::Store* store;
  Stats stats;
  CurlMulti multi;
  std::unique_ptr<Worker> worker;                // blocking calls off the loop (local listings)
  std::vector<std::unique_ptr<AliyunAccount>> accounts;  // per [account]; outlive the sources
  std::vector<std::unique_ptr<Source>> sources;  // per mount
  std::vector<int> localRoots;                   // per mount: directory fd, or -1
  std::vector<policy::SourceTraits> traits;
  std::vector<int> poolOf;                       // per mount: its connection pool
  std::vector<int> accountPool;                  // per account: the pool its mounts share
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
/// Headers of a 416 answer.
Headers unsatisfiableHeaders(const ObjectInfo& info, CacheStatus cache);
/// RFC 9110 IMF-fixdate.
std::string httpDate(int64_t unixSeconds);
/// Content-Type for a file name, by extension.
std::string mimeTypeFor(const std::string& path);

std::unique_ptr<Job> makeRedirectJob(Context& c, const Request& r, Sink* s);
std::unique_ptr<Job> makeStreamJob(Context& c, const Request& r, Sink* s);
std::unique_ptr<Job> makeLocalJob(Context& c, const Request& r, Sink* s);
std::unique_ptr<Job> makeCacheJob(Context& c, const Request& r, Sink* s);
std::unique_ptr<Prefetch> makePrefetch(Context& c, const Request& r, const PrefetchSpec& spec);

}  // namespace slip::proxy
