#include "proxy/engine.h"

#include <fcntl.h>
#include <openssl/rand.h>
#include <unistd.h>

#include <cstring>
#include <ctime>
#include <filesystem>
#include <random>

#include "proxy/fetch/fetcher.h"
#include "store/store.h"

namespace slip::proxy {

const char* cacheStatusName(CacheStatus s) {
  switch (s) {
    case CacheStatus::None: return "-";
    case CacheStatus::Hit: return "HIT";
    case CacheStatus::Miss: return "MISS";
    case CacheStatus::Partial: return "PARTIAL";
  }
  return "?";
}

Engine::Impl::Impl(event_base* b, const conf::Config& c, store::Store* s, const Clock& clk)
    : base(b),
      cfg(c),
      clock(clk),
      store(s),
      multi(b, static_cast<int>(c.server.upstreamConnections), clk),
      worker(std::make_unique<Worker>(b)),
      links(c, sources, clk, stats),
      listings(c, sources, clk),
      graveyard(b),
      ctx{b, c, clk, multi, links, s, stats, graveyard, poolOf, localRoots} {
  unsigned char r[16];
  if (RAND_bytes(r, sizeof r) != 1) {
    // OpenSSL without entropy: the kernel's, through the standard library.
    // (A guessed value gains nothing: the header only ever causes a refusal.)
    std::random_device rd;
    for (unsigned char& b : r) b = static_cast<unsigned char>(rd());
  }
  static const char kHex[] = "0123456789abcdef";
  ctx.self.name = "X-Slipstream-Self";
  for (unsigned char b : r) {
    ctx.self.value += kHex[b >> 4];
    ctx.self.value += kHex[b & 15];
  }
}

Engine::Impl::~Impl() {
  worker.reset();  // before the root directories it may be reading close
  fetcher.reset();
  for (int fd : localRoots)
    if (fd >= 0) close(fd);
}

Transfer::Options Context::transferOptions(const Link& link, int mount) const {
  Transfer::Options o;
  o.pool = poolOf[mount];
  o.url = link.url;
  o.headers = link.headers;
  o.headers.push_back(self);
  o.connectTimeoutMs = cfg.server.connectTimeoutMs;
  o.headerTimeoutMs = cfg.server.upstreamTimeoutMs;
  o.stallTimeoutMs = cfg.server.stallTimeoutMs;
  return o;
}

Engine::Engine(event_base* base, const conf::Config& cfg, store::Store* store, const Clock& clock)
    : impl_(std::make_unique<Impl>(base, cfg, store, clock)) {}

Engine::~Engine() = default;

bool Engine::init(std::string* err) {
  curl_version_info_data* v = curl_version_info(CURLVERSION_NOW);
  if (!(v->features & CURL_VERSION_ASYNCHDNS)) {
    *err = "libcurl was built without asynchronous DNS: name lookups would block the event loop";
    return false;
  }
  Impl& e = *impl_;
  // Connection pools: one per account, shared by its mounts; one per other mount.
  // Accounts save rotated refresh tokens in state_dir: find out now, not
  // after the first rotation, that it cannot be written.
  if (!e.cfg.accounts.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(e.cfg.server.stateDir, ec);
    if (!ec) std::filesystem::permissions(e.cfg.server.stateDir, std::filesystem::perms::owner_all, ec);
    if (ec || access(e.cfg.server.stateDir.c_str(), W_OK | X_OK) != 0) {
      *err = "state_dir " + e.cfg.server.stateDir + " is not a writable directory (" +
             (ec ? ec.message() : std::string(strerror(errno))) +
             "): accounts keep their rotating refresh tokens there";
      return false;
    }
  }
  for (size_t i = 0; i < e.cfg.accounts.size(); i++) {
    e.accountPool.push_back(e.multi.admission().addPool(static_cast<int>(e.cfg.accounts[i].maxConnections)));
    e.accounts.push_back(makeAliyunAccount(e.cfg, static_cast<int>(i), e.multi, e.clock));
  }
  for (const auto& m : e.cfg.mounts) {
    e.poolOf.push_back(m.accountIndex >= 0 ? e.accountPool[m.accountIndex]
                                           : e.multi.admission().addPool(static_cast<int>(m.maxConnections)));
    int fd = -1;
    if (m.source == conf::SourceType::Local) {
      fd = open(m.root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
      if (fd < 0) {
        *err = "mount " + m.name + ": cannot open root " + m.root + ": " + strerror(errno);
        return false;
      }
    }
    e.localRoots.push_back(fd);
    if (m.source == conf::SourceType::AliyundriveOpen)
      e.sources.push_back(makeAliyunSource(m, *e.accounts[m.accountIndex]));
    else if (m.source == conf::SourceType::Local)
      e.sources.push_back(makeLocalSource(m, fd, *e.worker));
    else
      e.sources.push_back(makeSource(m, e.multi, e.cfg.server));
    e.traits.push_back(sourceTraits(m));
  }
  if (e.store) {
    e.fetcher = std::make_unique<Fetcher>(e.ctx);
    e.ctx.fetcher = e.fetcher.get();
  }
  return true;
}

const std::vector<policy::SourceTraits>& Engine::traits() const { return impl_->traits; }

Stats Engine::snapshot() const {
  Stats s = impl_->stats;
  s.activeTransfers = impl_->multi.running();
  if (store::Store* store = impl_->store) {
    store::Usage u = store->usage();
    s.cacheEnabled = true;
    s.cacheObjects = u.objects;
    s.cacheBlocks = u.blocks;
    s.cacheBytes = u.bytes;
    s.cacheReserved = u.reserved;
    s.cacheMaxBytes = u.maxBytes;
    s.cacheEvictedBlocks = u.evictedBlocks;
    s.cacheDroppedCorrupt = u.droppedCorrupt;
    s.diskQueueBytes = store->queuedBytes();
  }
  for (size_t i = 0; i < impl_->accounts.size(); i++) {
    AccountStats a = impl_->accounts[i]->stats();
    a.downloads = impl_->multi.admission().running(impl_->accountPool[i]);
    a.downloadsWaiting = impl_->multi.admission().waiting(impl_->accountPool[i]);
    s.accounts.push_back(std::move(a));
  }
  return s;
}

std::optional<FillActivity> Engine::activity(const std::string& mount, const std::string& rest) const {
  if (!impl_->fetcher) return std::nullopt;
  return impl_->fetcher->activity(store::objectKey(mount, rest));
}

std::unique_ptr<Prefetch> Engine::prefetch(const Request& req, const PrefetchSpec& spec) {
  if (!impl_->ctx.fetcher) return nullptr;
  return makePrefetch(impl_->ctx, req, spec);
}

std::vector<Purged> Engine::purge(const std::string& mount, const std::string& rest, bool folder) {
  if (!impl_->fetcher) return {};
  return impl_->fetcher->purge(mount, rest, folder);
}

void Engine::quiesce() { impl_->ctx.quiescing = true; }

void Engine::list(int mount, const std::string& rest, ListCb cb) {
  if (mount < 0 || static_cast<size_t>(mount) >= impl_->sources.size()) {
    cb({policy::Reason::UnknownMount, "", nullptr});
    return;
  }
  impl_->listings.list(mount, rest, std::move(cb));
}

void Engine::stat(int mount, const std::string& rest, StatCb cb) {
  if (mount < 0 || static_cast<size_t>(mount) >= impl_->sources.size()) {
    cb({policy::Reason::UnknownMount, "", {}});
    return;
  }
  impl_->listings.stat(mount, rest, std::move(cb));
}

const Header& Engine::selfHeader() const { return impl_->ctx.self; }

std::unique_ptr<Job> Engine::start(const Request& req, Sink* sink) {
  Context& c = impl_->ctx;
  const conf::Mount& m = c.cfg.mounts[req.mountIndex];
  if (m.source == conf::SourceType::Local) return makeLocalJob(c, req, sink);
  if (req.decision.delivery == conf::Delivery::Redirect) return makeRedirectJob(c, req, sink);
  if (req.decision.cache && c.fetcher) return makeCacheJob(c, req, sink);
  return makeStreamJob(c, req, sink);
}

// ------------------------------------------------------------------ headers

Headers bodyHeaders(const ObjectInfo& info, const policy::RangeAnswer& a, const std::string& path,
                    CacheStatus cache) {
  Headers h;
  h.push_back({"Content-Type", info.contentType.empty() ? mimeTypeFor(path) : info.contentType});
  h.push_back({"Content-Length", std::to_string(a.range.size())});
  if (a.kind == policy::RangeAnswer::Kind::Partial)
    h.push_back({"Content-Range", policy::contentRange(a.range, info.size)});
  h.push_back({"Accept-Ranges", "bytes"});
  if (!info.etag.empty()) h.push_back({"ETag", info.etag});
  if (!info.lastModified.empty()) h.push_back({"Last-Modified", info.lastModified});
  std::string_view name = policy::baseName(path);
  if (!name.empty()) h.push_back({"Content-Disposition", policy::contentDisposition(name)});
  if (cache != CacheStatus::None) h.push_back({"X-Cache", cacheStatusName(cache)});
  return h;
}

Headers unsatisfiableHeaders(const ObjectInfo& info, CacheStatus cache) {
  Headers h;
  h.push_back({"Content-Range", policy::contentRangeUnsatisfied(info.size)});
  h.push_back({"Accept-Ranges", "bytes"});
  if (cache != CacheStatus::None) h.push_back({"X-Cache", cacheStatusName(cache)});
  return h;
}

std::string httpDate(int64_t unixSeconds) { return policy::formatHttpDate(unixSeconds); }

std::string mimeTypeFor(const std::string& path) { return policy::mimeType(path); }

}  // namespace slip::proxy
