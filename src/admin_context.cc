// The running gateway as the admin API sees it (admin::AdminContext): what
// stats, transfers and objects report, gathered on the loop thread from the
// server's counters and live exchanges, the engine's snapshot and the store.
// Prefetch and purge go to the engine's fill (src/prefetches.cc keeps the
// jobs).
#include <limits.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>

#include "conf/clock.h"
#include "proxy/sources/aliyun.h"
#include "src/admin_api.h"
#include "src/front.h"
#include "src/version.h"
#include "store/store.h"

namespace slip {
namespace {

using admin::Outcome;
using policy::Reason;

class GatewayAdmin final : public admin::AdminContext {
 public:
  explicit GatewayAdmin(Server::Impl& s) : s_(s) {}

  admin::Stats stats() override;
  std::vector<admin::Transfer> transfers() override;
  Outcome<admin::ObjectPage> objects(const admin::ObjectQuery& q) override {
    Outcome<admin::ObjectPage> page = admin::objectsFromStore(s_.store, s_.cfg().mounts, q);
    if (page.value)
      for (admin::ObjectInfo& o : page.value->objects) markFetching(o.mount, o.path, &o.blocks.states);
    return page;
  }
  Outcome<admin::PrefetchJob> startPrefetch(const std::string& path) override;
  std::vector<admin::PrefetchJob> prefetches() override { return s_.prefetches.list(); }
  std::optional<admin::PrefetchJob> prefetch(const std::string& id) override { return s_.prefetches.get(id); }
  Outcome<admin::PrefetchJob> cancelPrefetch(const std::string& id) override {
    Outcome<admin::PrefetchJob> out = s_.prefetches.cancel(id);
    if (out.value)
      conf::Log::write(conf::LogLevel::Info, "prefetch_cancel",
                       "id=" + id + " path=" + conf::logValue(out.value->path) +
                           " state=" + admin::prefetchStateName(out.value->state));
    return out;
  }
  Outcome<admin::PurgeResult> purge(const admin::PurgeRequest& r) override;

 private:
  admin::CacheStats cacheStats(const proxy::Stats& st) const;
  /// Marks the blocks the fill is fetching now ('F') in a block map drawn
  /// from the store (stored blocks stay 'S').
  void markFetching(const std::string& mount, const std::string& rest, std::string* states) const {
    if (auto a = s_.engine.activity(mount, rest))
      for (uint32_t idx : a->fetching)
        if (idx < states->size() && (*states)[idx] == admin::kBlockMissing) (*states)[idx] = admin::kBlockFetching;
  }
  std::optional<admin::BlockMap> blockMap(const Exchange& ex) const;

  Server::Impl& s_;
};

admin::CacheStats GatewayAdmin::cacheStats(const proxy::Stats& st) const {
  admin::CacheStats c;
  c.enabled = st.cacheEnabled;
  c.bytesUsed = st.cacheBytes;
  c.maxSize = st.cacheMaxBytes;
  c.objects = st.cacheObjects;
  c.blocks = st.cacheBlocks;
  c.evictedBlocks = st.cacheEvictedBlocks;
  if (c.enabled) {
    struct statvfs fs {};
    if (statvfs(s_.cfg().cache.dir.c_str(), &fs) == 0)
      c.diskFree = static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
  }
  // Bytes of responses that went through the cache (an X-Cache header),
  // ended and running, by their X-Cache: HIT, or MISS/PARTIAL.
  Server::Impl::Totals t = s_.totals();  // warm hits the worker threads served included
  c.hitBytes = t.hitBytes;
  c.missBytes = s_.missBytesOut;
  for (const auto& [ex, owned] : s_.active) {
    if (!s_.usesCache(*ex)) continue;
    (ex->entry().cache == "HIT" ? c.hitBytes : c.missBytes) += ex->entry().bytes;
  }
  c.hitRequests = t.hitRequests;
  c.missRequests = s_.missRequests;
  return c;
}

admin::Stats GatewayAdmin::stats() {
  proxy::Stats st = s_.engine.snapshot();
  admin::Stats out;
  out.version = version();
  out.nowUnix = s_.clock.wallSeconds();
  out.startedUnix = s_.startedWallMs / 1000;
  char real[PATH_MAX];
  out.configFile = realpath(s_.cfg().file.c_str(), real) ? real : s_.cfg().file;
  out.configLoadedUnix = s_.gen->loadedWallMs / 1000;  // at start, or the last reload that took
  out.pid = static_cast<long>(getpid());
  out.reloads = s_.reloads;
  out.reloadFailures = s_.reloadFailures;
  if (const auto& lr = s_.lastReload)
    out.lastReload = admin::ReloadInfo{lr->atWallMs, lr->ok, lr->errors, lr->needsRestart};
  out.loopLagMs = static_cast<double>(s_.lagLastUs) / 1000.0;
  out.loopLagMaxMs = static_cast<double>(s_.lagMaxUs) / 1000.0;
  Server::Impl::Totals t = s_.totals();
  out.activeRequests = t.active;
  out.totalRequests = t.requests;
  out.bytesToClients = t.bytesOut;
  out.bytesFromUpstream = st.upstreamBytes;
  out.cache = cacheStats(st);
  for (const conf::Mount& m : s_.cfg().mounts) {
    const Server::Impl::MountFigures& f = s_.mountFigures[m.name];
    admin::MountStats ms;
    ms.name = m.name;
    ms.prefix = m.prefix;
    ms.source = conf::sourceTypeName(m.source);
    if (m.source == conf::SourceType::AliyundriveOpen) ms.account = m.account;
    // Link figures come from the link cache (by mount name); requests that
    // failed because a link was refused count too when the cache saw none.
    auto lc = st.mounts.find(m.name);
    ms.linksResolved = lc == st.mounts.end() ? 0 : lc->second.linksResolved;
    ms.linkRefusals = std::max(f.linkRefusals, lc == st.mounts.end() ? 0 : lc->second.linkRefusals);
    ms.rateLimited = f.rateLimited;
    if (f.lastError != Reason::None)
      ms.lastError = admin::LastError{f.lastErrorUnix, f.lastError, f.lastErrorDetail};
    out.mounts.push_back(std::move(ms));
  }
  for (const proxy::AccountStats& a : st.accounts) {
    admin::AccountStats as;
    as.name = a.name;
    as.authorized = a.authorized;
    as.tokenExchanges = a.tokenExchanges;
    as.tokenFailures = a.tokenFailures;
    as.apiCalls = a.apiCalls;
    as.rateLimited = a.rateLimited;
    as.downloadsOpen = static_cast<uint64_t>(std::max(0, a.downloads));
    as.downloadsWaiting = static_cast<uint64_t>(std::max(0, a.downloadsWaiting));
    // The last rotation is when the rotated token was saved (its state
    // file); only the time is taken from it, never a token.
    std::string err;
    if (auto ts =
            proxy::readTokenState(proxy::tokenStatePath(s_.cfg().server.stateDir, a.name), &err);
        ts && ts->updatedMs > 0)
      as.lastRotationUnix = ts->updatedMs / 1000;
    out.accounts.push_back(std::move(as));
  }
  return out;
}

std::optional<admin::BlockMap> GatewayAdmin::blockMap(const Exchange& ex) const {
  const conf::Mount& m = ex.gen->cfg->mounts[static_cast<size_t>(ex.mount())];
  if (!s_.usesCache(ex)) return std::nullopt;
  auto o = s_.store->storedObject(store::objectKey(m.name, ex.mountPath()));
  if (!o) return std::nullopt;
  admin::BlockMap map{o->meta.size, o->meta.blockSize, admin::blockStates(o->present)};
  markFetching(m.name, ex.mountPath(), &map.states);
  return map;
}

// A prefetch is the admin's own request for the file through the cache
// (route /p/, GET): the rules decide as for a client, except that it has
// no address or User-Agent (rules naming clients or agents do not match
// it), and a delivery that would not cache the file is refused.
Outcome<admin::PrefetchJob> GatewayAdmin::startPrefetch(const std::string& path) {
  using Out = Outcome<admin::PrefetchJob>;
  if (auto joined = s_.prefetches.running(path)) return Out::ok(std::move(*joined));
  if (!s_.store) return Out::fail(Reason::CacheDisabled, "no mount has cache = on");
  const Generation& g = *s_.gen;
  policy::MountMatch mm = policy::matchMount(g.cfg->mounts, path);
  if (mm.index < 0) return Out::fail(Reason::UnknownMount, "no mount serves " + path);
  const conf::Mount& m = g.cfg->mounts[static_cast<size_t>(mm.index)];
  if (m.source == conf::SourceType::Local)
    return Out::fail(Reason::NotCacheable, "mount " + m.name + " is local: its files are read in place");
  if (mm.rest == "/" || mm.rest.empty()) return Out::fail(Reason::NotAFile, "a prefetch names one file");
  policy::RequestFacts facts;
  facts.route = policy::Route::Proxy;
  facts.method = "GET";
  facts.path = path;
  facts.mountIndex = mm.index;
  policy::Decision d = g.rules.decide(*g.cfg, facts, g.setup->traits);
  if (d.needsSize) {  // no probe for a rule's size condition: such conditions do not match
    facts.sizeUnknowable = true;
    d = g.rules.decide(*g.cfg, facts, g.setup->traits);
  }
  if (d.delivery == conf::Delivery::Deny) return Out::fail(Reason::Denied, "rule " + d.rule);
  if (!d.cache || d.delivery != conf::Delivery::Proxy)
    return Out::fail(Reason::NotCacheable, d.rule.empty() ? "mount " + m.name + " does not cache"
                                                          : "rule " + d.rule + " does not cache it");
  if (!s_.prefetches.makeRoom())
    return Out::fail(Reason::TooManyPrefetches,
                     std::to_string(PrefetchRegistry::kMaxJobs) + " prefetch jobs are running");
  proxy::Request req;
  req.id = s_.shared.nextId++;
  req.setup = g.setup;
  req.mountIndex = mm.index;
  req.path = path;
  req.rest = mm.rest;
  req.decision = d;
  std::unique_ptr<proxy::Prefetch> job = s_.engine.prefetch(req, {});
  if (!job) return Out::fail(Reason::CacheDisabled, "no mount has cache = on");
  admin::PrefetchJob j = s_.prefetches.add(path, std::move(job));
  conf::Log::write(conf::LogLevel::Info, "prefetch_start", "id=" + j.id + " path=" + conf::logValue(path));
  return Out::ok(std::move(j));
}

// A file: the mount that serves it. A folder: the mount that serves it (the
// folder inside it) and every mount whose prefix lies in it (whole).
Outcome<admin::PurgeResult> GatewayAdmin::purge(const admin::PurgeRequest& r) {
  using Out = Outcome<admin::PurgeResult>;
  if (!s_.store) return Out::fail(Reason::CacheDisabled, "no mount has cache = on");
  const std::vector<conf::Mount>& mounts = s_.cfg().mounts;
  std::vector<std::pair<const conf::Mount*, std::string>> targets;  // mount, path below it
  policy::MountMatch mm = policy::matchMount(mounts, r.path);
  if (mm.index >= 0) targets.emplace_back(&mounts[static_cast<size_t>(mm.index)], mm.rest);
  if (r.prefix) {
    std::string dir = r.path == "/" ? "/" : r.path + "/";
    for (const conf::Mount& m : mounts)
      if ((dir == "/" || m.prefix.starts_with(dir)) && (mm.index < 0 || &m != &mounts[static_cast<size_t>(mm.index)]))
        targets.emplace_back(&m, "/");
  }
  if (targets.empty()) return Out::fail(Reason::UnknownMount, "no mount serves " + r.path);
  admin::PurgeResult out;
  for (const auto& [m, rest] : targets) {
    for (proxy::Purged& p : s_.engine.purge(m->name, rest, r.prefix)) {
      admin::PurgedObject o;
      o.mount = p.mount;
      o.virtualPath = (m->prefix == "/" ? "" : m->prefix) + p.rest;
      o.path = std::move(p.rest);
      o.size = p.size;
      o.bytes = p.bytes;
      o.inUse = p.inUse;
      out.purged.push_back(std::move(o));
    }
  }
  conf::Log::write(conf::LogLevel::Info, "purge",
                   std::string(r.prefix ? "prefix=" : "path=") + conf::logValue(r.path) +
                       " objects=" + std::to_string(out.purged.size()));
  return Out::ok(std::move(out));
}

std::vector<admin::Transfer> GatewayAdmin::transfers() {
  std::vector<admin::Transfer> out;
  for (const auto& [ex, owned] : s_.active) {
    if (ex->mount() < 0 || !ex->running()) continue;  // admin calls, requests still deciding
    const AccessEntry& e = ex->entry();
    admin::Transfer t;
    t.id = ex->id();
    t.client = ex->client();
    t.userAgent = e.userAgent;
    t.mount = ex->gen->cfg->mounts[static_cast<size_t>(ex->mount())].name;
    t.path = ex->virtualPath();
    t.delivery = e.delivery == "-" ? "" : e.delivery;
    t.cache = e.cache == "-" ? "" : e.cache;
    t.rangeBegin = ex->rangeBegin();
    t.rangeEnd = std::max(ex->rangeEnd(), ex->rangeBegin());
    t.bytesSent = ex->bytesWritten();
    t.speedBps = ex->speed().bytesPerSecond();
    t.startedUnix = ex->startedWallMs() / 1000;
    t.blocks = blockMap(*ex);
    t.upstreamConnections = ex->job ? ex->job->upstreamConnections() : 0;
    out.push_back(std::move(t));
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.id < b.id; });
  return out;
}

}  // namespace

std::unique_ptr<admin::AdminContext> makeAdminContext(Server::Impl& s) {
  return std::make_unique<GatewayAdmin>(s);
}

}  // namespace slip
