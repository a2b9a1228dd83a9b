#include "proxy/sources/source.h"

#include "proxy/fetch/curl_multi.h"

namespace slip::proxy {
namespace {

/// `http`: base_url + percent-encoded path; the mount's header lines go with
/// every upstream request. Links never expire.
class HttpSource : public Source {
 public:
  explicit HttpSource(const conf::Mount& m) : mount_(m) {
    base_ = m.baseUrl;
    while (!base_.empty() && base_.back() == '/') base_.pop_back();
    for (const auto& h : m.headers) headers_.push_back({h.name, h.value});
  }
  void resolve(const std::string& rest, const ClientInfo&, ResolveCb cb) override {
    ResolveResult r;
    r.link.url = base_ + policy::encodePath(rest);
    r.link.headers = headers_;
    cb(r);
  }
  int64_t defaultTtlMs() const override { return mount_.linkTtlMs; }

 private:
  const conf::Mount& mount_;
  std::string base_;
  Headers headers_;
};

}  // namespace

policy::SourceTraits sourceTraits(const conf::Mount& m) {
  policy::SourceTraits t;
  t.hasLink = m.source != conf::SourceType::Local;
  // AList links usually need the headers AList returns (Referer, UA).
  t.needsHeaders = m.source == conf::SourceType::Alist || !m.headers.empty();
  t.clientBound = m.linkBind != conf::LinkBind::None;
  return t;
}

std::unique_ptr<Source> makeAlistSource(const conf::Mount& m, CurlMulti& multi,
                                        const conf::Server& s);

std::unique_ptr<Source> makeSource(const conf::Mount& m, CurlMulti& multi, const conf::Server& s) {
  switch (m.source) {
    case conf::SourceType::Http: return std::make_unique<HttpSource>(m);
    case conf::SourceType::Alist: return makeAlistSource(m, multi, s);
    case conf::SourceType::Local: return nullptr;  // needs its root and worker: the engine makes it
    case conf::SourceType::AliyundriveOpen: return nullptr;  // needs its account: the engine makes it
  }
  return nullptr;
}

// ------------------------------------------------------------------ LinkCache

namespace {
constexpr size_t kMaxEntries = 4096;
}  // namespace

LinkCache::LinkCache(MountDirectory& mounts, const Clock& clock, Stats& stats)
    : mounts_(mounts), clock_(clock), stats_(stats) {}

LinkCache::LinkCache(const conf::Config& cfg, std::vector<std::unique_ptr<Source>>& sources,
                     const Clock& clock, Stats& stats)
    : owned_(std::make_unique<IndexedMounts>(cfg, sources)), mounts_(*owned_), clock_(clock), stats_(stats) {}

std::string LinkCache::key(const conf::Mount& m, int mount, const std::string& rest,
                           const ClientInfo& client) const {
  std::string k = std::to_string(mount) + '\n' + rest;
  switch (m.linkBind) {
    case conf::LinkBind::None: break;
    case conf::LinkBind::Ua: k += '\n' + client.userAgent; break;
    case conf::LinkBind::UaIp: k += '\n' + client.userAgent + '\n' + client.address; break;
  }
  return k;
}

void LinkCache::get(int mount, const std::string& rest, const ClientInfo& client, ResolveCb cb) {
  const conf::Mount* m = mounts_.mount(mount);
  Source* src = mounts_.source(mount);
  if (!m || !src) {
    ResolveResult r;
    r.reason = policy::Reason::UnknownMount;
    r.detail = "the mount is no longer configured";
    cb(r);
    return;
  }
  std::string k = key(*m, mount, rest, client);
  int64_t now = clock_.wallMs();
  auto it = entries_.find(k);
  if (it != entries_.end()) {
    Entry& e = it->second;
    if (e.pending) {
      e.waiters.push_back(std::move(cb));
      return;
    }
    if (now < e.validUntilMs) {
      ResolveResult r;
      r.link = e.link;
      cb(r);
      return;
    }
  }
  if (entries_.size() >= kMaxEntries) {
    for (auto i = entries_.begin(); i != entries_.end();) i = i->second.pending ? std::next(i) : entries_.erase(i);
  }
  Entry& e = entries_[k];
  e.pending = true;
  e.waiters.push_back(std::move(cb));
  stats_.linkResolutions++;
  int64_t ttl = src->defaultTtlMs();
  std::string name = m->name;
  // The source lives until it answered (a reload may drop its mount meanwhile).
  src->resolve(rest, client, [this, k, ttl, name, hold = mounts_.hold(mount)](const ResolveResult& res) {
    auto it2 = entries_.find(k);
    if (it2 == entries_.end()) return;
    MountCounters& mc = stats_.mounts[name];
    if (res.reason == policy::Reason::None) mc.linksResolved++;
    else if (res.reason == policy::Reason::UpstreamDenied || res.reason == policy::Reason::AccountAuth)
      mc.linkRefusals++;
    std::vector<ResolveCb> waiters;
    waiters.swap(it2->second.waiters);
    ResolveResult out = res;
    if (res.reason == policy::Reason::None) {
      Entry& e2 = it2->second;
      e2.pending = false;
      out.link.serial = nextSerial_++;
      int64_t now2 = clock_.wallMs();
      out.link.obtainedAtMs = now2;
      int64_t expires = out.link.expiresAtMs;
      if (expires == 0 && ttl > 0) expires = now2 + ttl;
      out.link.expiresAtMs = expires;
      e2.validUntilMs = policy::linkUsableUntil(out.link.obtainedAtMs, out.link.expiresAtMs);
      e2.link = out.link;
    } else {
      entries_.erase(it2);  // failures are not cached
    }
    for (auto& w : waiters) w(out);
  });
}

void LinkCache::invalidate(int mount, const std::string& rest, const ClientInfo& client,
                           uint64_t serial) {
  const conf::Mount* m = mounts_.mount(mount);
  if (!m) return;
  stats_.mounts[m->name].linkRefusals++;  // the upstream refused a link
  auto it = entries_.find(key(*m, mount, rest, client));
  if (it != entries_.end() && !it->second.pending && it->second.link.serial == serial)
    entries_.erase(it);
}

}  // namespace slip::proxy
