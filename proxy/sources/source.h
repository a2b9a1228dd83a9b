// Sources resolve a path below a mount to an upstream link, and the link
// cache keeps resolved links until shortly before they expire, coalescing
// concurrent resolutions of one path (SPEC §4).
#pragma once

#include <algorithm>
#include <climits>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "conf/clock.h"
#include "conf/conf.h"
#include "policy/policy.h"
#include "proxy/proxy.h"

namespace slip::proxy {

class CurlMulti;

/// An upstream link: where to fetch and the headers the upstream demands.
struct Link {
  std::string url;
  Headers headers;
  int64_t expiresAtMs = 0;  // wall clock; 0 = never
  int64_t obtainedAtMs = 0; // wall clock, when it was resolved
  uint64_t serial = 0;      // distinguishes re-resolutions of one path
};

/// Whether `l` may still start transfers at `nowMs` (policy::linkUsable: the
/// link cache and the fetcher judge links by this one rule).
inline bool linkUsable(const Link& l, int64_t nowMs) {
  return policy::linkUsable(l.obtainedAtMs, l.expiresAtMs, nowMs);
}

struct ResolveResult {
  policy::Reason reason = policy::Reason::None;
  std::string detail;
  Link link;
};
using ResolveCb = std::function<void(const ResolveResult&)>;

/// The client facts a client-bound link depends on.
struct ClientInfo {
  std::string address;
  std::string userAgent;
};

class Source {
 public:
  virtual ~Source() = default;
  /// Resolves `rest` (the path below the mount, decoded) to a link. May call
  /// back synchronously.
  virtual void resolve(const std::string& rest, const ClientInfo& client, ResolveCb cb) = 0;
  /// How long a link may be used when the source reports no expiry; 0 = forever.
  virtual int64_t defaultTtlMs() const = 0;
  /// Lists the folder `rest` (decoded; "" or "/" = the mount's root), in any
  /// order and unfiltered: the ListingCache sorts, filters and caches. May
  /// call back synchronously. The default answers CannotList.
  virtual void list(const std::string& rest, ListCb cb);
  /// How long the ListingCache may reuse a listing; 0 = never (the source
  /// caches its own, as an aliyundrive_open account does).
  virtual int64_t listTtlMs() const { return 0; }
};

/// Builds the source of an http or alist mount (the engine makes the others:
/// makeLocalSource, makeAliyunSource).
std::unique_ptr<Source> makeSource(const conf::Mount& m, CurlMulti& multi, const conf::Server& s);

/// The mounts the link and listing caches serve, by id. The engine's ids
/// are stable across configuration reloads (a mount whose settings changed
/// gets a new id, and its old one lives while requests still use it).
class MountDirectory {
 public:
  virtual ~MountDirectory() = default;
  /// Mount `id`'s source and settings; null when no such mount lives.
  virtual Source* source(int id) = 0;
  virtual const conf::Mount* mount(int id) = 0;
  /// Keeps mount `id` (its source) alive while a call to it is in flight.
  virtual std::shared_ptr<const void> hold(int id) = 0;
};

/// A MountDirectory over a Config and its sources (ids are indexes); for
/// callers without reloads. Neither is owned.
class IndexedMounts final : public MountDirectory {
 public:
  IndexedMounts(const conf::Config& cfg, std::vector<std::unique_ptr<Source>>& sources)
      : cfg_(cfg), sources_(sources) {}
  Source* source(int id) override {
    return id >= 0 && static_cast<size_t>(id) < sources_.size() ? sources_[id].get() : nullptr;
  }
  const conf::Mount* mount(int id) override {
    return id >= 0 && static_cast<size_t>(id) < cfg_.mounts.size() ? &cfg_.mounts[id] : nullptr;
  }
  std::shared_ptr<const void> hold(int) override { return nullptr; }

 private:
  const conf::Config& cfg_;
  std::vector<std::unique_ptr<Source>>& sources_;
};

/// Resolved links by (mount, path[, client]); one resolution in flight per key.
///
/// A link lives until the expiry its source reports, else the expiry written
/// in the link itself (policy::writtenLinkExpiryMs: x-oss-expires, X-Amz-*,
/// Expires, ...; the earlier of the two when both say), else the source's
/// default TTL (`link_ttl`). A link whose written expiry is already past when
/// it arrives is never handed out: it is resolved again, and after
/// kExpiredResolutions such links in a row the callers get LinkExpired (502).
class LinkCache {
 public:
  explicit LinkCache(MountDirectory& mounts, const Clock& clock, Stats& stats);
  /// Over a Config and its sources (indexed like cfg.mounts).
  LinkCache(const conf::Config& cfg, std::vector<std::unique_ptr<Source>>& sources,
            const Clock& clock, Stats& stats);

  /// Calls back with a usable link: a cached one, or a fresh resolution that
  /// any concurrent callers share.
  void get(int mount, const std::string& rest, const ClientInfo& client, ResolveCb cb);
  /// Forgets the link with this serial (the upstream refused it), so the next
  /// get() resolves again. A newer link for the key is kept.
  void invalidate(int mount, const std::string& rest, const ClientInfo& client, uint64_t serial);
  /// The gateway's own listen addresses ("host:port"): links to them are refused.
  void setSelf(std::vector<std::string> hostPorts) { self_ = std::move(hostPorts); }

  /// Resolutions that may return an already expired link before callers get
  /// LinkExpired.
  static constexpr int kExpiredResolutions = 3;

 private:
  struct Entry {
    bool pending = false;
    Link link;
    int64_t validUntilMs = 0;  // policy::linkUsableUntil of the link
    std::vector<ResolveCb> waiters;
    int expiredInARow = 0;     // resolutions of this round that came back expired
  };
  std::string key(const conf::Mount& m, int mount, const std::string& rest, const ClientInfo& client) const;
  void resolve(const std::string& k, int mount, const std::string& rest, const ClientInfo& client);
  void resolved(const std::string& k, int mount, const std::string& rest, const ClientInfo& client,
                const ResolveResult& res);

  std::unique_ptr<IndexedMounts> owned_;  // the Config-and-sources constructor's
  MountDirectory& mounts_;
  const Clock& clock_;
  Stats& stats_;
  std::map<std::string, Entry> entries_;
  std::vector<std::string> self_;
  uint64_t nextSerial_ = 1;
};

}  // namespace slip::proxy
