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

Engine::Impl::Impl(event_base* b, std::shared_ptr<const conf::Config> c, store::Store* s, const Clock& clk)
    : base(b),
      first(std::move(c)),
      clock(clk),
      store(s),
      multi(b, static_cast<int>(first->server.upstreamConnections), clk),
      worker(std::make_unique<Worker>(b)),
      links(*this, clk, stats),
      listings(*this, clk),
      graveyard(b),
      ctx{b, clk, multi, links, s, stats, graveyard, *this} {
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
  // Until init() builds the first Setup: a Setup without mounts.
  auto empty = std::make_shared<Setup>();
  empty->cfg = first;
  ctx.current = empty;
}

Engine::Impl::~Impl() {
  fetcher.reset();  // its objects let go of their mounts
  // Calls in flight hold their mount (a cycle through the source or the
  // account that owns the call): stop them, which drops those holds.
  std::vector<std::shared_ptr<MountRun>> live;
  for (auto& [id, w] : runs)
    if (auto r = w.lock()) live.push_back(std::move(r));
  for (auto& r : live) r->source.reset();
  for (auto& r : live)
    if (r->account) r->account->account.reset();
  worker.reset();  // waits for the listing it runs, drops the rest
  for (auto& r : live) r->worker = nullptr;  // roots close at once from now on
  live.clear();
  ctx.current.reset();
  first.reset();
}

MountRun::~MountRun() {
  source.reset();
  if (rootFd < 0) return;
  // Listings of this root may still be queued on the worker: close it
  // behind them (jobs run in order). Without a worker, at once.
  int fd = rootFd;
  if (worker) worker->post([] {}, [fd] { close(fd); });
  else close(fd);
}

std::shared_ptr<MountRun> Engine::Impl::run(int id) {
  auto it = runs.find(id);
  if (it == runs.end()) return nullptr;
  std::shared_ptr<MountRun> r = it->second.lock();
  if (!r) runs.erase(it);
  return r;
}

Source* Engine::Impl::source(int id) {
  auto r = run(id);
  return r ? r->source.get() : nullptr;  // held by whoever asks (a request, an object)
}

const conf::Mount* Engine::Impl::mount(int id) {
  auto r = run(id);
  return r ? r->m : nullptr;
}

// The last hold may be dropped inside the source's own code (the call that
// finished is freed by the source), where freeing the mount — and with it
// the source — must not happen: the engine's graveyard frees it from the loop.
std::shared_ptr<const void> Engine::Impl::hold(int id) {
  struct Held {
    std::shared_ptr<MountRun> run;
  };
  auto r = run(id);
  if (!r) return nullptr;
  Graveyard* gy = &graveyard;
  return std::shared_ptr<const Held>(new Held{std::move(r)},
                                     [gy](const Held* h) { gy->bury(std::unique_ptr<Held>(const_cast<Held*>(h))); });
}

Transfer::Options Context::transferOptions(const Link& link, const MountRun& m) const {
  Transfer::Options o;
  o.pool = m.pool;
  o.url = link.url;
  o.headers = link.headers;
  o.headers.push_back(self);
  const conf::Server& s = cfg().server;  // timeouts: the current configuration's
  o.connectTimeoutMs = s.connectTimeoutMs;
  o.headerTimeoutMs = s.upstreamTimeoutMs;
  o.stallTimeoutMs = s.stallTimeoutMs;
  o.minSpeed = s.minSpeed;
  o.trust = m.trust;
  return o;
}

Engine::Engine(event_base* base, std::shared_ptr<const conf::Config> cfg, store::Store* store,
               const Clock& clock)
    : impl_(std::make_unique<Impl>(base, std::move(cfg), store, clock)) {}

Engine::~Engine() = default;

int Engine::Impl::pool(const std::string& name, int64_t limit) {
  auto it = pools.find(name);
  if (it != pools.end()) return it->second;
  int id = multi.admission().addPool(static_cast<int>(limit));
  pools[name] = id;
  return id;
}

std::shared_ptr<AccountRun> Engine::Impl::buildAccount(const std::shared_ptr<const conf::Config>& cfg, size_t i) {
  auto a = std::make_shared<AccountRun>();
  a->cfg = cfg;
  a->conf = &cfg->accounts[i];
  a->pool = pool("account " + a->conf->name, a->conf->maxConnections);
  a->account = makeAliyunAccount(*cfg, static_cast<int>(i), multi, clock);
  return a;
}

std::shared_ptr<MountRun> Engine::Impl::buildMount(const std::shared_ptr<const conf::Config>& cfg, size_t i,
                                                   const std::vector<std::shared_ptr<AccountRun>>& accounts,
                                                   std::string* err) {
  const conf::Mount& m = cfg->mounts[i];
  auto r = std::make_shared<MountRun>();
  r->cfg = cfg;
  r->m = &m;
  if (m.accountIndex >= 0) r->account = accounts[static_cast<size_t>(m.accountIndex)];
  r->pool = r->account ? r->account->pool : pool("mount " + m.name, m.maxConnections);
  if (m.source == conf::SourceType::Local) {
    r->rootFd = open(m.root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (r->rootFd < 0) {
      *err = "mount " + m.name + ": cannot open root " + m.root + ": " + strerror(errno);
      return nullptr;
    }
    r->worker = worker.get();
    r->source = makeLocalSource(m, r->rootFd, *worker);
  } else if (m.source == conf::SourceType::AliyundriveOpen) {
    r->source = makeAliyunSource(m, *r->account->account);
  } else {
    r->source = makeSource(m, multi, cfg->server);
  }
  r->traits = sourceTraits(m);
  // Downloads trust the mount's ca_file, else its account's, else the server's
  // (prepare read them all).
  const std::string* ca = &m.caFile;
  if (ca->empty() && r->account) ca = &r->account->conf->caFile;
  if (ca->empty()) ca = &cfg->server.caFile;
  std::string why;
  r->trust = std::max(0, multi.trust().add(*ca, &why));
  r->id = nextMountId++;
  runs[r->id] = r;
  return r;
}

bool Engine::init(std::string* err) {
  curl_version_info_data* v = curl_version_info(CURLVERSION_NOW);
  if (!(v->features & CURL_VERSION_ASYNCHDNS)) {
    *err = "libcurl was built without asynchronous DNS: name lookups would block the event loop";
    return false;
  }
  Impl& e = *impl_;
  // Accounts save rotated refresh tokens in state_dir: find out now, not
  // after the first rotation, that it cannot be written.
  if (!e.first->accounts.empty()) {
    const std::string& dir = e.first->server.stateDir;
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (!ec) std::filesystem::permissions(dir, std::filesystem::perms::owner_all, ec);
    if (ec || access(dir.c_str(), W_OK | X_OK) != 0) {
      *err = "state_dir " + dir + " is not a writable directory (" +
             (ec ? ec.message() : std::string(strerror(errno))) +
             "): accounts keep their rotating refresh tokens there";
      return false;
    }
  }
  SetupPtr s = prepare(e.first, err);
  if (!s) return false;
  install(s);
  if (e.store) {
    e.fetcher = std::make_unique<Fetcher>(e.ctx);
    e.ctx.fetcher = e.fetcher.get();
  }
  return true;
}

namespace {

/// The same settings, wherever they are written in the file.
bool sameAccount(conf::Account a, conf::Account b) {
  a.line = b.line = 0;
  a.refreshTokenLine = b.refreshTokenLine = 0;
  a.caFileLine = b.caFileLine = 0;
  return a == b;
}
bool sameMount(conf::Mount a, conf::Mount b) {
  a.line = b.line = 0;
  a.accountIndex = b.accountIndex = 0;  // the account is compared by name (and its run)
  a.caFileLine = b.caFileLine = 0;
  return a == b;
}

}  // namespace

// Connection pools are named, so a changed mount or account keeps its pool
// (its limit changes at install): transfers of the old and the new settings
// never exceed the account's connections together.
SetupPtr Engine::prepare(std::shared_ptr<const conf::Config> cfg, std::string* err) {
  Impl& e = *impl_;
  const Setup& old = *e.ctx.current;
  auto s = std::make_shared<Setup>();
  s->cfg = cfg;
  // TLS trust sets, read once here (never on the loop per connection); a
  // file read before is not read again (SIGHUP's reloadTrust does that).
  auto trust = [&](const std::string& file, int line, const std::string& section) {
    std::string why;
    if (e.multi.trust().add(file, &why) >= 0) return true;
    *err = cfg->file + ":" + std::to_string(line) + ": [" + section + "] ca_file: " + why;
    return false;
  };
  if (!trust("", 0, "server") || !trust(cfg->server.caFile, cfg->server.caFileLine, "server")) return nullptr;
  for (const auto& a : cfg->accounts)
    if (!trust(a.caFile, a.caFileLine, "account " + a.name)) return nullptr;
  for (const auto& m : cfg->mounts)
    if (!trust(m.caFile, m.caFileLine, "mount " + m.name)) return nullptr;
  for (size_t i = 0; i < cfg->accounts.size(); i++) {
    std::shared_ptr<AccountRun> reuse;
    for (const auto& a : old.accounts)
      if (a->conf->name == cfg->accounts[i].name && sameAccount(*a->conf, cfg->accounts[i])) reuse = a;
    s->accounts.push_back(reuse ? reuse : e.buildAccount(cfg, i));
  }
  for (size_t i = 0; i < cfg->mounts.size(); i++) {
    const conf::Mount& m = cfg->mounts[i];
    std::shared_ptr<MountRun> reuse;
    for (const auto& r : old.mounts)
      if (r->m->name == m.name && sameMount(*r->m, m) &&
          (m.accountIndex < 0 || r->account == s->accounts[static_cast<size_t>(m.accountIndex)]))
        reuse = r;
    if (!reuse) reuse = e.buildMount(cfg, i, s->accounts, err);
    if (!reuse) return nullptr;
    s->mounts.push_back(reuse);
    s->traits.push_back(reuse->traits);
  }
  s->generation = e.nextGeneration++;
  return s;
}

void Engine::install(SetupPtr s) {
  Impl& e = *impl_;
  Admission& adm = e.multi.admission();
  for (const auto& a : s->accounts) adm.setLimit(a->pool, static_cast<int>(a->conf->maxConnections));
  for (const auto& r : s->mounts)
    if (!r->account) adm.setLimit(r->pool, static_cast<int>(r->m->maxConnections));
  e.ctx.current = std::move(s);
}

SetupPtr Engine::setup() const { return impl_->ctx.current; }

const std::vector<policy::SourceTraits>& Engine::traits() const { return impl_->ctx.current->traits; }

Request Engine::Impl::bind(const Request& req) const {
  Request r = req;
  if (!r.setup) r.setup = ctx.current;
  r.mountId = r.setup->mounts[static_cast<size_t>(r.mountIndex)]->id;
  return r;
}

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
  for (const auto& run : impl_->ctx.current->accounts) {
    AccountStats a = run->account->stats();
    a.downloads = impl_->multi.admission().running(run->pool);
    a.downloadsWaiting = impl_->multi.admission().waiting(run->pool);
    s.accounts.push_back(std::move(a));
  }
  if (impl_->fetcher) {
    s.hosts = impl_->fetcher->hosts();
    s.fillMemoryBytes = impl_->fetcher->memoryBytes();
  }
  return s;
}

std::optional<FillActivity> Engine::activity(const std::string& mount, const std::string& rest) const {
  if (!impl_->fetcher) return std::nullopt;
  return impl_->fetcher->activity(store::objectKey(mount, rest));
}

std::unique_ptr<Prefetch> Engine::prefetch(const Request& req, const PrefetchSpec& spec) {
  if (!impl_->ctx.fetcher) return nullptr;
  return makePrefetch(impl_->ctx, impl_->bind(req), spec);
}

std::vector<Purged> Engine::purge(const std::string& mount, const std::string& rest, bool folder) {
  if (!impl_->fetcher) return {};
  return impl_->fetcher->purge(mount, rest, folder);
}

void Engine::quiesce() { impl_->ctx.quiescing = true; }

void Engine::list(int mount, const std::string& rest, ListCb cb) { list(impl_->ctx.current, mount, rest, std::move(cb)); }

void Engine::stat(int mount, const std::string& rest, StatCb cb) { stat(impl_->ctx.current, mount, rest, std::move(cb)); }

void Engine::list(const SetupPtr& setup, int mount, const std::string& rest, ListCb cb) {
  if (!setup || mount < 0 || static_cast<size_t>(mount) >= setup->mounts.size()) {
    cb({policy::Reason::UnknownMount, "", nullptr});
    return;
  }
  // The caller's setup keeps the mount alive while the listing is asked.
  impl_->listings.list(setup->mounts[static_cast<size_t>(mount)]->id, rest, std::move(cb));
}

void Engine::stat(const SetupPtr& setup, int mount, const std::string& rest, StatCb cb) {
  if (!setup || mount < 0 || static_cast<size_t>(mount) >= setup->mounts.size()) {
    cb({policy::Reason::UnknownMount, "", {}});
    return;
  }
  impl_->listings.stat(setup->mounts[static_cast<size_t>(mount)]->id, rest, std::move(cb));
}

const Header& Engine::selfHeader() const { return impl_->ctx.self; }

void Engine::setSelfAddresses(const std::vector<std::string>& hostPorts) {
  impl_->self = hostPorts;
  impl_->links.setSelf(hostPorts);
}

bool Engine::reloadTrust(std::string* err) { return impl_->multi.trust().reload(err); }

std::unique_ptr<Job> Engine::start(const Request& in, Sink* sink) {
  Context& c = impl_->ctx;
  Request req = impl_->bind(in);
  const conf::Mount& m = *c.mountOf(req)->m;
  if (m.source == conf::SourceType::Local) return makeLocalJob(c, req, sink);
  if (req.decision.delivery == conf::Delivery::Redirect) return makeRedirectJob(c, req, sink);
  // A store that can never hold a byte (min_free ≥ its file system) is
  // bypassed: the cache must never make a download fail (issue 9 #14).
  if (req.decision.cache && c.fetcher && !c.store->off()) return makeCacheJob(c, req, sink);
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

Headers hitHeaders(uint64_t size, const std::string& etag, const std::string& lastModified,
                   const std::string& contentType, const policy::RangeAnswer& answer, const std::string& path) {
  return bodyHeaders(ObjectInfo{size, etag, lastModified, contentType}, answer, path, CacheStatus::Hit);
}

Headers retryAfterHeaders(int64_t seconds) {
  if (seconds < 0) return {};
  return {{"Retry-After", std::to_string(seconds)}};
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
