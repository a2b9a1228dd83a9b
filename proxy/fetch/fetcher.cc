#include "proxy/fetch/fetcher.h"

#include <climits>

#include <algorithm>
#include <cassert>

namespace slip::proxy {

using policy::Reason;

namespace {

/// Pieces a block is split into when a client waits on it are at least this
/// big: smaller requests cost more in round trips than they win in parallelism.
constexpr uint64_t kMinPiece = 256 * 1024;
constexpr int kMaxAttempts = policy::kFetchAttempts;

uint64_t pageFloor(uint64_t v) { return v / store::kPageSize * store::kPageSize; }

void logf(conf::LogLevel l, std::string_view ev, const std::string& kv) { conf::Log::write(l, ev, kv); }

}  // namespace

struct Piece;

// One block being fetched: its pieces, its store writer, who waits on it.
struct Block {
  Object* obj = nullptr;
  uint32_t idx = 0;
  uint64_t begin = 0, end = 0;  // absolute object offsets
  store::Store::Writer* writer = nullptr;
  std::vector<std::unique_ptr<Piece>> pieces;
  std::set<Reader*> waiters;
  uint64_t requestId = 0;
  Reader* initiator = nullptr;
  bool committing = false;
  bool fedByStream = false;     // filled by the object's whole-body stream
  std::shared_ptr<int> token = std::make_shared<int>(0);  // outlives-check for disk callbacks
};

// One upstream range request filling [begin, end) of a block.
struct Piece final : Transfer::Handler {
  enum class State { Queued, Running, Backoff, Done };
  Fetcher::Impl* f = nullptr;
  Block* blk = nullptr;
  uint64_t begin = 0, end = 0;
  uint64_t received = 0;  // bytes accepted from upstream (queued to disk)
  uint64_t written = 0;   // bytes confirmed in the data file
  State state = State::Queued;
  int attempts = 0;
  uint64_t linkSerial = 0;
  std::unique_ptr<Transfer> xfer;
  event* timer = nullptr;
  // What onHeaders found, acted on in onDone (outside curl).
  std::optional<policy::UpstreamVerdict> verdict;
  std::string detail;
  int64_t retryAfterMs = -1;

  ~Piece() override;
  bool onHeaders(Transfer& t) override;
  size_t onData(Transfer& t, const char* p, size_t n) override;
  void onDone(Transfer& t, const TransferResult& r) override;
};

// For an upstream that ignores Range: one request for the whole body, whose
// bytes fill every block they pass that is not stored yet.
struct WholeStream final : Transfer::Handler {
  Fetcher::Impl* f = nullptr;
  Object* obj = nullptr;
  std::unique_ptr<Transfer> xfer;
  uint64_t offset = 0;   // object offset of the next byte from upstream
  bool changed = false;  // the upstream's length or ETag differ from the object's
  std::string detail;

  bool onHeaders(Transfer& t) override;
  size_t onData(Transfer& t, const char* p, size_t n) override;
  void onDone(Transfer& t, const TransferResult& r) override;
};

// The in-memory state of one object version that readers are using.
struct Object final : Transfer::Handler {
  Fetcher::Impl* f = nullptr;
  store::Key key;
  int mount = -1;
  std::string rest, path;
  ClientInfo client;
  store::ObjectMeta meta;
  bool hasMeta = false;  // meta came from the index (possibly stale)
  bool ready = false;
  bool dead = false;
  std::vector<std::pair<Reader*, std::function<void(const OpenResult&)>>> opening;
  std::set<Reader*> readers;
  std::set<Reader*> stalled;  // waiting for a block no fetch exists for yet
  std::map<uint32_t, std::unique_ptr<Block>> inflight;
  int running = 0;
  uint64_t servedTick = 0;  // when a transfer last started for it (fair queueing)
  int failures = 0;
  // link
  Link link;
  bool haveLink = false;
  bool resolving = false;
  uint64_t reResolvedFrom = 0;  // serial of the link the upstream refused, once re-resolved
  // probe (metadata check)
  std::unique_ptr<Transfer> probe;
  int probeAttempts = 0;
  event* probeTimer = nullptr;
  struct ProbeInfo {
    bool ok = false;
    Reason reason = Reason::None;
    std::string detail;
    bool denied = false;
    bool retry = false;
    bool uncacheable = false;
    int64_t retryAfterMs = -1;
    store::ObjectMeta meta;
  } probeInfo;
  // whole-body stream (upstream ignores Range)
  std::unique_ptr<WholeStream> whole;
  int wholeAttempts = 0;
  int64_t wholeRetryAtMs = 0;  // monotonic
  int holds = 0;  // call frames that still use the object (see Hold)

  ~Object() override;
  bool onHeaders(Transfer& t) override;
  size_t onData(Transfer& t, const char* p, size_t n) override;
  void onDone(Transfer& t, const TransferResult& r) override;
};

/// Keeps an Object alive across callbacks that may detach its last reader.
struct Hold {
  Object* o;
  explicit Hold(Object* obj) : o(obj) { o->holds++; }
  ~Hold();
  Hold(const Hold&) = delete;
  Hold& operator=(const Hold&) = delete;
};

struct Fetcher::Impl {
  Engine::Impl& e;
  store::Store& st;
  std::map<store::Key, Object*> objects;  // current version per key
  std::set<Object*> all;                  // including dead ones still referenced
  int running = 0;
  uint64_t tick = 0;               // counts transfer starts, for servedTick
  std::map<int, int> contenders;   // per pool: objects that want a transfer now
  std::set<Piece*> paused;
  event* schedEv = nullptr;
  event* retryTimer = nullptr;  // kicks the scheduler after a backoff
  int64_t retryAtMs = 0;
  bool kicked = false;
  Subscription drained;  // the store's queue fell below half
  Subscription spare;    // a pool slot freed that nobody queued took

  explicit Impl(Engine::Impl& eng) : e(eng), st(*eng.store) {}

  const conf::Mount& mountOf(const Object* o) const { return e.cfg.mounts[o->mount]; }
  int poolOf(const Object* o) const { return e.poolOf[o->mount]; }
  void kick() {
    if (!kicked) {
      kicked = true;
      event_active(schedEv, 0, 0);
    }
  }
  /// Kicks the scheduler at `atMs` (monotonic), unless it is already due earlier.
  void kickAt(int64_t atMs) {
    int64_t now = e.clock.monoMs();
    if (evtimer_pending(retryTimer, nullptr) && retryAtMs > now && retryAtMs <= atMs) return;
    retryAtMs = atMs;
    timeval tv = msToTimeval(atMs - now);
    evtimer_add(retryTimer, &tv);
  }

  // objects
  void startProbe(Object* o);
  void probeFinished(Object* o, const TransferResult& r);
  void finishOpen(Object* o, const OpenResult& res);
  void killObject(Object* o, Reason r, const std::string& detail);
  void maybeRelease(Object* o);
  /// Forgets reader r everywhere in o (readers, waiters, initiators).
  void unlink(Object* o, Reader* r);
  void ensureLink(Object* o);
  bool linkUsable(const Object* o) const;
  bool linkDenied(Object* o, uint64_t serial);

  // scheduling
  void schedule();
  void startWork(Object* o);
  int connLimit(const Object* o) const;
  int fairCap(const Object* o) const;
  bool wantsTransfer(Object* o);
  bool canStart(const Object* o) const;
  bool wanted(const Object* o, uint32_t idx) const;
  bool nextWanted(Object* o, uint32_t* idx, std::optional<uint64_t>* urgentPos);
  Block* createBlock(Object* o, uint32_t idx, std::optional<uint64_t> urgentPos, int pieces,
                     bool forceRoom = false);
  int freeSlots(const Object* o) const;
  int countMissing(Object* o, int cap);
  // Upstream transfers running, per object and in all (per pool: CurlMulti).
  void counted(Object* o, int delta) {
    o->running += delta;
    running += delta;
    if (delta > 0) o->servedTick = ++tick;
  }
  /// Cancels a piece's transfer that will not report back.
  void stopPiece(Piece* p);
  void startPiece(Piece* p);
  void pieceFinished(Piece* p, const TransferResult& r);
  void retryPiece(Piece* p, int64_t delayMs);
  void maybeCommit(Block* b);
  void dropBlock(Block* b);
  void failBlock(Block* b, Reason r, const std::string& detail);
  void wakeBlock(Block* b);
  void wakeStalled(Object* o);

  // whole-body stream
  void startWhole(Object* o);
  void wholeFinished(Object* o, const TransferResult& r);
};

// ------------------------------------------------------------------ lifetimes

Piece::~Piece() {
  if (timer) event_free(timer);
  if (f) f->paused.erase(this);
}

Object::~Object() {
  if (probeTimer) event_free(probeTimer);
}

Fetcher::Fetcher(Engine::Impl& e) : impl_(std::make_unique<Impl>(e)) {
  Impl* s = impl_.get();
  s->schedEv = event_new(e.base, -1, 0, [](evutil_socket_t, short, void* arg) {
    static_cast<Impl*>(arg)->schedule();
  }, s);
  s->retryTimer = evtimer_new(e.base, [](evutil_socket_t, short, void* arg) {
    static_cast<Impl*>(arg)->kick();
  }, s);
  s->spare = e.multi.admission().onSpare([s] { s->kick(); });
  s->drained = s->st.onDrained([s] {
    std::vector<Piece*> ps(s->paused.begin(), s->paused.end());
    s->paused.clear();
    for (Piece* p : ps)
      if (p->xfer) p->xfer->resume();
    for (Object* o : s->all)
      if (o->whole && o->whole->xfer->paused()) o->whole->xfer->resume();
  });
}

Fetcher::~Fetcher() {
  Impl& s = *impl_;
  // Stop every transfer; unfinished blocks are never listed.
  for (Object* o : s.all) {
    o->probe.reset();
    o->whole.reset();
    for (auto& [idx, b] : o->inflight) {
      for (auto& p : b->pieces) p->xfer.reset();
      if (b->writer && !b->committing) s.st.abandon(b->writer);
    }
    delete o;
  }
  event_free(s.schedEv);
  event_free(s.retryTimer);
}

Hold::~Hold() {
  o->holds--;
  o->f->maybeRelease(o);
}

void Fetcher::Impl::maybeRelease(Object* o) {
  if (o->holds > 0 || !o->readers.empty() || !o->opening.empty() || !o->inflight.empty() || o->probe || o->whole ||
      o->resolving || (o->probeTimer && evtimer_pending(o->probeTimer, nullptr)))
    return;
  auto it = objects.find(o->key);
  if (it != objects.end() && it->second == o) objects.erase(it);
  all.erase(o);
  delete o;
}

// ------------------------------------------------------------------ open

void Fetcher::open(const Request& req, Reader* r, std::function<void(const OpenResult&)> done) {
  Impl& s = *impl_;
  const conf::Mount& m = s.e.cfg.mounts[req.mountIndex];
  store::Key key = store::objectKey(m.name, req.rest);
  r->requestId = req.id;
  r->connections = req.decision.connections > 0 ? req.decision.connections : m.connections;
  Object* o;
  auto it = s.objects.find(key);
  if (it != s.objects.end()) {
    o = it->second;
  } else {
    o = new Object;
    o->f = &s;
    o->key = key;
    o->mount = req.mountIndex;
    o->rest = req.rest;
    o->path = req.path;
    o->client = {req.client, req.userAgent};
    s.objects[key] = o;
    s.all.insert(o);
    if (auto meta = s.st.lookup(key); meta && meta->blockSize > 0) {
      o->meta = *meta;
      o->hasMeta = true;
      o->ready = true;
    }
  }
  r->obj = o;
  o->opening.emplace_back(r, std::move(done));
  bool fresh = o->ready && policy::isFresh(o->meta.validatedMs, m.revalidateMs, s.e.clock.wallMs());
  if (fresh) {
    // A warm hit: no upstream round trip, no link resolution.
    s.finishOpen(o, {});
    return;
  }
  if (!o->probe && !(o->probeTimer && evtimer_pending(o->probeTimer, nullptr))) s.startProbe(o);
}

void Fetcher::Impl::finishOpen(Object* o, const OpenResult& res) {
  Hold hold(o);
  auto waiting = std::move(o->opening);
  o->opening.clear();
  for (auto& [r, cb] : waiting) {
    if (res.reason == Reason::None && !res.uncacheable) o->readers.insert(r);
    else r->obj = nullptr;
    cb(res);
  }
  if (res.reason == Reason::None) kick();
}

bool Fetcher::Impl::linkUsable(const Object* o) const {
  if (!o->haveLink) return false;
  return proxy::linkUsable(o->link, e.clock.wallMs());
}

void Fetcher::Impl::ensureLink(Object* o) {
  if (o->resolving || linkUsable(o)) return;
  o->resolving = true;
  e.links.get(o->mount, o->rest, o->client, [this, o](const ResolveResult& res) {
    Hold hold(o);
    o->resolving = false;
    if (res.reason != Reason::None) {
      o->haveLink = false;
      if (!o->opening.empty() && o->probe == nullptr) finishOpen(o, {res.reason, res.detail, false});
      else killObject(o, res.reason, res.detail);
      return;
    }
    o->link = res.link;
    o->haveLink = true;
    if (!o->probe && !o->opening.empty()) startProbe(o);  // a probe was waiting for it
    kick();
  });
}

/// The upstream refused link `serial` (401/403/410). Re-resolves once; a
/// second refusal in a row (of the link we re-resolved to) is final.
bool Fetcher::Impl::linkDenied(Object* o, uint64_t serial) {
  if (o->haveLink && serial != o->link.serial) return true;  // already replaced: just retry
  if (o->reResolvedFrom != 0 && o->reResolvedFrom != serial && serial == o->link.serial) return false;
  o->reResolvedFrom = serial;
  e.links.invalidate(o->mount, o->rest, o->client, serial);
  o->haveLink = false;
  e.stats.linkResolutions += 0;
  logf(conf::LogLevel::Info, "link_refused",
       "path=" + conf::logValue(o->path) + " serial=" + std::to_string(serial) + " action=re_resolve");
  ensureLink(o);
  return true;
}

// ------------------------------------------------------------------ probe

void Fetcher::Impl::startProbe(Object* o) {
  // A source may resolve synchronously: its callback can start the probe,
  // or fail the open and release the object, before ensureLink returns.
  Hold hold(o);
  if (!linkUsable(o)) {
    ensureLink(o);
    if (o->probe || !linkUsable(o)) return;  // the resolution callback starts the probe
  }
  o->probeInfo = {};
  Transfer::Options opts = e.transferOptions(o->link, o->mount);
  opts.range = policy::upstreamRange(policy::ByteRange{0, 1});
  o->probe = std::make_unique<Transfer>(e.multi, std::move(opts), o);
  o->probeInfo.meta.blockSize = 0;
  e.stats.upstreamRequests++;
  o->probe->start();
}

bool Object::onHeaders(Transfer& t) {
  ProbeInfo& pi = probeInfo;
  policy::UpstreamAsk ask;  // bytes=0-0
  policy::UpstreamJudgement v = policy::classifyUpstream(ask, t.answer());
  using V = policy::UpstreamVerdict;
  pi.detail = v.detail;
  switch (v.verdict) {
    case V::Ok:
    case V::IgnoresRanges:
      break;
    case V::Denied:
      pi.denied = true;
      return false;
    case V::Gone:
      pi.reason = Reason::NotFound;
      return false;
    case V::Busy:
    case V::ServerError:
      pi.retry = true;
      pi.retryAfterMs = v.retryAfterMs;
      pi.reason = Reason::UpstreamStatus;
      return false;
    case V::BadAnswer:
      pi.reason = Reason::UpstreamBadResponse;
      return false;
    default:
      pi.reason = Reason::UpstreamStatus;
      return false;
  }
  pi.ok = true;
  if (!v.total) {  // a 200 without a length: nothing to cut into blocks
    pi.uncacheable = true;
    return false;
  }
  store::ObjectMeta& m = pi.meta;
  m.size = *v.total;
  m.noRanges = v.verdict == V::IgnoresRanges;
  m.etag = t.header("etag");
  m.lastModified = t.header("last-modified");
  m.contentType = t.header("content-type");
  return t.status() == 206;  // the 1-byte body is cheap; a 200 body is not
}

size_t Object::onData(Transfer&, const char*, size_t n) { return n; }  // the probe's single byte

void Object::onDone(Transfer&, const TransferResult& r) { f->probeFinished(this, r); }

void Fetcher::Impl::probeFinished(Object* o, const TransferResult& r) {
  Hold hold(o);
  Object::ProbeInfo pi = std::move(o->probeInfo);
  uint64_t serial = o->link.serial;
  o->probe.reset();
  if (pi.ok) {
    o->reResolvedFrom = 0;
    if (pi.uncacheable) {
      finishOpen(o, {Reason::None, "", true});
      return;
    }
    int64_t now = e.clock.wallMs();
    const conf::Mount& m = mountOf(o);
    store::ObjectMeta fresh = pi.meta;
    bool same = o->hasMeta && fresh.size == o->meta.size &&
                (!fresh.etag.empty() && !o->meta.etag.empty()
                     ? fresh.etag == o->meta.etag
                     : fresh.lastModified == o->meta.lastModified) &&
                fresh.noRanges == o->meta.noRanges;
    if (same) {
      o->meta.validatedMs = now;
      st.markValidated(o->key, o->meta, now);
      o->ready = true;
      finishOpen(o, {});
      return;
    }
    if (o->hasMeta) {
      logf(conf::LogLevel::Info, "upstream_changed",
           "path=" + conf::logValue(o->path) + " old_size=" + std::to_string(o->meta.size) +
               " new_size=" + std::to_string(fresh.size) + " old_etag=" + conf::logValue(o->meta.etag) +
               " new_etag=" + conf::logValue(fresh.etag));
    }
    // A new version: the old object (and everyone reading it) is finished.
    std::vector<std::pair<Reader*, std::function<void(const OpenResult&)>>> waiting;
    waiting.swap(o->opening);
    Link link = o->link;
    bool haveLink = o->haveLink;
    if (o->hasMeta || !o->readers.empty() || !o->inflight.empty()) {
      killObject(o, Reason::UpstreamChanged, "upstream object changed");
      auto* n = new Object;
      n->f = this;
      n->key = o->key;
      n->mount = o->mount;
      n->rest = o->rest;
      n->path = o->path;
      n->client = o->client;
      objects[n->key] = n;
      all.insert(n);
      o = n;
    }
    o->link = link;
    o->haveLink = haveLink;
    fresh.blockSize = static_cast<uint32_t>(e.cfg.cache.blockSize);
    fresh.validatedMs = now;
    fresh.mount = m.name;
    fresh.path = o->rest;
    o->meta = st.create(o->key, fresh);
    o->hasMeta = true;
    o->ready = true;
    for (auto& w : waiting) w.first->obj = o;
    o->opening = std::move(waiting);
    finishOpen(o, {});
    return;
  }
  if (pi.denied && linkDenied(o, serial)) {
    // Re-resolving; ensureLink's callback starts the probe again.
    if (o->haveLink && !o->probe) startProbe(o);
    return;
  }
  bool retryable = pi.retry || (pi.reason == Reason::None && !pi.denied);
  if (retryable && ++o->probeAttempts < kMaxAttempts) {
    int64_t delay = pi.retryAfterMs >= 0 ? pi.retryAfterMs : policy::backoffDelayMs(policy::kFetchBackoff, o->probeAttempts);
    e.stats.retries++;
    if (!o->probeTimer)
      o->probeTimer = evtimer_new(e.base, [](evutil_socket_t, short, void* arg) {
        auto* obj = static_cast<Object*>(arg);
        obj->f->startProbe(obj);
      }, o);
    timeval tv = msToTimeval(delay);
    evtimer_add(o->probeTimer, &tv);
    return;
  }
  o->probeAttempts = 0;
  Reason reason = pi.denied ? Reason::UpstreamDenied
                  : pi.reason != Reason::None ? pi.reason
                  : r.timedOut ? Reason::UpstreamTimeout
                               : Reason::UpstreamConnect;
  std::string detail = !pi.detail.empty() ? pi.detail : r.error;
  e.stats.upstreamErrors++;
  // Stale-if-error: a stored copy is better than an error when the upstream
  // is merely unreachable; a 404 or a refusal is an answer, not an outage.
  if (o->hasMeta && (reason == Reason::UpstreamConnect || reason == Reason::UpstreamTimeout ||
                     reason == Reason::UpstreamStatus)) {
    logf(conf::LogLevel::Warn, "revalidate_failed",
         "path=" + conf::logValue(o->path) + " reason=" + policy::reasonCode(reason) +
             " detail=" + conf::logValue(detail) + " action=serve_stored");
    o->ready = true;
    finishOpen(o, {});
    return;
  }
  if (reason == Reason::NotFound && o->hasMeta) {
    st.invalidate(o->key, o->meta.generation);
    o->hasMeta = false;
  }
  finishOpen(o, {reason, detail, false});
}

void Fetcher::Impl::killObject(Object* o, Reason r, const std::string& detail) {
  if (o->dead) return;
  if (e.multi.insideCurl()) {
    // It would free transfers whose callback is running: finish it after curl returns.
    o->holds++;
    e.multi.defer([this, o, r, detail] {
      Hold hold(o);
      o->holds--;
      killObject(o, r, detail);
    });
    return;
  }
  Hold hold(o);
  o->dead = true;
  auto it = objects.find(o->key);
  if (it != objects.end() && it->second == o) objects.erase(it);
  if (o->hasMeta) st.invalidate(o->key, o->meta.generation);
  if (o->whole) {
    counted(o, -1);
    o->whole.reset();
  }
  for (auto& [idx, b] : o->inflight) {
    for (auto& p : b->pieces) stopPiece(p.get());
    if (b->writer && !b->committing) st.abandon(b->writer);
    b->writer = nullptr;
  }
  std::vector<std::unique_ptr<Block>> blocks;
  for (auto& [idx, b] : o->inflight)
    if (!b->committing) blocks.push_back(std::move(b));
  std::erase_if(o->inflight, [](const auto& kv) { return kv.second == nullptr; });
  std::vector<Reader*> readers(o->readers.begin(), o->readers.end());
  for (Reader* rd : readers) unlink(o, rd);  // committing blocks keep no pointer to them
  for (Reader* rd : readers) rd->objectFailed(r, detail);
  auto waiting = std::move(o->opening);
  o->opening.clear();
  for (auto& [rd, cb] : waiting) {
    rd->obj = nullptr;
    cb({r, detail, false});
  }
  blocks.clear();
  kick();
}

// ------------------------------------------------------------------ readers

void Fetcher::Impl::unlink(Object* o, Reader* r) {
  r->obj = nullptr;
  o->readers.erase(r);
  o->stalled.erase(r);
  std::erase_if(o->opening, [r](const auto& w) { return w.first == r; });
  for (auto& [idx, b] : o->inflight) {
    if (!b) continue;
    b->waiters.erase(r);
    if (b->initiator == r) b->initiator = nullptr;
  }
}

void Fetcher::detach(Reader* r) {
  Impl& s = *impl_;
  Object* o = r->obj;
  if (!o) return;
  s.unlink(o, r);
  s.maybeRelease(o);
  s.kick();
}

void Fetcher::demand(Reader*) { impl_->kick(); }

const store::ObjectMeta& Fetcher::meta(Object* o) const { return o->meta; }
const store::Key& Fetcher::key(Object* o) const { return o->key; }

Fetcher::Avail Fetcher::avail(Object* o, uint64_t pos) {
  Avail a;
  uint32_t idx = static_cast<uint32_t>(pos / o->meta.blockSize);
  auto it = o->inflight.find(idx);
  if (it != o->inflight.end()) {
    Block* b = it->second.get();
    a.kind = Avail::Kind::InFlight;
    a.writer = b->committing ? nullptr : b->writer;
    for (auto& p : b->pieces) {
      if (pos >= p->begin && pos < p->end) {
        uint64_t upto = p->begin + p->written;
        a.readable = upto > pos ? upto - pos : 0;
        break;
      }
    }
    if (!a.writer) a.readable = 0;  // committing: wait for the listing
    return a;
  }
  if (impl_->st.present(o->key, o->meta.generation, idx)) a.kind = Avail::Kind::Stored;
  return a;
}

void Fetcher::waitFor(Reader* r, uint32_t idx) {
  Object* o = r->obj;
  if (!o) return;
  auto it = o->inflight.find(idx);
  if (it != o->inflight.end()) it->second->waiters.insert(r);
  else o->stalled.insert(r);
  impl_->kick();
}

void Fetcher::blockCorrupt(Object* o, uint32_t) {
  impl_->e.stats.corruptBlocks++;
  impl_->kick();
  (void)o;
}

void Fetcher::Impl::wakeBlock(Block* b) {
  // One-shot: a reader that still cannot progress registers again.
  std::vector<Reader*> w(b->waiters.begin(), b->waiters.end());
  b->waiters.clear();
  for (Reader* r : w) r->wake();
}

void Fetcher::Impl::wakeStalled(Object* o) {
  std::vector<Reader*> w(o->stalled.begin(), o->stalled.end());
  o->stalled.clear();
  for (Reader* r : w) r->wake();
}

// ------------------------------------------------------------------ scheduling

int Fetcher::Impl::connLimit(const Object* o) const {
  int64_t n = 1;
  for (Reader* r : o->readers) n = std::max(n, r->connections);
  if (o->readers.empty()) n = std::max<int64_t>(n, mountOf(o).connections);
  return static_cast<int>(n);
}

// When more objects want transfers than their pool (an account's connection
// cap) has slots, each gets an equal share; schedule() serves the objects
// that waited longest first, so blocks of different objects take turns.
int Fetcher::Impl::fairCap(const Object* o) const {
  auto it = contenders.find(poolOf(o));
  int n = it == contenders.end() ? 0 : it->second;
  if (n <= 1) return INT_MAX;
  int limit = e.multi.admission().limit(poolOf(o));
  return std::max(1, (limit + n - 1) / n);
}

bool Fetcher::Impl::canStart(const Object* o) const {
  return o->running < connLimit(o) && o->running < fairCap(o) &&
         e.multi.admission().free(poolOf(o)) > 0 && running < e.cfg.server.upstreamConnections;
}

// Whether o has work a transfer could do now: queued pieces, or a missing
// block some reader needs.
bool Fetcher::Impl::wantsTransfer(Object* o) {
  // Not while it waits for a link: its share would sit idle.
  if (!o->ready || o->dead || o->probe || o->meta.noRanges || !linkUsable(o)) return false;
  for (auto& [idx, b] : o->inflight)
    for (auto& p : b->pieces)
      if (p->state == Piece::State::Queued) return true;
  return countMissing(o, 1) > 0;
}

bool Fetcher::Impl::wanted(const Object* o, uint32_t idx) const {
  uint64_t bs = o->meta.blockSize;
  uint64_t ra = static_cast<uint64_t>(mountOf(o).readAhead);
  ra = std::min<uint64_t>(ra, static_cast<uint64_t>(e.cfg.cache.maxSize) / 4);
  for (Reader* r : o->readers) {
    if (r->pos >= r->end) continue;
    uint64_t lim = std::min(r->end, std::max(r->pos + ra, (r->pos / bs + 1) * bs));
    if (idx >= r->pos / bs && static_cast<uint64_t>(idx) * bs < lim) return true;
  }
  return false;
}

// The next block to fetch: first a block a reader is blocked on (urgent),
// then the nearest missing block inside some reader's read-ahead window.
bool Fetcher::Impl::nextWanted(Object* o, uint32_t* idxOut, std::optional<uint64_t>* urgentPos) {
  uint64_t bs = o->meta.blockSize;
  uint64_t ra = std::min<uint64_t>(static_cast<uint64_t>(mountOf(o).readAhead),
                                   static_cast<uint64_t>(e.cfg.cache.maxSize) / 4);
  for (Reader* r : o->readers) {
    if (r->pos >= r->end) continue;
    uint32_t idx = static_cast<uint32_t>(r->pos / bs);
    if (!o->inflight.count(idx) && !st.present(o->key, o->meta.generation, idx)) {
      *idxOut = idx;
      *urgentPos = r->pos;
      return true;
    }
  }
  uint64_t bestDist = UINT64_MAX;
  bool found = false;
  for (Reader* r : o->readers) {
    if (r->pos >= r->end) continue;
    uint64_t lim = std::min(r->end, r->pos + ra);
    for (uint64_t off = (r->pos / bs) * bs; off < lim; off += bs) {
      uint32_t idx = static_cast<uint32_t>(off / bs);
      uint64_t dist = off > r->pos ? off - r->pos : 0;
      if (dist >= bestDist) break;
      if (o->inflight.count(idx) || st.present(o->key, o->meta.generation, idx)) continue;
      bestDist = dist;
      *idxOut = idx;
      *urgentPos = std::nullopt;
      found = true;
      break;
    }
  }
  return found;
}

void Fetcher::Impl::schedule() {
  kicked = false;
  if (e.quiescing) return;
  // First every object gets at most its fair share of a contended pool;
  // then slots nobody could use go to whoever can (work-conserving).
  for (bool fair : {true, false}) {
    std::vector<Object*> objs;
    contenders.clear();
    for (auto& [k, o] : objects) {
      objs.push_back(o);
      if (fair && wantsTransfer(o)) contenders[poolOf(o)]++;
    }
    // Objects with a blocked reader first, so a seek never waits behind
    // read-ahead; then the one served longest ago.
    std::stable_sort(objs.begin(), objs.end(), [](Object* a, Object* b) {
      if (a->stalled.empty() != b->stalled.empty()) return !a->stalled.empty();
      return a->servedTick < b->servedTick;
    });
    for (Object* o : objs) {
      if (running >= e.cfg.server.upstreamConnections) return;
      if (!all.count(o)) continue;  // released by an earlier object's work
      startWork(o);
    }
  }
  contenders.clear();
}

void Fetcher::Impl::startWork(Object* o) {
  if (!o->ready || o->dead || o->probe) return;
  Hold hold(o);
  if (o->meta.noRanges) {
    startWhole(o);
    return;
  }
  // Queued pieces: blocks a reader waits on first, then unwanted read-ahead is dropped.
  std::vector<Block*> order;
  for (auto& [idx, b] : o->inflight) order.push_back(b.get());
  std::stable_sort(order.begin(), order.end(),
                   [](Block* a, Block* b) { return !a->waiters.empty() && b->waiters.empty(); });
  bool needLink = false;
  for (Block* b : order) {
    bool hasQueued = false, started = false;
    for (auto& p : b->pieces) {
      if (p->state == Piece::State::Queued) hasQueued = true;
      if (p->state != Piece::State::Queued) started = true;
    }
    if (!hasQueued) continue;
    if (!started && b->waiters.empty() && !wanted(o, b->idx)) {
      dropBlock(b);  // read-ahead nobody wants any more
      continue;
    }
    for (auto& p : b->pieces) {
      if (p->state != Piece::State::Queued) continue;
      if (!canStart(o)) return;
      if (!linkUsable(o)) {
        needLink = true;
        break;
      }
      startPiece(p.get());
    }
  }
  if (needLink || !linkUsable(o)) {
    ensureLink(o);
    return;
  }
  // Slots the missing blocks would leave idle are shared out among them: a
  // short range is fetched in parallel pieces, a long read one block each.
  int missing = countMissing(o, freeSlots(o) + 1);
  while (canStart(o)) {
    uint32_t idx;
    std::optional<uint64_t> urgent;
    if (!nextWanted(o, &idx, &urgent)) break;
    int share = urgent ? freeSlots(o) : std::max(1, freeSlots(o) / std::max(1, missing));
    missing--;
    Block* b = createBlock(o, idx, urgent, share);
    if (!b) break;
    for (auto& p : b->pieces) {
      if (!canStart(o)) break;
      startPiece(p.get());
    }
  }
}

int Fetcher::Impl::freeSlots(const Object* o) const {
  return std::min({connLimit(o) - o->running, fairCap(o) - o->running,
                   e.multi.admission().free(poolOf(o)),
                   static_cast<int>(e.cfg.server.upstreamConnections) - running});
}

// Missing blocks (neither stored nor in flight) inside the readers' windows,
// counted up to `cap`.
int Fetcher::Impl::countMissing(Object* o, int cap) {
  uint64_t bs = o->meta.blockSize;
  uint64_t ra = std::min<uint64_t>(static_cast<uint64_t>(mountOf(o).readAhead),
                                   static_cast<uint64_t>(e.cfg.cache.maxSize) / 4);
  std::set<uint32_t> seen;
  for (Reader* r : o->readers) {
    uint64_t lim = std::min(r->end, std::max(r->pos + ra, (r->pos / bs + 1) * bs));
    for (uint64_t off = r->pos / bs * bs; off < lim && static_cast<int>(seen.size()) < cap; off += bs) {
      uint32_t idx = static_cast<uint32_t>(off / bs);
      if (!o->inflight.count(idx) && !st.present(o->key, o->meta.generation, idx)) seen.insert(idx);
    }
  }
  return static_cast<int>(seen.size());
}

Block* Fetcher::Impl::createBlock(Object* o, uint32_t idx, std::optional<uint64_t> urgentPos,
                                  int pieces, bool forceRoom) {
  const store::ObjectMeta& m = o->meta;
  uint64_t len = m.blockLength(idx);
  if (len == 0) return nullptr;
  if (!st.reserve(len, forceRoom || urgentPos.has_value())) return nullptr;
  store::Store::Writer* w = st.beginBlock(o->key, m, idx);
  if (!w) {
    st.release(len);
    killObject(o, Reason::CacheFailed, "cannot open the cache data file");
    return nullptr;
  }
  auto b = std::make_unique<Block>();
  b->obj = o;
  b->idx = idx;
  b->begin = m.blockBegin(idx);
  b->end = b->begin + len;
  b->writer = w;
  // The reader that asked first pays for it in the access log.
  for (Reader* r : o->readers) {
    if (r->pos < r->end && r->pos / m.blockSize <= idx) {
      b->initiator = r;
      b->requestId = r->requestId;
      break;
    }
  }
  auto addPiece = [&](uint64_t a, uint64_t z) {
    auto p = std::make_unique<Piece>();
    p->f = this;
    p->blk = b.get();
    p->begin = a;
    p->end = z;
    b->pieces.push_back(std::move(p));
  };
  // Split into up to `pieces` parallel range requests of at least kMinPiece,
  // starting where a waiting client is (the seek is served at several
  // connections' speed); the head of the block before it comes last.
  uint64_t from = urgentPos ? std::max(b->begin, pageFloor(*urgentPos)) : b->begin;
  uint64_t span = b->end - from;
  int k = static_cast<int>(
      std::clamp<uint64_t>(span / kMinPiece, 1, std::max(1, pieces - (from > b->begin ? 1 : 0))));
  uint64_t step = pageFloor((span + k - 1) / k + store::kPageSize - 1);
  if (step == 0) step = span;
  for (uint64_t a = from; a < b->end; a += step) addPiece(a, std::min(b->end, a + step));
  if (from > b->begin) addPiece(b->begin, from);
  Block* raw = b.get();
  o->inflight[idx] = std::move(b);
  // Readers stalled on this block now wait on it.
  for (auto it = o->stalled.begin(); it != o->stalled.end();) {
    if ((*it)->pos / m.blockSize == idx) {
      raw->waiters.insert(*it);
      it = o->stalled.erase(it);
    } else {
      ++it;
    }
  }
  return raw;
}

void Fetcher::Impl::startPiece(Piece* p) {
  Object* o = p->blk->obj;
  if (p->begin + p->received >= p->end) {  // nothing left to ask for
    p->state = Piece::State::Done;
    maybeCommit(p->blk);
    return;
  }
  Transfer::Options opts = e.transferOptions(o->link, o->mount);
  opts.range = policy::upstreamRange({p->begin + p->received, p->end});
  p->verdict.reset();
  p->detail.clear();
  p->retryAfterMs = -1;
  p->linkSerial = o->link.serial;
  p->xfer = std::make_unique<Transfer>(e.multi, std::move(opts), p);
  p->state = Piece::State::Running;
  counted(o, +1);
  e.stats.upstreamRequests++;
  p->xfer->start();
}

bool Piece::onHeaders(Transfer& t) {
  Object* o = blk->obj;
  policy::UpstreamAsk ask;
  ask.kind = policy::UpstreamAsk::Kind::Piece;
  ask.range = {begin + received, end};
  ask.size = o->meta.size;
  ask.etag = o->meta.etag;
  policy::UpstreamJudgement v = policy::classifyUpstream(ask, t.answer());
  if (v.verdict == policy::UpstreamVerdict::Ok) return true;
  verdict = v.verdict;
  detail = v.detail;
  // Only 429/503 say when to come back; other failures back off.
  retryAfterMs = v.verdict == policy::UpstreamVerdict::Busy ? v.retryAfterMs : -1;
  return false;
}

size_t Piece::onData(Transfer&, const char* data, size_t n) {
  store::Store& st = f->st;
  if (st.queuedBytes() >= store::Store::kQueueLimit) {
    f->paused.insert(this);
    return Transfer::kPause;
  }
  uint64_t at = begin + received;
  size_t take = static_cast<size_t>(std::min<uint64_t>(n, end - at));
  if (take > 0) {
    std::weak_ptr<int> alive = blk->token;
    Piece* self = this;
    st.write(blk->writer, at - blk->begin, data, take, [self, alive, take](bool ok) {
      if (alive.expired()) return;
      Hold hold(self->blk->obj);
      if (!ok) {
        self->f->failBlock(self->blk, Reason::CacheFailed, "cache write failed");
        return;
      }
      self->written += take;
      self->f->wakeBlock(self->blk);
      if (self->state == State::Done) self->f->maybeCommit(self->blk);
    });
    received += take;
    f->e.stats.upstreamBytes += take;
    if (blk->initiator) blk->initiator->upstreamBytes(take);
  }
  return take == n ? n : 0;  // more than we asked for: stop there
}

void Piece::onDone(Transfer&, const TransferResult& r) { f->pieceFinished(this, r); }

void Fetcher::Impl::pieceFinished(Piece* p, const TransferResult& r) {
  Block* b = p->blk;
  Object* o = b->obj;
  Hold hold(o);
  counted(o, -1);
  paused.erase(p);
  auto verdict = p->verdict;
  std::string detail = p->detail;
  p->xfer.reset();
  kick();
  // Complete also when we cut the body ourselves (an upstream that sent more
  // than the range asked for).
  if (!verdict && p->begin + p->received == p->end) {
    p->state = Piece::State::Done;
    o->reResolvedFrom = 0;
    p->attempts = 0;
    maybeCommit(b);
    return;
  }
  using V = policy::UpstreamVerdict;
  switch (verdict.value_or(V::Ok)) {
    case V::Changed:
      killObject(o, Reason::UpstreamChanged, detail);
      return;
    case V::Gone:
      killObject(o, Reason::NotFound, detail);
      return;
    case V::IgnoresRanges: {
      // Switch the object to one whole-body stream that caches what passes.
      logf(conf::LogLevel::Warn, "upstream_ignores_range", "path=" + conf::logValue(o->path));
      o->meta.noRanges = true;
      st.markValidated(o->key, o->meta, o->meta.validatedMs);
      std::vector<Block*> drop;
      for (auto& [idx, blk] : o->inflight)
        if (!blk->committing && !blk->fedByStream) drop.push_back(blk.get());
      for (Block* d : drop) {
        for (auto& q : d->pieces) stopPiece(q.get());
        dropBlock(d);
      }
      wakeStalled(o);
      return;
    }
    case V::Denied:
      if (linkDenied(o, p->linkSerial)) {
        p->state = Piece::State::Queued;  // continue from the byte reached with the new link
        return;
      }
      failBlock(b, Reason::UpstreamDenied, detail + " (also after re-resolving the link)");
      return;
    default:
      break;
  }
  e.stats.upstreamErrors++;
  if (++p->attempts >= kMaxAttempts) {
    failBlock(b, r.timedOut ? Reason::UpstreamTimeout : Reason::UpstreamReset,
              !detail.empty() ? detail : r.error);
    return;
  }
  int64_t delay = p->retryAfterMs >= 0 ? p->retryAfterMs : policy::backoffDelayMs(policy::kFetchBackoff, p->attempts);
  logf(conf::LogLevel::Info, "piece_retry",
       "path=" + conf::logValue(o->path) + " block=" + std::to_string(b->idx) + " from=" +
           std::to_string(p->begin + p->received) + " attempt=" + std::to_string(p->attempts) +
           " delay_ms=" + std::to_string(delay) + " cause=" + conf::logValue(!detail.empty() ? detail : r.error));
  retryPiece(p, delay);
}

void Fetcher::Impl::stopPiece(Piece* p) {
  // A Running piece with a transfer was counted by startPiece and has not
  // reported back; stream-fed pieces have no transfer of their own.
  if (p->xfer && p->state == Piece::State::Running) counted(p->blk->obj, -1);
  paused.erase(p);
  p->xfer.reset();
}

void Fetcher::Impl::retryPiece(Piece* p, int64_t delayMs) {
  e.stats.retries++;
  p->state = Piece::State::Backoff;
  if (!p->timer)
    p->timer = evtimer_new(e.base, [](evutil_socket_t, short, void* arg) {
      auto* piece = static_cast<Piece*>(arg);
      piece->state = Piece::State::Queued;
      piece->f->kick();
    }, p);
  timeval tv = msToTimeval(delayMs);
  evtimer_add(p->timer, &tv);
}

void Fetcher::Impl::maybeCommit(Block* b) {
  if (b->committing) return;
  for (auto& p : b->pieces)
    if (p->state != Piece::State::Done || p->written != p->end - p->begin) return;
  b->committing = true;
  Object* o = b->obj;
  uint32_t idx = b->idx;
  std::weak_ptr<int> alive = b->token;
  st.commit(b->writer, b->requestId, [this, o, idx, alive](bool ok) {
    if (alive.expired()) return;
    Hold hold(o);
    auto it = o->inflight.find(idx);
    if (it == o->inflight.end()) return;
    std::unique_ptr<Block> blk = std::move(it->second);
    o->inflight.erase(it);
    blk->writer = nullptr;  // freed by the store
    if (!ok && ++o->failures > kMaxAttempts) {
      o->inflight[idx] = std::move(blk);
      failBlock(o->inflight[idx].get(), Reason::CacheFailed, "cache commit failed");
      return;
    }
    wakeBlock(blk.get());
    wakeStalled(o);
    blk.reset();
    kick();
  });
}

void Fetcher::Impl::dropBlock(Block* b) {
  Object* o = b->obj;
  Hold hold(o);
  if (b->writer && !b->committing) st.abandon(b->writer);
  b->writer = nullptr;
  std::vector<Reader*> w(b->waiters.begin(), b->waiters.end());
  o->inflight.erase(b->idx);  // destroys b
  for (Reader* r : w) o->stalled.insert(r);
  wakeStalled(o);
}

void Fetcher::Impl::failBlock(Block* b, Reason r, const std::string& detail) {
  Object* o = b->obj;
  Hold hold(o);
  logf(conf::LogLevel::Warn, "block_failed",
       "path=" + conf::logValue(o->path) + " block=" + std::to_string(b->idx) + " reason=" +
           policy::reasonCode(r) + " detail=" + conf::logValue(detail));
  for (auto& p : b->pieces) stopPiece(p.get());
  if (b->writer && !b->committing) st.abandon(b->writer);
  b->writer = nullptr;
  // Everyone who needs this block can no longer be served.
  std::vector<Reader*> victims;
  uint64_t bs = o->meta.blockSize;
  for (Reader* rd : o->readers)
    if (rd->pos < rd->end && rd->pos / bs <= b->idx && (rd->end - 1) / bs >= b->idx) victims.push_back(rd);
  o->inflight.erase(b->idx);
  for (Reader* rd : victims) unlink(o, rd);  // other blocks may still list them
  for (Reader* rd : victims) rd->objectFailed(r, detail);
  kick();
}

// ------------------------------------------------------------------ whole-body stream

void Fetcher::Impl::startWhole(Object* o) {
  if (o->whole || o->readers.empty() || !canStart(o)) return;
  if (e.clock.monoMs() < o->wholeRetryAtMs) return;
  // Only worth it while some reader needs a block that is not stored.
  uint64_t bs = o->meta.blockSize;
  bool need = false;
  for (Reader* r : o->readers)
    for (uint64_t off = r->pos / bs * bs; off < r->end && !need; off += bs) {
      uint32_t idx = static_cast<uint32_t>(off / bs);
      need = !o->inflight.count(idx) && !st.present(o->key, o->meta.generation, idx);
    }
  if (!need) return;
  if (!linkUsable(o)) {
    ensureLink(o);
    return;
  }
  auto w = std::make_unique<WholeStream>();
  w->f = this;
  w->obj = o;
  w->xfer = std::make_unique<Transfer>(e.multi, e.transferOptions(o->link, o->mount), w.get());
  o->whole = std::move(w);
  logf(conf::LogLevel::Debug, "whole_stream_start", "path=" + conf::logValue(o->path));
  counted(o, +1);
  e.stats.upstreamRequests++;
  o->whole->xfer->start();
}

bool WholeStream::onHeaders(Transfer& t) {
  policy::UpstreamAsk ask;
  ask.kind = policy::UpstreamAsk::Kind::Whole;
  ask.size = obj->meta.size;
  ask.etag = obj->meta.etag;
  policy::UpstreamJudgement v = policy::classifyUpstream(ask, t.answer());
  if (v.verdict == policy::UpstreamVerdict::Ok) return true;
  changed = v.verdict == policy::UpstreamVerdict::Changed;  // anything else is retried
  detail = v.detail;
  return false;
}

size_t WholeStream::onData(Transfer&, const char* data, size_t n) {
  Object* o = obj;
  store::Store& st = f->st;
  if (st.queuedBytes() >= store::Store::kQueueLimit) {
    return Transfer::kPause;  // resumed by the store's drained callback via kick
  }
  if (o->readers.empty()) return 0;  // nobody left to serve: stop paying for bytes
  const uint64_t bs = o->meta.blockSize;
  size_t done = 0;
  while (done < n) {
    uint32_t idx = static_cast<uint32_t>(offset / bs);
    uint64_t bBegin = static_cast<uint64_t>(idx) * bs;
    uint64_t bEnd = bBegin + o->meta.blockLength(idx);
    size_t take = static_cast<size_t>(std::min<uint64_t>(n - done, bEnd - offset));
    if (take == 0) break;  // past the end: more bytes than the object has
    auto it = o->inflight.find(idx);
    Block* b = it == o->inflight.end() ? nullptr : it->second.get();
    if (!b && offset == bBegin && !st.present(o->key, o->meta.generation, idx)) {
      // Cache what passes (always room: the stream cannot skip a block a reader waits on).
      b = f->createBlock(o, idx, std::nullopt, 1, true);
      if (b) {
        b->fedByStream = true;
        b->pieces[0]->state = Piece::State::Running;
      }
    }
    if (b && b->fedByStream && !b->committing) {
      Piece* p = b->pieces[0].get();
      if (p->begin + p->received == offset) {
        std::weak_ptr<int> alive = b->token;
        size_t len = take;
        st.write(b->writer, offset - b->begin, data + done, take, [p, alive, len](bool ok) {
          if (alive.expired()) return;
          Hold hold(p->blk->obj);
          if (!ok) {
            p->f->failBlock(p->blk, Reason::CacheFailed, "cache write failed");
            return;
          }
          p->written += len;
          p->f->wakeBlock(p->blk);
          if (p->state == Piece::State::Done) p->f->maybeCommit(p->blk);
        });
        p->received += take;
        f->e.stats.upstreamBytes += take;
        if (b->initiator) b->initiator->upstreamBytes(take);
        if (p->begin + p->received == p->end) {
          p->state = Piece::State::Done;
          f->maybeCommit(b);
        }
      }
    }
    offset += take;
    done += take;
  }
  return done == n ? n : 0;
}

void WholeStream::onDone(Transfer&, const TransferResult& r) { f->wholeFinished(obj, r); }

void Fetcher::Impl::wholeFinished(Object* o, const TransferResult& r) {
  Hold hold(o);
  counted(o, -1);
  std::unique_ptr<WholeStream> w = std::move(o->whole);
  logf(conf::LogLevel::Debug, "whole_stream_done",
       "path=" + conf::logValue(o->path) + " offset=" + std::to_string(w->offset) +
           " code=" + std::to_string(r.code) + " readers=" + std::to_string(o->readers.size()));
  // Blocks it was feeding and did not finish are abandoned.
  std::vector<Block*> drop;
  for (auto& [idx, b] : o->inflight)
    if (b->fedByStream && !b->committing && b->pieces[0]->state != Piece::State::Done)
      drop.push_back(b.get());
  for (Block* b : drop) dropBlock(b);
  if (w->changed) {
    killObject(o, Reason::UpstreamChanged, w->detail);
    return;
  }
  bool complete = r.code == CURLE_OK && w->offset == o->meta.size;
  if (!complete && !o->readers.empty()) {
    e.stats.upstreamErrors++;
    if (++o->wholeAttempts >= kMaxAttempts) {
      killObject(o, r.timedOut ? Reason::UpstreamTimeout : Reason::UpstreamReset,
                 !w->detail.empty() ? w->detail : r.error);
      return;
    }
    int64_t delay = policy::backoffDelayMs(policy::kFetchBackoff, o->wholeAttempts);
    o->wholeRetryAtMs = e.clock.monoMs() + delay;
    e.stats.retries++;
    kickAt(o->wholeRetryAtMs);
    return;
  }
  o->wholeAttempts = 0;
  kick();
}

}  // namespace slip::proxy
