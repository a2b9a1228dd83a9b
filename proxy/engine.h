// Private to proxy/: the Engine's state shared by the jobs, and the job
// factories. See proxy/DESIGN.md for how the pieces fit.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "proxy/sources/aliyun.h"
#include "proxy/fetch/curl_multi.h"
#include "proxy/proxy.h"
#include "proxy/sources/source.h"

namespace slip::proxy {

class Fetcher;

/// Largest piece a job reads from disk per step.
inline constexpr size_t kReadChunk = 128 * 1024;

struct Engine::Impl {
  Impl(event_base* b, const conf::Config& c, store::Store* s, const Clock& clk);
  ~Impl();

  event_base* base;
  const conf::Config& cfg;
  const Clock& clock;
  store::Store* store;
  Stats stats;
  CurlMulti multi;
  std::vector<std::unique_ptr<AliyunAccount>> accounts;  // per [account]; outlive the sources
  std::vector<std::unique_ptr<Source>> sources;  // per mount; null for `local`
  std::vector<int> localRoots;                   // per mount: directory fd, or -1
  std::vector<policy::SourceTraits> traits;
  std::vector<int> poolOf;                       // per mount: its CurlMulti connection pool
  std::vector<int> accountPool;                  // per account: the pool its mounts share
  LinkCache links;
  std::unique_ptr<Fetcher> fetcher;              // block cache fill; null without a store
  bool quiescing = false;

  /// Options for a download transfer of `link` on mount `mount` (in its
  /// connection pool).
  Transfer::Options transferOptions(const Link& link, int mount) const;
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

std::unique_ptr<Job> makeRedirectJob(Engine::Impl& e, const Request& r, Sink* s);
std::unique_ptr<Job> makeStreamJob(Engine::Impl& e, const Request& r, Sink* s);
std::unique_ptr<Job> makeLocalJob(Engine::Impl& e, const Request& r, Sink* s);
std::unique_ptr<Job> makeCacheJob(Engine::Impl& e, const Request& r, Sink* s);

}  // namespace slip::proxy
