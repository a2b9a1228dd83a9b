// The fill's object table: one Object per (mount, path) version that
// readers use, from open (index or probe) to release; links; readers
// attaching and leaving; an object's death. See fill.h for the parts.
#include <algorithm>
#include <cassert>

#include "proxy/fetch/fill.h"

namespace slip::proxy {

using policy::Reason;

const char* objectStateName(ObjectState s) {
  switch (s) {
    case ObjectState::Opening: return "opening";
    case ObjectState::Probing: return "probing";
    case ObjectState::Ready: return "ready";
    case ObjectState::Dead: return "dead";
  }
  return "?";
}

void Fill::setState(Object* o, ObjectState s) {
  if (o->state == s) return;
  if (conf::Log::enabled(conf::LogLevel::Debug))
    conf::Log::write(conf::LogLevel::Debug, "object_state",
                     "path=" + conf::logValue(o->path) + " from=" + objectStateName(o->state) +
                         " to=" + objectStateName(s) + " generation=" + std::to_string(o->meta.generation));
  o->state = s;
}

// ------------------------------------------------------------------ lifetimes

Fetcher::Fetcher(Context& ctx) : fill_(std::make_unique<Fill>(ctx)) {}
Fetcher::~Fetcher() = default;

uint64_t Fetcher::memoryBytes() const { return fill_->memoryBytes(); }

std::vector<HostStats> Fetcher::hosts() const {
  std::vector<HostStats> out;
  for (const auto& f : fill_->tuner.figures()) out.push_back({f.host, f.target, f.running});
  return out;
}

std::unique_ptr<BlockReader> Fetcher::reader(BlockReader::Client* client) {
  return std::make_unique<BlockReader>(*fill_, client);
}

std::optional<FillActivity> Fetcher::activity(const store::Key& k) const {
  const Object* o = fill_->find(k);
  if (!o) return std::nullopt;
  FillActivity a;
  for (const auto& [idx, b] : o->blocks) a.fetching.push_back(idx);
  a.connections = o->running;
  return a;
}

Fill::Fill(Context& c)
    : ctx(c),
      store(*c.store),
      tuner(c.clock),
      sched_(c.base, [this] { schedule(); }),
      sweep_(c.base, [this] { sweep(); }),
      retryTimer_(c.base, [this] { kick(); }),
      memWake_(c.base, [this] { wakeMemoryReaders(); }),
      graveyard_(c.base) {
  spare_ = ctx.multi.admission().onSpare([this] { kick(); });
  drained_ = store.onDrained([this] { resumePaused(); });
}

Fill::~Fill() {
  // Stop every transfer; unfinished blocks are never listed.
  auto stop = [this](Object& o) {
    if (o.probe) retire(std::move(o.probe->xfer));
    if (o.whole) retire(std::move(o.whole->xfer));
    for (auto& [idx, b] : o.blocks) {
      for (auto& p : b->pieces) retire(std::move(p->xfer));
      if (b->writer && !b->committing) store.abandon(b->writer);
      b->writer = nullptr;
      b->life.end();
    }
  };
  for (auto& [k, o] : objects_) stop(*o);
  for (auto& o : retired_) stop(*o);
}

void Fill::retire(std::unique_ptr<Transfer> t) {
  if (!t) return;
  t->cancel();
  graveyard_.bury(std::move(t));
}

// Objects are freed here only, from the sweep's own loop callback: no call
// frame of the fill can hold one that disappears under it.
void Fill::sweep() {
  for (auto it = objects_.begin(); it != objects_.end();) it = it->second->idle() ? objects_.erase(it) : std::next(it);
  std::erase_if(retired_, [](const std::unique_ptr<Object>& o) { return o->idle(); });
}

// ------------------------------------------------------------------ open

void Fill::open(BlockReader* r, const Request& req) {
  const std::shared_ptr<MountRun>& run = ctx.mountOf(req);
  const conf::Mount& m = *run->m;
  store::Key key = store::objectKey(m.name, req.rest);
  r->requestId = req.id;
  // Who asks: a newer request of the same client far from this one is a seek.
  r->clientId = std::hash<std::string>{}(req.client + '\n' + req.userAgent) | 1;
  r->seq = ++readerSeq_;
  r->connections = static_cast<int>(req.decision.connections > 0 ? req.decision.connections : m.connections);
  r->mediaPrefetch = req.decision.mediaPrefetch;
  std::unique_ptr<Object>& slot = objects_[key];
  if (!slot) {
    slot = std::make_unique<Object>();
    Object* o = slot.get();
    o->key = key;
    o->mount = run->id;
    o->run = run;
    o->rest = req.rest;
    o->path = req.path;
    o->client = {req.client, req.userAgent};
    if (auto meta = store.lookup(key); meta && meta->blockSize > 0) {
      o->meta = *meta;
      o->hasMeta = true;
      o->state = ObjectState::Ready;  // from the index
    }
  }
  Object* o = slot.get();
  if (run->id > o->mount) {
    // A reader decided with a reloaded mount: fetches from now on use its
    // settings (source, headers, connections); pieces running keep theirs.
    o->run = run;
    o->mount = run->id;
    o->haveLink = false;
  }
  r->obj = o;
  o->opening.push_back(r);
  if (!o->hasMeta && !o->fuseAt && !req.head) {
    // A cold open asks for the block this reader starts in (the fused probe);
    // a suffix range does not say where that is before the size is known.
    policy::WireRange w = policy::parseRange(req.range);
    if (w.kind == policy::WireRange::Kind::Single) o->fuseAt = w.first;
    else if (w.kind != policy::WireRange::Kind::Suffix) o->fuseAt = 0;
  }
  if (o->state == ObjectState::Ready && policy::isFresh(o->meta.validatedMs, m.revalidateMs, ctx.clock.wallMs())) {
    finishOpen(o, {});  // a warm hit: no upstream round trip, no link resolution
    return;
  }
  if (o->state != ObjectState::Probing && !(o->probeTimer && o->probeTimer->pending())) startProbe(o);
}

void Fill::finishOpen(Object* o, const OpenResult& res) {
  auto waiting = std::move(o->opening);
  o->opening.clear();
  for (BlockReader* r : waiting) {
    if (res.reason == Reason::None && !res.uncacheable) o->readers.push_back(r);
    else r->obj = nullptr;
    r->meta_ = o->meta;
    r->client->opened(res);
  }
  if (res.reason == Reason::None) {
    considerMedia(o);
    kick();
  }
  sweepSoon();
}

Object* Fill::replace(Object* o) {
  kill(o, Reason::UpstreamChanged, "upstream object changed");
  auto n = std::make_unique<Object>();
  n->key = o->key;
  n->mount = o->mount;
  n->run = o->run;
  n->rest = o->rest;
  n->path = o->path;
  n->client = o->client;
  Object* raw = n.get();
  std::unique_ptr<Object>& slot = objects_[o->key];
  if (slot) retired_.push_back(std::move(slot));  // another version: it lives on for its readers
  slot = std::move(n);
  return raw;
}

void Fill::kill(Object* o, Reason r, const std::string& detail) {
  if (o->state == ObjectState::Dead) return;
  setState(o, ObjectState::Dead);
  o->media = MediaState::Off;
  auto it = objects_.find(o->key);
  if (it != objects_.end() && it->second.get() == o) {
    retired_.push_back(std::move(it->second));
    objects_.erase(it);
  }
  if (o->hasMeta) store.invalidate(o->key, o->meta.generation);
  if (o->whole) {
    counted(o, o->whole->host, -1);
    retire(std::move(o->whole->xfer));
    graveyard_.bury(std::move(o->whole));
  }
  // Blocks being committed stay: their commit callback finds them.
  std::vector<Block*> fetching;
  for (auto& [idx, b] : o->blocks)
    if (!b->committing) fetching.push_back(b.get());
  for (Block* b : fetching) removeBlock(b);
  std::vector<BlockReader*> readers = o->readers;
  for (BlockReader* rd : readers) unlink(o, rd);  // committing blocks keep no pointer to them
  for (BlockReader* rd : readers) rd->client->failed(r, detail);
  auto waiting = std::move(o->opening);
  o->opening.clear();
  for (BlockReader* rd : waiting) {
    rd->obj = nullptr;
    rd->client->opened({r, detail, false});
  }
  kick();
  sweepSoon();
}

// ------------------------------------------------------------------ readers

void Fill::unlink(Object* o, BlockReader* r) {
  r->obj = nullptr;
  std::erase(o->readers, r);
  o->stalled.erase(r);
  std::erase(o->opening, r);
  for (auto& [idx, b] : o->blocks) {
    b->waiters.erase(r);
    if (b->initiator == r) b->initiator = nullptr;
  }
}

void Fill::detach(BlockReader* r) {
  Object* o = r->obj;
  if (!o) return;
  // The block it was reading (or ended its range in) is finished and
  // stored: its client has part of it and may come back for the rest.
  if (o->meta.blockSize > 0 && r->pos > 0 && r->pos <= r->end) {
    uint64_t at = r->pos < r->end ? r->pos : r->pos - 1;
    auto it = o->blocks.find(static_cast<uint32_t>(at / o->meta.blockSize));
    if (it != o->blocks.end()) it->second->keep = true;
  }
  unlink(o, r);
  sweepSoon();
  kick();
}

void Fill::waitFor(BlockReader* r, uint32_t idx) {
  Object* o = r->obj;
  if (!o) return;
  auto it = o->blocks.find(idx);
  if (it != o->blocks.end()) it->second->waiters.insert(r);
  else o->stalled.insert(r);
  kick();
}

void Fill::wakeBlock(Block* b) {
  // One-shot: a reader that still cannot progress registers again.
  std::vector<BlockReader*> w(b->waiters.begin(), b->waiters.end());
  b->waiters.clear();
  for (BlockReader* r : w) r->client->wake();
}

void Fill::wakeStalled(Object* o) {
  std::vector<BlockReader*> w(o->stalled.begin(), o->stalled.end());
  o->stalled.clear();
  for (BlockReader* r : w) r->client->wake();
}

// ------------------------------------------------------------------ links

int Fill::hostOf(const Object* o) {
  if (!o->haveLink) return -1;
  std::string origin = policy::urlOrigin(o->link.url);
  return origin.empty() ? -1 : tuner.hostId(origin);
}

bool Fill::linkUsable(const Object* o) const { return o->haveLink && proxy::linkUsable(o->link, ctx.clock.wallMs()); }

void Fill::ensureLink(Object* o) {
  if (o->resolving || linkUsable(o)) return;
  o->resolving = true;
  Watch alive = o->life.watch();
  ctx.links.get(o->mount, o->rest, o->client, [this, o, alive](const ResolveResult& res) {
    if (!alive) return;  // the fill is going away
    o->resolving = false;
    sweepSoon();
    if (res.reason != Reason::None) {
      o->haveLink = false;
      if (!o->opening.empty() && !o->probe) finishOpen(o, {res.reason, res.detail, false});
      else kill(o, res.reason, res.detail);
      return;
    }
    o->link = res.link;
    o->haveLink = true;
    if (!o->probe && !o->opening.empty()) startProbe(o);  // a probe was waiting for it
    kick();
  });
}

void Fill::linkFailed(Object* o, uint64_t serial) {
  ctx.links.invalidate(o->mount, o->rest, o->client, serial);
  if (o->haveLink && o->link.serial == serial) o->haveLink = false;
  conf::Log::write(conf::LogLevel::Info, "link_failed",
                   "path=" + conf::logValue(o->path) + " serial=" + std::to_string(serial) + " action=forget");
}

/// The upstream refused link `serial` (401/403/410). Re-resolves once; a
/// second refusal in a row (of the link we re-resolved to) is final.
bool Fill::linkDenied(Object* o, uint64_t serial) {
  if (o->haveLink && serial != o->link.serial) return true;  // already replaced: just retry
  if (o->reResolvedFrom != 0 && o->reResolvedFrom != serial && serial == o->link.serial) return false;
  o->reResolvedFrom = serial;
  ctx.links.invalidate(o->mount, o->rest, o->client, serial);
  o->haveLink = false;
  conf::Log::write(conf::LogLevel::Info, "link_refused",
                   "path=" + conf::logValue(o->path) + " serial=" + std::to_string(serial) + " action=re_resolve");
  ensureLink(o);
  return true;
}


// ------------------------------------------------------------------ purge

namespace {

/// `path` is `rest`, or lies in the folder `rest` ("/" holds everything).
bool matches(const std::string& path, const std::string& rest, bool folder) {
  if (!folder) return path == rest;
  if (rest.empty() || rest == "/") return true;
  std::string dir = rest.back() == '/' ? rest : rest + "/";
  return path == rest || path.starts_with(dir);
}

}  // namespace

std::vector<Purged> Fetcher::purge(const std::string& mount, const std::string& rest, bool folder) {
  return fill_->purge(mount, rest, folder);
}

// Objects the fill holds die first (their readers stop and the store drops
// the version they read); then every stored version that matches. A store
// version already being dropped is reported once, by its object.
std::vector<Purged> Fill::purge(const std::string& mount, const std::string& rest, bool folder) {
  std::map<store::Key, Purged> out;
  std::vector<Object*> victims;
  for (auto& [key, o] : objects_)
    if (mountOf(o.get()).name == mount && matches(o->rest, rest, folder)) victims.push_back(o.get());
  auto stored = [&](const store::Key& k) -> Purged& {
    Purged& p = out[k];
    if (auto so = store.storedObject(k)) {
      p.size = so->meta.size;
      p.bytes = so->presentBytes;
    }
    return p;
  };
  for (Object* o : victims) {
    Purged& p = stored(o->key);
    p.mount = mount;
    p.rest = o->rest;
    if (!p.size) p.size = o->meta.size;
    p.inUse = !o->readers.empty() || !o->opening.empty();
    kill(o, policy::Reason::Purged, "purged by the admin API");
    if (o->hasMeta) store.invalidate(o->key, o->meta.generation);  // kill's, unless it had none
  }
  std::vector<store::StoredObject> found;
  if (!folder) {
    if (auto so = store.storedObject(store::objectKey(mount, rest))) found.push_back(std::move(*so));
  } else {
    store::ObjectFilter f;
    f.mount = mount;
    f.prefix = rest == "/" ? "" : rest;
    f.limit = 1000;
    for (;;) {
      store::ObjectListing page = store.listObjects(f);
      for (auto& so : page.objects)
        if (so.meta.mount == mount && matches(so.meta.path, rest, true)) found.push_back(std::move(so));
      if (page.next.empty()) break;
      f.after = page.next;
    }
  }
  for (const store::StoredObject& so : found) {
    store::Key k = store::objectKey(so.meta.mount, so.meta.path);
    if (out.count(k)) continue;
    auto cur = store.lookup(k);  // the index walk may list a version already being dropped
    if (!cur || cur->generation != so.meta.generation) continue;
    store.invalidate(k, so.meta.generation);
    out[k] = Purged{so.meta.mount, so.meta.path, so.meta.size, so.presentBytes, false};
  }
  std::vector<Purged> list;
  for (auto& [k, p] : out) list.push_back(std::move(p));
  std::sort(list.begin(), list.end(), [](const Purged& a, const Purged& b) { return a.rest < b.rest; });
  return list;
}

}  // namespace slip::proxy
