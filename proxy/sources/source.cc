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
  e.expiredInARow = 0;
  e.waiters.push_back(std::move(cb));
  resolve(k, mount, rest, client);
}

void LinkCache::resolve(const std::string& k, int mount, const std::string& rest, const ClientInfo& client) {
  Source* src = mounts_.source(mount);
  if (!src) {
    ResolveResult r;
    r.reason = policy::Reason::UnknownMount;
    r.detail = "the mount is no longer configured";
    return resolved(k, mount, rest, client, r);
  }
  stats_.linkResolutions++;
  // The source lives until it answered (a reload may drop its mount meanwhile).
  src->resolve(rest, client, [this, k, mount, rest, client, hold = mounts_.hold(mount)](const ResolveResult& res) {
    resolved(k, mount, rest, client, res);
  });
}

void LinkCache::resolved(const std::string& k, int mount, const std::string& rest, const ClientInfo& client,
                         const ResolveResult& res) {
  auto it = entries_.find(k);
  if (it == entries_.end()) return;
  Entry& e = it->second;
  const conf::Mount* m = mounts_.mount(mount);
  Source* src = mounts_.source(mount);
  const std::string name = m ? m->name : std::string();
  ResolveResult out = res;
  if (m) {
    MountCounters& mc = stats_.mounts[name];
    if (res.reason == policy::Reason::None) mc.linksResolved++;
    else if (res.reason == policy::Reason::UpstreamDenied || res.reason == policy::Reason::AccountAuth)
      mc.linkRefusals++;
  }
  if (res.reason == policy::Reason::None && (!m || !src)) {
    out = {};
    out.reason = policy::Reason::UnknownMount;
    out.detail = "the mount is no longer configured";
  }
  if (out.reason == policy::Reason::None) {
    // Checked once, here, for every source: a link that cannot be fetched
    // is an answer (502), never cached, never handed to curl or a client.
    // An http mount's links are its own base_url: credentials there are the user's.
    const bool ownUrl = m->source == conf::SourceType::Http;
    if (auto why = policy::linkProblem(res.link.url, self_, ownUrl)) {
      conf::Log::write(conf::LogLevel::Warn, "source_bad_link",
                       "mount=" + conf::logValue(name) + " why=" + conf::logValue(*why));
      out = {};
      out.reason = policy::Reason::SourceBadLink;
      out.detail = *why;
    }
  }
  if (out.reason == policy::Reason::None) {
    int64_t now = clock_.wallMs();
    Link& l = out.link;
    std::optional<int64_t> written = policy::writtenLinkExpiryMs(l.url, now);
    if (written && *written <= now) {
      // Never handed to anyone: ask again, a few times.
      conf::Log::write(conf::LogLevel::Warn, "link_expired",
                       "mount=" + conf::logValue(name) + " path=" + conf::logValue(rest) +
                           " expired_ms_ago=" + std::to_string(now - *written) +
                           " attempt=" + std::to_string(e.expiredInARow + 1));
      if (++e.expiredInARow < kExpiredResolutions) return resolve(k, mount, rest, client);
      out = {};
      out.reason = policy::Reason::LinkExpired;
      out.detail = "the source returned " + std::to_string(e.expiredInARow) +
                   " links in a row whose written expiry had passed (" +
                   policy::formatHttpDate(*written / 1000) + ")";
    } else {
      l.serial = nextSerial_++;
      l.obtainedAtMs = now;
      if (written) l.expiresAtMs = l.expiresAtMs ? std::min(l.expiresAtMs, *written) : *written;
      int64_t ttl = src->defaultTtlMs();
      if (l.expiresAtMs == 0 && ttl > 0) l.expiresAtMs = now + ttl;
      e.pending = false;
      e.validUntilMs = policy::linkUsableUntil(l.obtainedAtMs, l.expiresAtMs);
      e.link = l;
    }
  }
  std::vector<ResolveCb> waiters;
  waiters.swap(e.waiters);
  if (out.reason != policy::Reason::None) entries_.erase(it);  // failures are not cached
  for (auto& w : waiters) w(out);
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
